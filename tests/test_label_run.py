"""Incremental, versioned, deterministic labeling in the lake, and the ``zoo label`` command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import labeling  # noqa: F401  (fills the registry)
from core.errors import UnknownEntry, ZooError
from fixtures.properties import override_property
from labeling.registry import PROPERTIES, Property, replace
from labeling.run import label_models, label_zoo, plan, plan_labeling
from storage.writes import write_models

CHEAP = "performance,efficiency,weight_stats"


def toy_fn(batch, splits, params, device, generator):
    """A test property: the sum of each model's weights, shifted by the registered version."""
    version = PROPERTIES.get("toy_sum").version
    return [{"toy_sum": float(sum(t.double().sum() for t in s.values())) + version} for s in batch.states]


TOY = Property("toy_sum", 1, toy_fn, {})


def label_rows(lake, labeler: str | None = None) -> dict[tuple[str, str], tuple[float, int]]:
    q = "SELECT model_id, property, value, labeler_version FROM lake.main.labels"
    rows = lake.fetch(q + (" WHERE labeler = ?" if labeler else ""), [labeler] if labeler else None)
    return {(m, p): (v, ver) for m, p, v, ver in rows}


def assert_no_duplicates(lake) -> None:
    total, distinct = lake.fetch("SELECT count(*), count(DISTINCT (model_id, property)) FROM lake.main.labels")[0]
    assert total == distinct


@pytest.fixture
def zoo_lake(lake, tiny_digits_models):
    write_models(lake, tiny_digits_models, "tiny digits zoo")
    return lake


def test_plan_packs_architecture_groups_and_skips_what_does_not_apply(zoo_lake, tiny_digits_models):
    batches = plan(zoo_lake, None, None, batch_size=2)
    cnn_ids = sorted(r.model_id for r, _ in tiny_digits_models if r.arch == "cnn")
    mlp_ids = sorted(r.model_id for r, _ in tiny_digits_models if r.arch == "mlp")
    # groups back to back (cnn, then mlp), cut every 2 models: one lake read/write per 2 models
    assert [len(ids) for ids, _ in batches] == [2, 2, 1]
    flat = [i for ids, _ in batches for i in ids]
    assert sorted(flat[:3]) == cnn_ids and sorted(flat[3:]) == mlp_ids
    for _, props in batches:
        names = {p.name for p in props}
        assert "fairness" not in names  # digits declares no sensitive feature
        assert {"performance", "pgd", "autoattack", "corruptions"} <= names
    assert plan_labeling(zoo_lake, CHEAP, "arch = 'mlp'") == [mlp_ids]


def test_label_zoo_is_incremental(zoo_lake, tiny_digits_models):
    res = label_zoo(zoo_lake, CHEAP, batch_size=2)
    assert res.n_models == len(tiny_digits_models) and res.n_labels > 0
    assert plan_labeling(zoo_lake, CHEAP) == []
    rows = label_rows(zoo_lake)
    assert len(rows) == res.n_labels
    snap = zoo_lake.current_snapshot()
    again = label_zoo(zoo_lake, CHEAP)
    assert (again.n_labels, again.n_models) == (0, 0) and zoo_lake.current_snapshot() == snap  # nothing written
    run = zoo_lake.fetch("SELECT status, metrics FROM lake.main.runs WHERE kind = 'label'")
    assert run[0][0] == "completed" and json.loads(run[0][1])["n_models"] == len(tiny_digits_models)
    acc = zoo_lake.fetch("SELECT l.value FROM lake.main.labels l JOIN lake.main.models m USING (model_id) "
                         "WHERE l.property = 'test_accuracy' AND m.seed = 0 AND m.arch = 'cnn'")
    assert 0.5 < acc[0][0] <= 1.0  # a trained CNN is far better than chance on digits


def test_bumping_a_version_relabels_exactly_the_stale_models(zoo_lake, tiny_digits_models):
    ids = sorted(r.model_id for r, _ in tiny_digits_models)
    with override_property(TOY):
        label_zoo(zoo_lake, "toy_sum", where=f"model_id <> '{ids[0]}'")
        assert plan_labeling(zoo_lake, "toy_sum") == [[ids[0]]]  # only the unlabeled one is missing
        label_zoo(zoo_lake, "toy_sum")
        v1 = label_rows(zoo_lake, "toy_sum")
        assert {ver for _, ver in v1.values()} == {1}
        with override_property(replace(TOY, version=2)):
            stale = sorted(i for b in plan_labeling(zoo_lake, "toy_sum") for i in b)
            assert stale == ids
            label_models(zoo_lake, ids[:2], "toy_sum")  # part of the relabeling, as if interrupted
            assert sorted(i for b in plan_labeling(zoo_lake, "toy_sum") for i in b) == ids[2:]
            label_zoo(zoo_lake, "toy_sum")
            v2 = label_rows(zoo_lake, "toy_sum")
            assert plan_labeling(zoo_lake, "toy_sum") == []
        for key, (value, ver) in v2.items():
            assert ver == 2 and value == pytest.approx(v1[key][0] + 1)
    assert_no_duplicates(zoo_lake)


def test_interrupted_run_resumes_without_losing_or_duplicating(zoo_lake, tiny_digits_models):
    calls = {"n": 0}

    def flaky(batch, splits, params, device, generator):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker died")
        return toy_fn(batch, splits, params, device, generator)

    with override_property(replace(TOY, fn=flaky)):
        with pytest.raises(RuntimeError, match="worker died"):
            label_zoo(zoo_lake, "toy_sum", batch_size=1)
        first = label_rows(zoo_lake, "toy_sum")
        assert len(first) == 1  # the finished batch is stored, the failed one left nothing
        status = zoo_lake.fetch("SELECT status FROM lake.main.runs WHERE kind = 'label'")
        assert [s for (s,) in status] == ["failed"]
        res = label_zoo(zoo_lake, "toy_sum", batch_size=1)
        assert res.n_models == len(tiny_digits_models) - 1
        assert len(label_rows(zoo_lake, "toy_sum")) == len(tiny_digits_models)
    assert_no_duplicates(zoo_lake)


def test_labeling_twice_gives_identical_values(zoo_lake, tiny_digits_models):
    ids = sorted(r.model_id for r, _ in tiny_digits_models if r.arch == "cnn")[:2]
    with override_property(replace(PROPERTIES.get("pgd"), params=PROPERTIES.get("pgd").params.__class__(
            eps_linf=(8 / 255,), eps_l2=(0.5,), steps=3, n_examples=40))):
        label_models(zoo_lake, ids, "pgd,performance")
        first = label_rows(zoo_lake)
        label_models(zoo_lake, ids, "pgd,performance")
        second = label_rows(zoo_lake)
    assert first == second and any(k[1] == "pgd_linf_8_255" for k in first)


def test_params_are_stored_with_the_labels(zoo_lake, tiny_digits_models):
    from labeling.attacks import AutoAttackParams

    mid = sorted(r.model_id for r, _ in tiny_digits_models if r.arch == "mlp")[0]
    aa = PROPERTIES.get("autoattack")
    with override_property(replace(aa, params=AutoAttackParams(n_examples=6, n_queries=5))):
        label_models(zoo_lake, [mid], "autoattack")
    (params,) = zoo_lake.fetch("SELECT DISTINCT params FROM lake.main.labels WHERE labeler = 'autoattack'")[0]
    p = json.loads(params)
    assert len(p["indices"]) == 6 and p["n_queries"] == 5 and p["version"] == "standard"
    names = {r[0] for r in zoo_lake.fetch("SELECT property FROM lake.main.labels WHERE labeler = 'autoattack'")}
    assert names == {"autoattack_ta_standard_8_255", "autoattack_ta_standard_8_255_clean"}


def test_bad_input_is_refused_with_a_clear_error(zoo_lake):
    with pytest.raises(UnknownEntry, match="unknown property 'nope'"):
        plan_labeling(zoo_lake, "performance,nope")
    with pytest.raises(ZooError, match="unknown model 'missing'"):
        label_models(zoo_lake, ["missing"], "efficiency")
    if not torch.cuda.is_available():
        with pytest.raises(ZooError, match="CUDA is not available"):
            label_zoo(zoo_lake, "efficiency", device="cuda")


def test_cli_labels_and_sql_shows_the_labels(zoo_lake, lake_dir):
    from typer.testing import CliRunner

    from cli.main import app

    zoo_lake.close()
    out = CliRunner().invoke(app, ["label", "--properties", "efficiency", "--lake", str(lake_dir), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "labels for 5 models written" in out.output
    out = CliRunner().invoke(app, ["sql", "SELECT count(*) AS n FROM labels WHERE property = 'flops'",
                                   "--format", "csv", "--lake", str(lake_dir)])
    assert out.exit_code == 0 and out.output.strip().splitlines()[-1] == "5"
    out = CliRunner().invoke(app, ["label", "--properties", "efficiency", "--lake", str(lake_dir)])
    assert "nothing to label" in out.output
    bad = subprocess.run([sys.executable, "-m", "cli", "label", "--properties", "nope", "--lake", str(lake_dir)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown property 'nope'" in bad.stderr


def test_models_on_an_unavailable_dataset_are_skipped_with_a_warning(lake, tiny_digits_models, monkeypatch):
    import dataclasses

    from core.errors import DatasetUnavailable
    from zoo.datasets import DATASETS

    def gone(seed, root):
        raise DatasetUnavailable("dataset 'gone' is not on disk and cannot be fetched here")

    monkeypatch.setitem(DATASETS._entries, "gone", gone)
    rec, state = tiny_digits_models[3]
    other = dataclasses.replace(rec, model_id="on-gone-dataset", dataset="gone")
    write_models(lake, [(rec, state), (other, state)], "two models")
    with pytest.warns(UserWarning, match="skipping models on dataset 'gone'"):
        assert plan_labeling(lake, "efficiency") == [[rec.model_id]]
