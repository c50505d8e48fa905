"""Determinism (issue 8 §6): the same seeds give bit-identical zoo weights and labels on CPU, whether
run twice, in other lakes, or with the work cut into other batches (what a resumed build or labeling
run does). Different seeds give different weights, so the comparisons can fail."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from labeling.run import label_zoo
from storage.lake import Lake
from zoo.build import build_zoo

CHECKPOINTS = (1, 2)
PROPERTIES = ["performance", "weight_stats", "pgd"]  # pgd v2: random starts per model, not per batch


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


def build(location: pathlib.Path, family: str, n: int, seed: int = 0, population_size: int | str = "auto") -> list[str]:
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


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    """Same tensors (names, dtypes, shapes) with values within ``atol``: batched matmuls over other
    population sizes may round differently in the last bits."""
    assert a.keys() == b.keys()
    for k in a:
        (da, sa, ba), (db, sb, bb) = a[k], b[k]
        assert (da, sa) == (db, sb), k
        ta, tb = np.frombuffer(ba, dtype=da), np.frombuffer(bb, dtype=db)
        assert np.abs(ta - tb).max(initial=0) <= atol, f"{k}: max diff {np.abs(ta - tb).max():.3g}"


@pytest.mark.parametrize("family", ["digits-mlp", "digits-cnn"])
def test_population_batching_does_not_change_weights(tmp_path, family, torch_one_thread):
    """A member trained alone equals the same member trained in a mixed population (other batch sizes,
    data fractions, optimizers) to 1e-5: a resumed build that groups the remaining members
    differently still stores the reference weights. Same plan twice: the same bits."""
    build(tmp_path / "together", family, 6, population_size=6)
    build(tmp_path / "again", family, 6, population_size=6)
    build(tmp_path / "alone", family, 6, population_size=1)
    together = weights(tmp_path / "together")
    assert_bit_identical(together, weights(tmp_path / "again"))
    assert_weights_close(together, weights(tmp_path / "alone"), atol=1e-5)
    with Lake.open(tmp_path / "together", read_only=True) as lk:
        (config,) = [json.loads(c) for (c,) in lk.fetch("SELECT config FROM lake.main.runs")]
    assert config["populations"] == [6]  # one population although the members' configs differ
    if family == "digits-mlp":
        with Lake.open(tmp_path / "together", read_only=True) as lk:
            sizes = {json.loads(t)["batch_size"] for (t,) in lk.fetch("SELECT train_config FROM lake.main.models")}
        assert len(sizes) > 1  # the population really mixed batch sizes


def test_resumed_build_equals_one_build(tmp_path, torch_one_thread):
    """Members 0..1, then 0..3 (0..1 skipped) == 0..3 at once (to 1e-5: other populations)."""
    build(tmp_path / "steps", "digits-mlp", 2)
    build(tmp_path / "steps", "digits-mlp", 4)
    build(tmp_path / "once", "digits-mlp", 4)
    assert_weights_close(weights(tmp_path / "steps"), weights(tmp_path / "once"), atol=1e-5)


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
