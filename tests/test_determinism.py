"""Determinism (issue 8 §6): the same seeds give bit-identical zoo weights and labels on CPU, whether
run twice, in other lakes, or with the work cut into other batches (what a resumed build or labeling
run does). Different seeds give different weights, so the comparisons can fail."""
from __future__ import annotations

import pathlib

import pytest

import zoo.build
from labeling.run import label_zoo
from storage.lake import Lake
from zoo.build import build_zoo
from zoo.families import FAMILIES, Family
from zoo.sampling import TrainSpace

CHECKPOINTS = (1, 2)
PROPERTIES = ["performance", "weight_stats"]


def weights(location: pathlib.Path) -> dict[tuple[str, str], tuple]:
    """(model_id, tensor name) -> (dtype, shape, raw bytes)."""
    with Lake.open(location, read_only=True) as lk:
        rows = lk.fetch("SELECT model_id, name, dtype, shape, data FROM lake.main.tensors")
    return {(m, n): (d, tuple(s), bytes(b)) for m, n, d, s, b in rows}


def labels(location: pathlib.Path) -> dict[tuple[str, str], str]:
    """(model_id, property) -> value as float.hex (exact, and NaN equals NaN)."""
    with Lake.open(location, read_only=True) as lk:
        rows = lk.fetch("SELECT model_id, property, value FROM lake.main.labels")
    return {(m, p): (None if v is None else float(v).hex()) for m, p, v in rows}


def build(location: pathlib.Path, family: str, n: int, seed: int = 0, population_size: int = 64) -> list[str]:
    with Lake.open(location, create=True) as lk:
        return build_zoo(lk, family, n, seed, CHECKPOINTS, population_size=population_size).model_ids


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = sorted(k for k in a if a[k] != b[k])
    assert different == [], f"{len(different)} of {len(a)} differ, e.g. {different[:3]}"


@pytest.mark.parametrize("family", ["digits-mlp", "digits-cnn"])
def test_same_seed_same_weights_in_two_lakes(tmp_path, family, torch_one_thread):
    ids_a = build(tmp_path / "a", family, 3)
    ids_b = build(tmp_path / "b", family, 3)
    assert ids_a == ids_b and len(ids_a) == 3 * len(CHECKPOINTS)
    assert_bit_identical(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_other_seed_other_weights(tmp_path, torch_one_thread):
    build(tmp_path / "a", "digits-mlp", 2, seed=0)
    build(tmp_path / "b", "digits-mlp", 2, seed=1)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert not set(m for m, _ in a) & set(m for m, _ in b)  # other seed: other members, other ids
    assert sorted(v[2] for v in a.values()) != sorted(v[2] for v in b.values())


# One batch size and data fraction, every other hyperparameter sampled (lr, l2, optimizer, init, dropout,
# label noise): the build puts all its members in one population, whether it groups members by batch
# size and data fraction or not.
POP4 = Family("determinism-mlp", "digits", "mlp", TrainSpace(epochs=2, batch_sizes=(64,), train_fractions=(0.5,)),
              arch_config={"width": 16, "depth": 2, "activation": "relu"})


def spy_populations(monkeypatch) -> list[int]:
    """Sizes of the populations the build trains, in order (recorded as ``zoo.build`` trains them)."""
    sizes: list[int] = []
    real = zoo.build.train_population

    def spy(pop, *args, **kwargs):
        sizes.append(len(pop.members))
        return real(pop, *args, **kwargs)

    monkeypatch.setattr(zoo.build, "train_population", spy)
    return sizes


def test_population_batching_does_not_change_weights(tmp_path, torch_one_thread, monkeypatch):
    """A member trained alone equals the same member trained in a population of 4 members with other
    hyperparameters: a resumed build that groups the remaining members differently still stores the
    reference weights."""
    monkeypatch.setitem(FAMILIES._entries, POP4.name, POP4)
    plans = zoo.build.plan_family(POP4, 4, 0)
    assert len({(p.train_config.lr, p.train_config.dropout) for p in plans}) == 4  # the members really differ
    sizes = spy_populations(monkeypatch)
    build(tmp_path / "together", POP4.name, 4, population_size=4)
    together, sizes[:] = list(sizes), []
    build(tmp_path / "alone", POP4.name, 4, population_size=1)
    assert together == [4] and sizes == [1, 1, 1, 1]  # the populations this test is about
    assert_bit_identical(weights(tmp_path / "together"), weights(tmp_path / "alone"))


def test_resumed_build_equals_one_build(tmp_path, torch_one_thread):
    """Members 0..1, then 0..3 (0..1 skipped) == 0..3 at once."""
    build(tmp_path / "steps", "digits-mlp", 2)
    build(tmp_path / "steps", "digits-mlp", 4)
    build(tmp_path / "once", "digits-mlp", 4)
    assert_bit_identical(weights(tmp_path / "steps"), weights(tmp_path / "once"))


def test_same_models_same_labels_in_any_batches(tmp_path, torch_one_thread):
    for name in ("a", "b"):
        build(tmp_path / name, "digits-mlp", 2)
    with Lake.open(tmp_path / "a") as lk:
        label_zoo(lk, PROPERTIES, device="cpu", batch_size=32)
    with Lake.open(tmp_path / "b") as lk:
        label_zoo(lk, PROPERTIES, device="cpu", batch_size=1)
    a, b = labels(tmp_path / "a"), labels(tmp_path / "b")
    names = {p for _, p in a}
    assert "test_accuracy" in names and any(p.startswith("weights_") for p in names)
    assert_bit_identical(a, b)
