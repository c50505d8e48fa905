"""Benchmark zoos: the benchmark families, the suite build (resumable, labeled, tagged, reliability
stored as a runs row) and ``zoo families --reliability``."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from zoo.families import FAMILIES
from zoo.sampling import TrainSpace, sample_train_config
from labeling.suite import SUITES, BuildSuite, build_suite, format_reliability, stored_reliability

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BENCH = [f for f, _ in SUITES.get("benchmark").families]


@pytest.fixture
def tiny_suite():
    """A registered 3-run suite of the cheapest benchmark family, PGD on 40 examples."""
    s = BuildSuite("tiny-test", (("bench-mnist1d-mlp", 3),), ("performance", "pgd"), "tiny-v1",
                   label_params=(("pgd", (("n_examples", 40),)),))
    SUITES.register("tiny-test")(s)
    yield s
    SUITES._entries.pop("tiny-test")


def test_benchmark_suite_is_benchmark_sized() -> None:
    s = SUITES.get("benchmark")
    assert s.tag == "benchmark-v1" and set(s.properties) == {"performance", "efficiency", "weight_stats", "pgd"}
    assert all(n >= 2000 for _, n in s.families)
    assert sum(n * len(FAMILIES.get(f).checkpoints) for f, n in s.families) >= 10000
    datasets = {FAMILIES.get(f).dataset for f in BENCH}
    assert datasets == {"mnist1d-20k", "digits-t900"}
    assert {FAMILIES.get(f).arch for f in BENCH} == {"mlp", "cnn1d", "wildcnn1d", "wildcnn"}


@pytest.mark.parametrize("family", BENCH)
def test_benchmark_members_are_pure_and_heterogeneous_where_wild(family: str) -> None:
    from zoo.datasets import load_dataset

    fam = FAMILIES.get(family)
    info = load_dataset(fam.dataset, fam.dataset_seed).info
    plans = [fam.member(i, 0, info) for i in range(12)]
    assert plans == [fam.member(i, 0, info) for i in range(12)]
    assert all(len(p.train_config.checkpoints) == 2 for p in plans)
    if family == "bench-digits-wild":  # plain SGD left members at chance (zoo/families.py)
        assert {p.train_config.optimizer for p in plans} == {"adam", "rmsprop"}
    archs = {json.dumps(p.arch_config, sort_keys=True) for p in plans}
    assert len(archs) >= (10 if fam.arch.startswith("wild") else 2)
    assert all(p.arch_config.get("activation") != "sigmoid" for p in plans)


WILD_RANGES = {  # family -> (depths, widths, kernels, mean forward FLOPs per example of 48 members at most)
    "bench-mnist1d-wild": ((2, 4), (4, 24), {3, 5, 7}, 70_000),
    "bench-digits-wild": ((2, 4), (8, 24), {3, 5}, 1_500_000),
}


@pytest.mark.parametrize("family", sorted(WILD_RANGES))
def test_wild_benchmark_members_stay_in_their_cheap_ranges_and_vary_in_every_knob(family: str) -> None:
    """The wild families' cost is their members' size (docs/results.md): widening a range back fails here."""
    import torch

    from core.flops import count_flops
    from zoo.archs import build
    from zoo.datasets import load_dataset

    (lo_d, hi_d), (lo_c, hi_c), kernels, max_flops = WILD_RANGES[family]
    fam = FAMILIES.get(family)
    info = load_dataset(fam.dataset, fam.dataset_seed).info
    cfgs = [fam.member(i, 0, info).arch_config for i in range(48)]
    assert all(lo_d <= len(c["channels"]) <= hi_d and lo_c <= min(c["channels"]) <= max(c["channels"]) <= hi_c
               and set(c["kernel_sizes"]) <= kernels for c in cfgs)
    for knob in ("activation", "residual", "norm"):
        assert len({c[knob] for c in cfgs}) > 1, knob
    assert {len(c["channels"]) for c in cfgs} == set(range(lo_d, hi_d + 1))
    assert {k for c in cfgs for k in c["kernel_sizes"]} == kernels
    if fam.arch == "wildcnn1d":
        assert {s for c in cfgs for s in c["strides"]} == {1, 2}
    flops = [count_flops(build(fam.arch, c).module, torch.zeros(1, *info.input_shape)) for c in cfgs]
    assert sum(flops) / len(flops) < max_flops


def test_family_label_overrides_touch_only_their_family() -> None:
    from labeling.suite import label_overrides

    s = SUITES.get("benchmark")
    suite_wide = {prop: dict(kv) for prop, kv in s.label_params}
    for family in ("bench-mnist1d-wild", "bench-digits-wild"):
        assert label_overrides(s, family)["pgd"] == {**suite_wide["pgd"], "n_examples": 128}
    for family in ("bench-mnist1d-mlp", "bench-mnist1d-cnn"):
        assert label_overrides(s, family) == suite_wide  # the homogeneous families keep the suite's params


def test_a_family_override_is_stored_with_that_familys_labels_only(lake, tiny_suite) -> None:
    s = dataclasses.replace(tiny_suite, name="tiny-override", properties=("pgd",),
                            families=(("bench-mnist1d-mlp", 1), ("bench-mnist1d-cnn", 1)),
                            family_label_params=(("bench-mnist1d-cnn", "pgd", (("n_examples", 30),)),))
    SUITES.register("tiny-override")(s)
    try:
        build_suite(lake, "tiny-override")
    finally:
        SUITES._entries.pop("tiny-override")
    rows = lake.fetch("SELECT DISTINCT m.family, l.params FROM lake.main.labels l JOIN lake.main.models m "
                      "USING (model_id) WHERE l.labeler = 'pgd'")
    assert {fam: json.loads(p)["n_examples"] for fam, p in rows} == {"bench-mnist1d-mlp": 40, "bench-mnist1d-cnn": 30}


def test_sgd_lr_scale_multiplies_only_sgd_learning_rates() -> None:
    base, scaled = TrainSpace(), dataclasses.replace(TrainSpace(), sgd_lr_scale=10.0)
    seen = set()
    for seed in range(30):
        a, b = sample_train_config(base, seed), sample_train_config(scaled, seed)
        seen.add(a.optimizer)
        assert b.lr == pytest.approx(a.lr * (10.0 if a.optimizer == "sgd" else 1.0), rel=1e-12)
        assert dataclasses.replace(b, lr=a.lr) == a
    assert seen == {"sgd", "adam", "rmsprop"}


def test_suite_builds_labels_tags_and_stores_reliability_then_resumes(lake, tiny_suite, monkeypatch) -> None:
    import labeling.suite as suite_mod

    calls: list[tuple[str, int, int]] = []
    res = build_suite(lake, "tiny-test", progress=lambda d, a, b: calls.append((d, a, b)))
    assert res.tag == "tiny-v1" and lake.resolve("tiny-v1") == res.snapshot_id
    (fam,) = res.families
    assert fam.models == 6  # 3 runs x checkpoints (5, 20)
    n_labels = lake.fetch("SELECT count(DISTINCT model_id) FROM lake.main.labels WHERE property = 'test_accuracy'")
    assert n_labels[0][0] == 6
    params = lake.fetch("SELECT DISTINCT params FROM lake.main.labels WHERE labeler = 'pgd'")
    assert [json.loads(p)["n_examples"] for (p,) in params] == [40]  # the suite's override is stored
    rel = stored_reliability(lake)["bench-mnist1d-mlp"]
    assert rel["n_models"] == 6 and rel["n_test"] == 20000 and rel["n_runs"] == 3
    assert -1 <= rel["split_half_tau"] <= 1 and -1 <= rel["bootstrap_tau"] <= 1
    assert rel["acc_q1"] <= rel["acc_median"] <= rel["acc_q3"] and 0 <= rel["frac_under_20"] <= 1
    assert "split-half tau" in format_reliability(rel)
    done, total = calls[-1][1], calls[-1][2]
    assert done == total == 3 * 20 + 6  # member-epochs + models labeled
    assert all(a <= b for (_, a, _), (_, b, _) in zip(calls, calls[1:]))  # one bar, never going back
    # re-running resumes: nothing new is trained or labeled
    before = lake.fetch("SELECT count(*) FROM lake.main.labels")[0][0]
    n_rel = lake.fetch("SELECT count(*) FROM lake.main.runs WHERE kind = 'reliability'")[0][0]
    measured = []
    monkeypatch.setattr(suite_mod, "family_reliability", lambda lk, f, *workers: measured.append(f) or {})
    again = build_suite(lake, "tiny-test")
    assert again.families[0].models == 6 and again.tag == "tiny-v1"
    # a finished family keeps its measured reliability and times: not measured again, no new row
    assert measured == [] and again.families[0].reliability["split_half_tau"] == rel["split_half_tau"]
    assert again.families[0].build_s == fam.build_s
    assert lake.fetch("SELECT count(*) FROM lake.main.runs WHERE kind = 'reliability'")[0][0] == n_rel
    assert lake.fetch("SELECT count(*) FROM lake.main.labels")[0][0] == before
    assert lake.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 6
    # one more run of the family: its models change, so its reliability is measured again
    bigger = dataclasses.replace(tiny_suite, families=(("bench-mnist1d-mlp", 4),))
    monkeypatch.setitem(SUITES._entries, "tiny-test", bigger)
    third = build_suite(lake, "tiny-test")
    assert measured == ["bench-mnist1d-mlp"] and third.families[0].models == 8


def test_a_sample_or_one_family_never_gets_the_suite_tag(tiny_suite) -> None:
    from labeling.suite import suite_tag

    assert suite_tag(tiny_suite, None) == "tiny-v1"
    assert suite_tag(tiny_suite, 64) == "tiny-v1-n64"
    assert suite_tag(tiny_suite, 64, "bench-mnist1d-mlp") == "tiny-v1-n64-bench-mnist1d-mlp"


def test_reliability_is_printed_by_the_cli(lake_dir) -> None:
    from storage.lake import Lake
    from labeling.suite import FamilyTiming, record_reliability

    with Lake.open(lake_dir, create=True) as lk:
        rel = {"n_models": 40, "n_test": 20000, "bootstrap_tau": 0.981, "split_half_tau": 0.962, "n_runs": 20,
               "acc_q1": 0.3, "acc_median": 0.5, "acc_q3": 0.7, "frac_under_20": 0.05}
        record_reliability(lk, "benchmark", FamilyTiming("bench-mnist1d-cnn", 20, 40, 12.0, 3.0, 1.0, rel))
    out = subprocess.run([sys.executable, "-m", "cli", "families", "--reliability", "--lake", str(lake_dir)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bench-mnist1d-cnn" in out.stdout and "0.962" in out.stdout and "0.981" in out.stdout


def test_cli_refuses_an_unknown_suite_and_a_family_with_a_suite(tmp_path) -> None:
    lake = str(tmp_path / "l")
    bad = subprocess.run([sys.executable, "-m", "cli", "build", "--suite", "nope", "--lake", lake],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr and "benchmark" in bad.stderr
    other = subprocess.run([sys.executable, "-m", "cli", "build", "--suite", "benchmark", "--family",
                            "digits-mlp", "--n", "2", "--lake", lake], capture_output=True, text=True)
    assert other.returncode == 2 and "digits-mlp" in other.stderr and "not in suite" in other.stderr


def _lake_contents(lk) -> tuple[dict, list]:
    from storage.writes import read_weights

    ids = [r[0] for r in lk.fetch("SELECT model_id FROM lake.main.models ORDER BY model_id")]
    labels = lk.fetch("SELECT model_id, property, value, params FROM lake.main.labels "
                      "ORDER BY model_id, property")
    return read_weights(lk, ids), labels


def assert_worker_correctness_is_serial(lk, family: str) -> None:
    import numpy as np

    from labeling.reliability import correctness
    from labeling.suite_workers import correctness_in_workers
    from storage.samples import load_samples
    from zoo.datasets import load_dataset

    samples = load_samples(lk, f"family = '{family}'")
    fam = FAMILIES.get(family)
    x, y = load_dataset(fam.dataset, fam.dataset_seed).split("test")
    serial = correctness(samples, x, y)
    shared = correctness_in_workers(lk.config, [s.model_id for s in samples], x, y, workers=2, threads=1)
    assert shared.shape == serial.shape == (len(samples), len(y)) and shared.dtype == bool
    assert np.array_equal(shared, serial)
    assert 0 < serial.mean() < 1  # neither all right nor all wrong: the comparison can see a misplaced row
    # the parent of a worker run reads records and labels only (load_samples(weights=False))
    light = load_samples(lk, f"family = '{family}'", ("test_accuracy",), weights=False)
    assert [s.model_id for s in light] == [s.model_id for s in samples] and all(s.state == {} for s in light)
    full = load_samples(lk, f"family = '{family}'", ("test_accuracy",))
    assert [s.labels for s in light] == [s.labels for s in full] and all(s.state for s in full)


def test_suite_in_worker_processes_stores_the_same_models_and_labels(tmp_path, tiny_suite) -> None:
    """--workers 2 on a SQLite catalog: units and label batches in two processes, same result as one."""
    import torch

    from storage.lake import Lake

    s = dataclasses.replace(tiny_suite, name="tiny-workers", families=(("bench-mnist1d-mlp", 4),))
    SUITES.register("tiny-workers")(s)
    try:
        with Lake.open(f"sqlite:{tmp_path / 'one'}", create=True) as one:
            res_one = build_suite(one, "tiny-workers", label_batch=2)
            w_one, l_one = _lake_contents(one)
        calls: list[tuple[str, int, int]] = []
        with Lake.open(f"sqlite:{tmp_path / 'two'}", create=True) as two:
            res = build_suite(two, "tiny-workers", label_batch=2, workers=2, threads=1,
                              progress=lambda d, a, b: calls.append((d, a, b)))
            w_two, l_two = _lake_contents(two)
            shards = two.fetch("SELECT count(*) FROM lake.main.runs WHERE kind = 'build'")[0][0]
            # the label reliability's re-run of every model on the test split, in the two workers
            assert_worker_correctness_is_serial(two, "bench-mnist1d-mlp")
    finally:
        SUITES._entries.pop("tiny-workers")
    assert res.families[0].models == 8 and res.tag == "tiny-v1"
    keys = ("n_models", "n_test", "bootstrap_tau", "split_half_tau", "acc_median")
    assert {k: res.families[0].reliability[k] for k in keys} == {k: res_one.families[0].reliability[k] for k in keys}
    assert shards == 2  # the 4 runs' populations were dealt to two worker processes
    assert sorted(w_one) == sorted(w_two) and len(w_one) == 8
    for mid, state in w_one.items():
        assert all(torch.equal(t, w_two[mid][k]) for k, t in state.items()), mid
    assert l_one == l_two and len(l_one) > 8
    assert calls[-1][1] == calls[-1][2] == 4 * 20 + 8
    assert all(a <= b for (_, a, _), (_, b, _) in zip(calls, calls[1:]))


def test_suite_workers_refuse_a_single_writer_catalog(lake, tiny_suite) -> None:
    from core.errors import ZooError

    with pytest.raises(ZooError, match="sqlite"):
        build_suite(lake, "tiny-test", workers=2)
    assert lake.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 0


def test_evaluation_reads_a_suites_stored_reliability_only_for_the_same_models(lake, monkeypatch) -> None:
    import evaluation.run as run_mod
    from labeling.suite import FamilyTiming, record_reliability
    from storage.samples import ZooSample

    rel = {"n_models": 4, "n_test": 20000, "bootstrap_tau": 0.981, "split_half_tau": 0.962, "n_runs": 2,
           "acc_q1": 0.3, "acc_median": 0.5, "acc_q3": 0.7, "frac_under_20": 0.05}
    record_reliability(lake, "benchmark", FamilyTiming("bench-mnist1d-cnn", 2, 4, 12.0, 3.0, 1.0, rel))
    measured: list[list[str]] = []

    def fake_measure(samples, **_):
        measured.append(sorted({s.family for s in samples}))
        return {f: {"n_models": 1, "n_test": 10, "bootstrap_tau": 0.5, "split_half_tau": 0.4} for f in measured[-1]}, []

    monkeypatch.setattr(run_mod, "label_reliability", fake_measure)

    def samples(n_cnn: int) -> list:
        fams = ["bench-mnist1d-cnn"] * n_cnn + ["bench-mnist1d-mlp"] * 3
        return [ZooSample(f"m{i}", f"r{i}", f, "x", {}, None, {}, {"test_accuracy": 0.5}) for i, f in enumerate(fams)]

    out, notes = run_mod.measured_reliability(lake, samples(4))
    assert measured == [["bench-mnist1d-mlp"]]  # the suite's family is not measured again
    assert out["bench-mnist1d-cnn"] == {k: rel[k] for k in run_mod.RELIABILITY_KEYS}
    assert out["bench-mnist1d-mlp"]["split_half_tau"] == 0.4
    assert any("bench-mnist1d-cnn" in n and "not measured again" in n for n in notes)
    # another set of models of the family (here one more): measured, the stored row does not stand for it
    out, notes = run_mod.measured_reliability(lake, samples(5))
    assert measured[-1] == ["bench-mnist1d-cnn", "bench-mnist1d-mlp"]
    assert out["bench-mnist1d-cnn"]["split_half_tau"] == 0.4 and not notes


def test_reliability_reads_stored_outcomes_and_reruns_only_models_without_one(lake, tiny_suite, monkeypatch) -> None:
    """The performance label keeps each model's test correctness: the suite's reliability reads it instead
    of running every model on the test split again, and re-runs only models labeled without it."""
    import numpy as np

    import labeling.reliability as rel_mod
    from labeling.suite import family_reliability
    from storage.writes import read_outcomes
    from zoo.datasets import load_dataset

    res = build_suite(lake, "tiny-test", label_batch=2)
    ids = [r[0] for r in lake.fetch("SELECT model_id FROM lake.main.models ORDER BY model_id")]
    stored = read_outcomes(lake, ids, rel_mod.TEST_CORRECT)
    assert sorted(stored) == ids and len(ids) == 6
    labels = dict(lake.fetch("SELECT model_id, value FROM lake.main.labels WHERE property = 'test_accuracy'"))
    assert all(stored[m].mean() == labels[m] for m in ids)  # exactly the stored label
    fam = FAMILIES.get("bench-mnist1d-mlp")
    x, y = load_dataset(fam.dataset, fam.dataset_seed).split("test")
    rerun_all = rel_mod.correctness_of_stored(lake, ids, x, y)
    # what a re-run of the models gives, bit for bit: the label and the re-run share one forward pass
    # (labeling.population.model_logits)
    assert np.array_equal(np.stack([stored[m] for m in ids]), rerun_all)
    assert 0 < rerun_all.mean() < 1
    rerun: list[list[str]] = []
    real = rel_mod.correctness_of_stored
    monkeypatch.setattr(rel_mod, "correctness_of_stored",
                        lambda lk, ii, xx, yy: rerun.append(sorted(ii)) or real(lk, ii, xx, yy))
    keys = ("n_models", "n_test", "bootstrap_tau", "split_half_tau")
    from_stored = family_reliability(lake, "bench-mnist1d-mlp")
    assert rerun == [] and from_stored["rerun"] == 0
    assert {k: from_stored[k] for k in keys} == {k: res.families[0].reliability[k] for k in keys}
    # two models labeled before outcomes were kept: only they are re-run, the reliability is the same
    lake.commit(lambda: lake.con.execute("DELETE FROM lake.main.outcomes WHERE model_id IN (?, ?)", ids[:2]),
                "forget two outcomes")
    partial = family_reliability(lake, "bench-mnist1d-mlp")
    assert rerun == [ids[:2]] and partial["rerun"] == 2
    assert {k: partial[k] for k in keys} == {k: from_stored[k] for k in keys}
