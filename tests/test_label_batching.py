"""Batched labeling gives each model the labels it gets alone (issue 12: labeling at benchmark size).

``labeling.run.compute_labels`` labels a batch as architecture groups (one Population per arch config);
these tests label the same models once as one batch and once one model per call, for every registered
property, on a few models of every architecture the zoos train (mlp, cnn, wildcnn on digits; cnn1d,
wildcnn1d on mnist1d; an mlp on a dataset with sensitive features), and check PGD's seed rule: a
model's PGD label does not depend on the batch it lands in.

Tolerance: batched forwards (vmap over stacked weights) may round differently from one module's forward;
values are compared to ``TOL`` (no difference was seen on these models). AutoAttack is the documented
exception: its batched run makes other random draws than runs of one model (``labeling.attacks``), so
only its deterministic clean accuracy is compared exactly, and robust accuracy is checked <= clean.
"""
from __future__ import annotations

import pytest
import torch

import labeling  # noqa: F401  (fills the registry)
from core.errors import DatasetUnavailable
from core.hashing import stable_hash
from labeling.attacks import AutoAttackParams, PGDParams, _pgd_robust, attack_shape, pgd_seed, pgd_starts
from labeling.corruption_robustness import CorruptionParams
from labeling.performance import macro_f1
from labeling.population import Population, load_module
from labeling.registry import PROPERTIES
from labeling.registry import replace as replace_property
from labeling.run import compute_labels, model_seed
from storage.writes import ModelRecord
from zoo.archs import build
from zoo.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CPU = torch.device("cpu")
TOL = 1e-6
CHEAP = {  # small parameters so that every property runs on every model here in seconds
    "pgd": PGDParams(eps_linf=(8 / 255, 32 / 255), eps_l2=(0.5,), steps=3, n_examples=40),
    "autoattack": AutoAttackParams(n_examples=4, n_queries=5),
    "corruptions": CorruptionParams(corruptions=("gaussian_noise", "contrast"), severities=(1, 2), n_examples=10),
}
RANDOM_PER_BATCH = {"autoattack"}  # one random stream per batch by design (see the module docstring)
WILD = {"channels": [6, 6, 8], "kernel_sizes": [3, 5, 3], "activation": "relu", "residual": True, "norm": "none"}
WILD_BN = {"channels": [4, 8], "kernel_sizes": [3, 3], "activation": "tanh", "residual": False, "norm": "batch"}
WILD1D = {**WILD, "strides": [1, 1, 2]}
WILD1D_BN = {**WILD_BN, "strides": [2, 1], "norm": "batch"}
# dataset -> (arch, arch knobs, seed): two members per config (a group), wild ones also alone
MODELS = {
    "digits": [("mlp", {"width": 12, "depth": 1}, 0), ("mlp", {"width": 12, "depth": 1}, 1),
               ("cnn", {"channels": 4, "n_layers": 2}, 0), ("cnn", {"channels": 4, "n_layers": 2}, 1),
               ("wildcnn", WILD, 0), ("wildcnn", WILD, 1), ("wildcnn", WILD_BN, 2)],
    "mnist1d": [("cnn1d", {"channels": 4, "n_layers": 3, "kernel_size": 5}, 0),
                ("cnn1d", {"channels": 4, "n_layers": 3, "kernel_size": 5}, 1),
                ("wildcnn1d", WILD1D, 0), ("wildcnn1d", WILD1D, 1), ("wildcnn1d", WILD1D_BN, 2)],
    "arrests": [("mlp", {"width": 8, "depth": 1}, 0), ("mlp", {"width": 8, "depth": 1}, 1)],
}


def train_small(dataset: str, arch: str, knobs: dict, seed: int, steps: int = 40) -> tuple[ModelRecord, dict]:
    """A briefly trained model (full batch of 512 examples, Adam); BatchNorm buffers move in train mode."""
    sp = load_dataset(dataset, 0)
    config = {"input_shape": list(sp.info.input_shape), "n_classes": sp.info.n_classes, **knobs}
    torch.manual_seed(seed)  # test-only: module init draws from the global RNG
    built = build(arch, config)
    opt = torch.optim.Adam(built.module.parameters(), lr=0.02)
    x, y = sp.x_train[:512], sp.y_train[:512]
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(built.module(x), y).backward()
        opt.step()
    tc = {"steps": steps, "data_seed": 0}
    mid = stable_hash({"test": "batching", "arch": arch, "config": config, "seed": seed})
    rec = ModelRecord(mid, f"{dataset}-{arch}", arch, config, dataset, built.spec, tc, seed)
    return rec, {k: v.detach().clone() for k, v in built.module.state_dict().items()}


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, list[tuple[ModelRecord, dict]]]:
    out = {}
    for dataset, specs in MODELS.items():
        try:
            load_dataset(dataset, 0)
        except DatasetUnavailable:  # pragma: no cover - every dataset here is embedded
            continue
        out[dataset] = [train_small(dataset, a, k, s) for a, k, s in specs]
    return out


def cheap(name: str):
    prop = PROPERTIES.get(name)
    return replace_property(prop, params=CHEAP[name]) if name in CHEAP else prop


def values(labels) -> dict[tuple[str, str], float]:
    return {(lb.model_id, lb.property): lb.value for lb in labels}


@pytest.mark.parametrize("name", PROPERTIES.names())
def test_batched_labels_equal_one_model_labels(name, zoo_models, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))  # corrupted test sets are cached per dataset
    prop = cheap(name)
    checked = 0
    for dataset, models in zoo_models.items():
        if not prop.applies(load_dataset(dataset, 0).info):
            continue
        records, states = [r for r, _ in models], {r.model_id: s for r, s in models}
        batched = values(compute_labels(records, states, [prop], CPU, seed=3))
        alone = values([lb for r in records for lb in compute_labels([r], states, [prop], CPU, seed=3)])
        assert batched.keys() == alone.keys() and {m for m, _ in batched} == {r.model_id for r in records}
        for key, v in alone.items():
            if name in RANDOM_PER_BATCH and not key[1].endswith("_clean"):
                clean = batched[(key[0], key[1] + "_clean")]
                assert 0 <= batched[key] <= clean, key
            else:
                assert batched[key] == pytest.approx(v, abs=TOL), (dataset, key)
        checked += len(records)
    assert checked >= 2  # every property applies to some dataset here


def test_pgd_label_does_not_depend_on_the_batch(zoo_models):
    prop = cheap("pgd")
    models = zoo_models["digits"]
    records, states = [r for r, _ in models], {r.model_id: s for r, s in models}
    target = records[2]  # a cnn
    runs = [[target], [target, records[3]], [records[3], target], records, records[::-1]]
    got = [values(l for l in compute_labels(rs, states, [prop], CPU, seed=5) if l.model_id == target.model_id)
           for rs in runs]
    assert all(g == got[0] for g in got[1:])
    assert any(v < 1 for v in got[0].values())  # the attack breaks something: it did run


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_start_of_an_example_depends_only_on_its_seed_and_index(norm):
    shape = (1, 8, 8)
    every = pgd_starts(norm, 0.1, shape, 11, torch.arange(200))
    some = pgd_starts(norm, 0.1, shape, 11, torch.tensor([3, 70, 199]))
    assert torch.equal(some, every[[3, 70, 199]])  # chunks and skipped rows do not move an example's start
    assert not torch.equal(pgd_starts(norm, 0.1, shape, 12, torch.arange(200)), every)  # the seed does
    size = every.flatten(1).abs().amax(1) if norm == "linf" else every.flatten(1).norm(dim=1)
    assert float(size.max()) <= 0.1 + 1e-6 and float(size.min()) > 0  # inside the eps-ball, not at its center


def test_pgd_skipping_dead_rows_changes_nothing(zoo_models):
    """Attacking only still-robust rows equals attacking every row and then requiring clean correctness."""
    sp = load_dataset("digits", 0)
    models = zoo_models["digits"][2:4]
    pop = Population([load_module(r, s) for r, s in models], sp.info.input_shape)
    x, y = sp.x_test[:60], sp.y_test[:60]
    u = pop.to_unit(x).reshape((60,) + attack_shape(tuple(x.shape[1:])))
    with torch.no_grad():
        clean = pop(torch.cat([u] * 2)).argmax(-1).reshape(2, 60) == y
    assert 0 < int(clean.sum()) < clean.numel()
    seeds = [pgd_seed(model_seed(r.model_id), "linf", 0.1, 0) for r, _ in models]
    args = ("linf", 0.1, 0.025, 4, seeds)
    every = _pgd_robust(pop, u, y, torch.ones_like(clean), *args, chunk_rows=50, device=CPU)
    skipped = _pgd_robust(pop, u, y, clean, *args, chunk_rows=4096, device=CPU)
    assert torch.equal(skipped, every & clean)
    assert bool((every != torch.ones_like(clean)).any())


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(0)
    for n_cls, n in ((10, 200), (3, 7), (5, 1)):
        yt = torch.randint(0, n_cls, (n,), generator=g)
        yp = torch.randint(0, n_cls - 1, (n,), generator=g)  # the last class never predicted
        want = f1_score(yt.numpy(), yp.numpy(), average="macro", zero_division=0)
        assert macro_f1(yt, yp) == pytest.approx(want, abs=1e-12)
    assert macro_f1(yt, yt) == 1.0


def test_model_batch_seeds_follow_the_models():
    a, b = model_seed("m1", 0), model_seed("m2", 0)
    assert a != b and model_seed("m1", 0) == a and model_seed("m1", 1) != a


def test_large_members_run_one_by_one_small_ones_stacked():
    from labeling.population import STACK_MAX_PARAMS, population_logits

    cfg = {"input_shape": [1, 40], "n_classes": 10, "strides": [1, 1], "channels": [48, 48], "kernel_sizes": [7, 7]}
    torch.manual_seed(0)
    big = [build("wildcnn1d", cfg).module.eval() for _ in range(2)]
    small = [build("cnn1d", {**cfg, "channels": 4, "n_layers": 2}).module.eval() for _ in range(2)]
    assert sum(p.numel() for p in big[0].parameters()) > STACK_MAX_PARAMS
    x = torch.rand(30, 1, 40)
    for mods, stacked in ((big, False), (small, True)):
        pop = Population(mods, (1, 40))
        assert pop.stacked == stacked
        logits = population_logits(pop, x, chunk_rows=20)  # chunks of 10 examples per model
        for i, m in enumerate(mods):
            torch.testing.assert_close(logits[i], m(x).detach(), atol=1e-5, rtol=1e-5)
