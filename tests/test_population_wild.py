"""Population training of the heterogeneous CNNs (zoo.population_wild): members with their own widths,
kernels, activation, residual and norm train in one padded population exactly as they would alone;
BatchNorm keeps per-member statistics; padded entries stay zero; builds group by depth and strides."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.errors import ZooError
from fixtures.symmetry import assert_states_close
from zoo.archs import build
from zoo.datasets import load_dataset
from zoo.population import POPULATIONS, Member, train_population
from zoo.population_wild import WILD_ARCHS, WildPopulation, group_key, padded_config
from zoo.sampling import TrainConfig
from zoo.train import train_plain

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data():
    """Small training splits: digits (8x8 images) for wildcnn, MNIST-1D (40 steps) for wildcnn1d."""
    out = {}
    for arch, name in (("wildcnn", "digits"), ("wildcnn1d", "mnist1d")):
        s = load_dataset(name, 0)
        out[arch] = dataclasses.replace(s, x_train=s.x_train[:160], y_train=s.y_train[:160])
    return out


def configs(arch: str, splits) -> list[dict]:
    """Three members of one group (depth 3; 1-D: strides 2, 1, 1) that differ in everything else."""
    base = {"input_shape": list(splits.info.input_shape), "n_classes": splits.info.n_classes}
    if arch == "wildcnn1d":
        base["strides"] = [2, 1, 1]
    return [{**base, "channels": [6, 6, 6], "kernel_sizes": [3, 5, 3], "activation": "relu", "residual": True,
             "norm": "batch"},
            {**base, "channels": [4, 7, 5], "kernel_sizes": [5, 3, 7], "activation": "tanh", "residual": False,
             "norm": "layer"},
            {**base, "channels": [5, 3, 3], "kernel_sizes": [3, 7, 3], "activation": "gelu", "residual": True,
             "norm": "none"}]


def mixed_members() -> list[Member]:
    """Other optimizers, batch sizes (short and padded batches), data fractions, dropout and inits."""
    return [Member(TrainConfig(optimizer="adam", lr=3e-3, l2=1e-4, dropout=0.3, batch_size=32, epochs=1,
                               checkpoints=(1,)), 1),
            Member(TrainConfig(optimizer="sgd", lr=0.05, init="orthogonal", train_fraction=0.5, batch_size=48,
                               epochs=1, checkpoints=(1,)), 2),
            Member(TrainConfig(optimizer="rmsprop", lr=1e-3, init="normal", init_scale=0.1, dropout=0.2,
                               label_noise=0.2, batch_size=64, epochs=1, checkpoints=(1,)), 3)]


def test_both_wild_archs_have_population_forwards():
    assert set(WILD_ARCHS) <= set(POPULATIONS.names())


@pytest.mark.parametrize("arch", WILD_ARCHS)
def test_members_train_as_they_would_alone(data, arch):
    """A member inside a mixed, padded population equals the member alone (population of one, its own
    shapes) to 1e-5, running statistics included; reordering the members reorders the results."""
    splits, cfgs, members = data[arch], configs(arch, data[arch]), mixed_members()
    together = train_population(WildPopulation(arch, cfgs, members), splits)
    backwards = train_population(WildPopulation(arch, cfgs[::-1], members[::-1]), splits)
    for i, (cfg, m) in enumerate(zip(cfgs, members)):
        alone = train_population(WildPopulation(arch, [cfg], [m]), splits)[0]
        assert list(alone[-1].state) == list(build(arch, cfg).module.state_dict())  # its own state dict
        assert_states_close(together[i][-1].state, alone[-1].state, atol=1e-5)
        assert_states_close(backwards[len(members) - 1 - i][-1].state, alone[-1].state, atol=1e-5)
    bn = together[0][-1].state
    assert int(bn["norms.0.num_batches_tracked"]) == 5  # ceil(160 / 32) steps, all with batch statistics
    assert float((bn["norms.0.running_mean"]).abs().max()) > 0  # the running stats did move


@pytest.mark.parametrize("arch", WILD_ARCHS)
def test_same_seed_same_bits(data, arch):
    splits, cfgs, members = data[arch], configs(arch, data[arch]), mixed_members()
    a = train_population(WildPopulation(arch, cfgs, members), splits)
    b = train_population(WildPopulation(arch, cfgs, members), splits)
    for x, y in zip(a, b):
        assert_states_close(x[-1].state, y[-1].state, atol=0)


@pytest.mark.parametrize("arch", WILD_ARCHS)
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_population_of_one_matches_the_plain_loop(data, arch, norm):
    """Without dropout (the plain loop draws nn.Dropout masks from another stream) a population of one
    follows torch's own modules and optimizer. Tolerance 1e-4 as for the fixed-shape archs: different
    kernels round differently over ~10 steps. SGD: a conv bias feeding BatchNorm has a true gradient of
    0 whose rounding noise Adam would turn into lr-sized steps (the population gives it its exact 0)."""
    splits = data[arch]
    cfg = {**configs(arch, splits)[0], "norm": norm}
    tc = TrainConfig(optimizer="sgd", lr=0.05, l2=1e-4, init="xavier", train_fraction=0.5, batch_size=24,
                     epochs=2, checkpoints=(0, 1, 2))
    plain = train_plain(arch, cfg, build(arch, cfg).spec, splits, tc, seed=5)
    pop = train_population(WildPopulation(arch, [cfg], [Member(tc, 5)]), splits)[0]
    assert [(c.epoch, c.step) for c in plain] == [(c.epoch, c.step) for c in pop]
    assert_states_close(plain[0].state, pop[0].state, atol=0)  # the same initialization, bit for bit
    for a, b in zip(plain[1:], pop[1:]):
        assert_states_close(a.state, b.state, atol=1e-4)
    assert max(float((plain[-1].state[k] - plain[0].state[k]).abs().max()) for k in plain[0].state) > 1e-3


@pytest.mark.parametrize("arch", WILD_ARCHS)
def test_batchnorm_matches_torch_on_the_members_real_rows(data, arch):
    """One training-mode forward on a padded batch: each member's logits and running statistics equal
    torch's nn.BatchNorm module on the member's real rows alone (garbage in the padded rows changes
    nothing); eval mode then uses the running statistics, as torch does."""
    splits = data[arch]
    cfgs = [{**c, "norm": "batch"} for c in configs(arch, splits)]
    pop = WildPopulation(arch, cfgs, [Member(TrainConfig(), s) for s in range(3)])
    counts = [16, 9, 3]
    x = splits.x_train[:16].unsqueeze(0).repeat(3, *[1] * splits.x_train.dim()).clone()
    for m, n in enumerate(counts):
        x[m, n:] = 1e3  # padded rows: must not reach any statistic
    modules = []
    for m, cfg in enumerate(cfgs):
        module = build(arch, cfg).module
        module.load_state_dict(pop.extract(m))
        modules.append(module.train())
    pop.batch_counts = counts
    with torch.no_grad():
        logits = pop.forward_fn(pop, pop.params(), x, True)
        for m, (module, n) in enumerate(zip(modules, counts)):
            assert torch.allclose(module(x[m, :n]), logits[m, :n], atol=1e-5)
            assert_states_close(module.state_dict(), pop.extract(m), atol=1e-6)
    pop.batch_counts = None
    test_x = splits.x_test[:32]
    for m, module in enumerate(modules):
        with torch.no_grad():
            assert torch.allclose(module.eval()(test_x), pop.predict(test_x)[m], atol=1e-5)


@pytest.mark.parametrize("arch", WILD_ARCHS)
def test_padded_entries_stay_zero(data, arch):
    splits, cfgs, members = data[arch], configs(arch, data[arch]), mixed_members()
    pop = WildPopulation(arch, cfgs, members)
    padded = pop.mask == 0
    assert bool(padded.any())  # the members do differ in width and kernel size
    train_population(pop, splits)
    for t in (pop.flat, pop.exp_avg, pop.sq_avg):
        assert torch.equal(t[padded], torch.zeros(int(padded.sum())))
    assert bool((pop.flat[~padded] != 0).any())


def test_padded_layout_and_groups(data):
    splits = data["wildcnn1d"]
    cfgs = configs("wildcnn1d", splits)
    assert len({group_key(c) for c in cfgs}) == 1
    padded = padded_config(cfgs)
    assert padded["channels"] == [6, 7, 6] and padded["kernel_sizes"] == [5, 7, 7] and padded["norm"] == "batch"
    with pytest.raises(ZooError, match="must agree on group_key"):
        padded_config([cfgs[0], {**cfgs[1], "strides": [1, 1, 1]}])
    with pytest.raises(ZooError, match="must agree on group_key"):
        WildPopulation("wildcnn1d", [cfgs[0], {**cfgs[1], "channels": [4, 7], "kernel_sizes": [5, 3],
                                                "strides": [2, 1]}], mixed_members()[:2])


def test_build_can_train_wild_families_as_populations(lake, monkeypatch):
    """With populations switched on (zoo build keeps the plain loop by default: faster on CPU), a build
    groups members by depth and stores each one as it trains alone in a population."""
    from storage.writes import read_models, read_weights
    from zoo.build import build_zoo, plan_build, plan_family, training_run_id
    from zoo.families import FAMILIES

    monkeypatch.setattr(POPULATIONS.get("wildcnn"), "plain_by_default", False)
    fam = FAMILIES.get("bench-digits-wild")
    units = plan_build(lake, fam.name, 12, checkpoints=(1,), population_size=4)
    plans = plan_family(fam, 12, 0, (1,))
    assert sorted(i for u in units for i in u) == list(range(12))
    for u in units:
        assert len(u) <= 4 and len({group_key(plans[i].arch_config) for i in u}) == 1
    small = min(units, key=len)  # train one unit only (a shard), the cheapest
    res = build_zoo(lake, fam.name, 12, checkpoints=(1,), units=[small], shard=(0, 1))
    assert len(res.new_ids) == len(small)
    splits = load_dataset(fam.dataset, fam.dataset_seed)
    p = plans[small[0]]
    alone = train_population(WildPopulation(fam.arch, [p.arch_config], [Member(p.train_config, p.seed)]), splits)[0]
    stored = {r.run_id: r.model_id for r in read_models(lake)}
    state = read_weights(lake, [stored[training_run_id(fam.arch, p.arch_config, fam.dataset, p)]])
    assert_states_close(next(iter(state.values())), alone[-1].state, atol=1e-5)
