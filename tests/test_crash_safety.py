"""Crash safety (issue 8 §1): a zoo build, a labeling run and a WeightNet training run in real
subprocesses are SIGKILLed at seeded points and rerun; the lake then holds exactly what an uninterrupted
reference run produced, with no duplicate keys at any snapshot, and every snapshot readable.

The scenarios themselves live in bench/crash_scenarios.py (the bench runs them bigger); here they run
once per module at a tiny size and each test checks one job's outcome.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_crash_module():
    spec = importlib.util.spec_from_file_location("crash_scenarios", ROOT / "bench" / "crash_scenarios.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


cs = _load_crash_module()

# 4 members x 2 checkpoints = 8 models in 2 build snapshots; labels in 4 snapshots; 2 WeightNet epochs
TINY = cs.CrashConfig(family="digits-mlp", n=4, checkpoints=(1, 2), population_size=2, label_batch=2,
                      weightnet_epochs=2, kills=2, seed=0)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict:
    return cs.run_crash_scenarios(tmp_path_factory.mktemp("crash"), TINY)


def assert_same_as_reference(s, tables: tuple[str, ...]) -> None:
    assert s.job.completed
    assert s.job.killed >= 1, "no attempt was killed mid-run: the scenario tested nothing"
    assert {t: s.diff.lost[t] for t in tables} == {t: 0 for t in tables}, s.diff.lost
    assert {t: s.diff.extra[t] for t in tables} == {t: 0 for t in tables}, s.diff.extra
    assert s.diff.n_duplicates == 0, s.diff.duplicates
    assert s.diff.unreadable == []
    assert s.diff.snapshots > 2


def test_killed_build_reruns_to_the_reference_zoo(scenarios):
    s = scenarios["build"]
    assert_same_as_reference(s, ("models", "tensors"))
    builds = [r for r in s.runs if r[1] == "build"]
    assert len(builds) == 1 and builds[0][2] == "completed", builds  # one run id per (family, n, seed, ...)


def test_killed_labeling_reruns_to_the_reference_labels(scenarios):
    s = scenarios["label"]
    assert_same_as_reference(s, ("models", "tensors", "labels"))
    labels = [r for r in s.runs if r[1] == "label"]
    # every attempt plans what is still missing, so its run id differs; a killed one stays 'running'
    assert labels[-1][2] == "completed"
    assert all(status in ("running", "completed") for _, _, status in labels)


def test_killed_training_reruns_and_predicts_like_the_reference(scenarios):
    s = scenarios["train"]
    assert_same_as_reference(s, ("models", "tensors", "labels", "predictions"))
    runs = [r for r in s.runs if r[1] == "weightnet"]
    assert runs[-1][2] == "completed"
    assert all(status in ("running", "completed") for _, _, status in runs)


def test_compare_lakes_sees_a_lost_and_a_changed_row(tmp_path, make_models):
    """The checker itself: a lake missing one model and with one changed tensor byte is caught."""
    from storage.lake import Lake
    from storage.writes import write_models

    models = make_models(3)
    ref, bad = tmp_path / "ref", tmp_path / "bad"
    with Lake.open(ref, create=True) as lk:
        write_models(lk, models, "all three")
    rec, state = models[1]
    changed = {k: v.clone() for k, v in state.items()}
    changed["0.bias"][0] = changed["0.bias"][0].item() + 1.0
    with Lake.open(bad, create=True) as lk:
        write_models(lk, [models[0], (rec, changed)], "one lost, one changed")
    diff = cs.compare_lakes(ref, bad, ("models", "tensors"))
    assert diff.lost == {"models": 1, "tensors": 4 + 1}
    assert diff.extra == {"models": 0, "tensors": 1}
    assert diff.n_duplicates == 0 and diff.unreadable == []


def test_duplicates_are_counted_per_table_key(tmp_path, make_models):
    from storage.lake import Lake
    from storage.writes import write_models

    with Lake.open(tmp_path / "lake", create=True) as lk:
        write_models(lk, make_models(2), "two")
        lk.commit(lambda: lk.sql("INSERT INTO lake.main.models SELECT * FROM lake.main.models LIMIT 1"), "dup")
        assert cs.duplicates(lk)["models"] == 1
        assert cs.duplicates(lk)["tensors"] == 0

