"""Outside-recipe models (zoo.recipes): every registered recipe trains, lies outside the zoo's space, and
its exported files ingest through the batch manifest path as ``ingest-file`` models."""
from __future__ import annotations

import json

import pytest
import torch

from core.errors import UnknownEntry
from storage.writes import read_models
from zoo.datasets import load_dataset
from zoo.families import FAMILIES
from zoo.ingest_batch import collect, ingest_many
from zoo.recipes import RECIPES, _augment, export_outside, plan_outside, train_with_recipe
from zoo.train import accuracy

MLP = FAMILIES.get("digits-mlp")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_is_outside_the_zoo_and_learns(name, digits):
    recipe = RECIPES.get(name)
    assert recipe.outside_the_zoo(), f"{name} is inside the zoo's sampling space"
    cfg = {**MLP.arch_config, "input_shape": list(digits.info.input_shape), "n_classes": digits.info.n_classes}
    before = accuracy("mlp", cfg, train_with_recipe("mlp", cfg, digits, recipe, seed=1, lr=recipe.lr, epochs=0),
                      digits.x_test, digits.y_test)
    state = train_with_recipe("mlp", cfg, digits, recipe, seed=1, lr=2 * recipe.lr, epochs=5)
    assert all(torch.isfinite(v).all() for v in state.values())
    after = accuracy("mlp", cfg, state, digits.x_test, digits.y_test)
    assert after > max(0.5, before + 0.2), (name, before, after)


def test_same_seed_same_bits_other_seed_other_model(digits):
    recipe = RECIPES.get("sgd-momentum-shift")  # augmentation draws from the seeded stream too
    cfg = {**MLP.arch_config, "input_shape": list(digits.info.input_shape), "n_classes": digits.info.n_classes}
    a, b, c = (train_with_recipe("mlp", cfg, digits, recipe, seed=s, lr=recipe.lr, epochs=1) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_shift_moves_each_example_by_at_most_one_pixel():
    recipe = RECIPES.get("sgd-momentum-shift")
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = _augment(recipe, x, 1.0, torch.Generator().manual_seed(3))
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        shifted = [padded[:, 1 - dy:6 - dy, 1 - dx:6 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(out[i], s) for s in shifted)
    assert not torch.equal(out, x) or not torch.equal(  # some draw moves something
        _augment(recipe, x, 1.0, torch.Generator().manual_seed(4)), x)
    noisy = _augment(RECIPES.get("nadam-noise"), x, 2.0, torch.Generator().manual_seed(0))
    assert 0.05 < float((noisy - x).std()) < 0.5  # 0.1 data sd


def test_plan_is_pure_and_spreads_recipes():
    a, b = plan_outside("digits-mlp", 10, seed=0), plan_outside("digits-mlp", 10, seed=0)
    assert a == b
    assert {m.recipe for m in a} == set(RECIPES.names())
    assert plan_outside("digits-mlp", 10, seed=1) != a
    assert len({m.lr for m in a}) == 10
    with pytest.raises(UnknownEntry, match="sgd-momentum-cosine"):
        plan_outside("digits-mlp", 2, recipes=("lion",))


def test_export_then_batch_ingest(tmp_path, lake, monkeypatch):
    import zoo.recipes as recipes

    monkeypatch.setattr(recipes, "OUTSIDE_EPOCHS", (1,))
    manifest = export_outside("digits-mlp", 3, tmp_path / "out", seed=0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3 and {r["arch"] for r in rows} == {"mlp"}
    mtimes = {r["path"]: (tmp_path / "out" / r["path"]).stat().st_mtime_ns for r in rows}
    export_outside("digits-mlp", 3, tmp_path / "out", seed=0)  # resumes: nothing retrained
    assert {r["path"]: (tmp_path / "out" / r["path"]).stat().st_mtime_ns for r in rows} == mtimes
    report = ingest_many(lake, collect([str(manifest)], None))
    assert not report.failed and len(report.stored) == 3
    models = read_models(lake)
    assert {m.family for m in models} == {"ingest-file"} and {m.dataset for m in models} == {"digits"}
