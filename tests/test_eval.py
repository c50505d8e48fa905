"""Evaluation: function-preserving widening, splits, sensitivity, ablation planning, and the report."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from core.errors import ZooError
from fixtures.eval_zoo import synthetic_samples, trained_digits_zoo
from weightnet.data import _width
from evaluation import ablations, experiments, interpret, parallel, run, splits
from evaluation import targets as targets_mod
from evaluation.targets import STATNN
from evaluation.widen import widen
from zoo.archs import build


def assert_same_function(a, b, gen: torch.Generator) -> None:
    ma = build(a.arch, a.arch_config).module.eval()
    ma.load_state_dict(a.state)
    mb = build(b.arch, b.arch_config).module.eval()
    mb.load_state_dict(b.state)
    x = torch.rand((16, *a.arch_config["input_shape"]), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(mb(x), ma(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_widening_preserves_the_function(arch, factor, rng):
    s = synthetic_samples(arch, 1, rng)[0]
    w = widen(s, factor)
    assert _width(w) == factor * _width(s)
    assert w.spec.n_params > s.spec.n_params and w.labels == s.labels and w.model_id != s.model_id
    assert_same_function(s, w, rng)


def test_widening_without_splitting_the_outgoing_weights_would_change_the_function(rng):
    s = synthetic_samples("mlp", 1, rng)[0]
    w = widen(s, 2)
    unsplit = dict(w.state)
    unsplit["layers.1.weight"] = unsplit["layers.1.weight"] * 2  # undo the division by the factor
    with pytest.raises(AssertionError):
        assert_same_function(s, dataclasses.replace(w, state=unsplit), rng)


def test_widening_refuses_unknown_layer_kinds_and_configs(rng):
    s = synthetic_samples("mlp", 1, rng)[0]
    with pytest.raises(ZooError, match="width keys"):
        widen(dataclasses.replace(s, arch_config={"input_shape": [1, 8, 8], "n_classes": 10}), 2)
    with pytest.raises(ZooError, match="factor"):
        widen(s, 0)


def test_hparam_split_tests_on_an_unseen_range(rng):
    samples = synthetic_samples("mlp", 30, rng)
    cfgs = {s.model_id: {"lr": float(i)} for i, s in enumerate(samples)}
    train, val, test = splits.hparam_split(samples, cfgs, "lr", seed=0)
    lr = lambda ss: [cfgs[s.model_id]["lr"] for s in ss]  # noqa: E731
    assert max(lr(train) + lr(val)) < min(lr(test))
    assert len(train) + len(val) + len(test) == len(samples)
    with pytest.raises(ZooError, match="fewer than 4"):
        splits.hparam_split(samples, {}, "lr", seed=0)


def test_width_sets_train_narrow_and_test_widened_and_wider(rng):
    samples = synthetic_samples("mlp", 20, rng, width=4) + synthetic_samples("mlp", 5, rng, width=16)
    ws = splits.width_sets(samples, seed=0)
    assert ws.max_width == 4
    assert {_width(s) for s in ws.train + ws.val + ws.test} == {4}
    assert {_width(s) for s in ws.widened[2]} == {8} and {_width(s) for s in ws.widened[4]} == {16}
    assert len(ws.widened[4]) == len(ws.test) and len(ws.wider_trained) == 5
    assert not {s.run_id for s in ws.train} & {s.run_id for s in ws.test}


class FirstLayerNorm:
    """A 'predictor' that reads only the first weight tensor: sensitivity must point at layer 0 alone."""

    name = "first-layer"

    def predict(self, samples):
        return {"norm0": np.array([float(s.state[s.spec.params[0].name].norm()) for s in samples])}


def test_sensitivity_finds_the_only_layer_that_matters(rng):
    samples = synthetic_samples("cnn", 6, rng)
    sens = interpret.sensitivity(FirstLayerNorm(), samples)["norm0"]
    assert set(sens) == {"conv@0", "conv@1", "linear@2"}
    assert sens["conv@0"] > 0 and sens["conv@1"] == 0 and sens["linear@2"] == 0
    noisy = interpret.sensitivity(FirstLayerNorm(), samples, mode="noise")["norm0"]
    assert 0 < noisy["conv@0"] < sens["conv@0"] and noisy["linear@2"] == 0
    assert interpret.attention(FirstLayerNorm(), samples) is None


def test_ablations_never_run_a_variant_the_config_cannot_express():
    runnable, notes = ablations.plan()
    from evaluation.predictors import config_fields

    fields = config_fields()
    assert all(k in fields for v in runnable for k in v.as_dict)
    for v in ablations.ABLATIONS:
        if v not in runnable:
            assert any(v.label in n and "not available" in n for n in notes)
    assert {v.group for v in runnable} >= {"permutation", "tokenization", "depth", "heads", "d_model"}


# --- the suite end to end on a tiny trained zoo ------------------------------------------------
FAST = (("weightnet", (("epochs", 2),)), ("nfn", (("epochs", 5),)), ("statnn-gbt", (("gbt_iter", 20),)))
TINY = run.Suite("tiny", 2, 1, ("weightnet", "statnn-gbt", "nfn", "calc"), min_models=10, overrides=FAST)
TINY_STANDARD = dataclasses.replace(
    TINY, name="tiny-standard", predictors=("weightnet", "statnn-gbt"), held_out_family=True, widths=True,
    hparams=True, ablation_groups=("tokenization", "embeddings"), learning_curve=(0.5, 1.0), interpret=True)


def assert_completed(res, report_md: str) -> None:
    """Nothing failed: a failed fit/prediction/experiment would be listed (and the status not completed),
    so section names found in the report below are results, not the names of failures."""
    assert res.status == "completed" and res.failures == [], res.failures
    assert "## Status" not in report_md
    assert not [n for n in res.notes if "failed" in n or "could not" in n], res.notes


def break_predictors(monkeypatch, broken: set[str]) -> None:
    """Every fit of a predictor named in ``broken`` raises (an injected bug)."""
    real = experiments.make_predictor

    def make(name, device="cpu", overrides=None):
        if name in broken:
            raise RuntimeError(f"injected failure of {name}")
        return real(name, device, overrides)

    monkeypatch.setattr(experiments, "make_predictor", make)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """24 trained digits models tagged v1, then 2 more added after the tag (shared by the tests below)."""
    from storage.lake import Lake

    lake = Lake.open(tmp_path_factory.mktemp("evalzoo") / "lake", create=True)
    trained_digits_zoo(lake, n=24, archs=("mlp", "cnn"), widths=(8, 16))
    lake.tag("v1")
    trained_digits_zoo(lake, n=2, seed=7, archs=("mlp",), widths=(32,))
    yield lake
    lake.close()


def test_evaluate_small_writes_report_run_row_and_headline(tiny_zoo, tmp_path, monkeypatch):
    lake = tiny_zoo
    monkeypatch.setitem(run.SUITES, "tiny", TINY)
    ticks = []
    res = run.evaluate(lake, "tiny", at="v1", out_dir=tmp_path / "reports", seeds=(0, 1),
                       progress=lambda d, n: ticks.append((d, n)))
    assert ticks and ticks[-1][0] == ticks[-1][1]
    report = (tmp_path / "reports" / res.run_id / "report.md").read_text()
    assert_completed(res, report)
    assert "digits-cnn (12 models)" in report and "digits-mlp (12 models)" in report  # not the 2 later models
    assert list((tmp_path / "reports" / res.run_id).glob("scatter_*.png"))
    # the label's own retest agreement, re-measured from the weights and checked against the stored labels
    assert "## Label reliability (test accuracy)" in report and "| digits-cnn | 12 |" in report
    preds = {r["predictor"] for r in res.headline}
    assert {"weightnet", "statnn-gbt", "nfn", "calc"} <= preds
    calc = [r for r in res.headline if r["predictor"] == "calc"]
    assert calc and all(r["property"] == "n_params" and r["kendall_tau"].startswith("1.000") for r in calc)
    # per-zoo margin targets are measured; no wild zoo, held-out family, widths or outside models here
    measured = [t for t in res.targets if t["met"] is not None]
    assert measured and all(t["target"].startswith(("digits-cnn random", "digits-mlp random", "90% intervals"))
                            for t in measured)
    text = res.format_headline()
    assert "kendall_tau" in text and "not measured" in text
    row = lake.fetch("SELECT kind, status, metrics, snapshot_id FROM lake.main.runs WHERE run_id = ?", [res.run_id])
    kind, status, metrics, snap = row[0]
    assert (kind, status, snap) == ("evaluate", "completed", lake.resolve("v1"))
    assert json.loads(metrics)["targets"] == res.targets
    assert lake.read_only is False and lake.snapshot is None  # the caller's lake is restored


def test_evaluate_standard_runs_every_experiment(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(run.SUITES, "tiny-standard", TINY_STANDARD)
    res = run.evaluate(tiny_zoo, "tiny-standard", at="v1", out_dir=tmp_path, seeds=(0,))
    report = (tmp_path / res.run_id / "report.md").read_text()
    assert_completed(res, report)
    for section in ("held-out family digits-cnn", "/ widths", "widened x4", "widened x8", "held-out lr range", "learning curve",
                    "tokenization: global", "Interpretability"):
        assert section in report, section
    assert "embeddings: segment+layer-type off" in report and "not available" not in report
    assert (tmp_path / res.run_id / "learning_curve.png").exists()
    assert (tmp_path / res.run_id / "ablations.png").exists()
    assert list((tmp_path / res.run_id).glob("sensitivity_*.png"))
    assert (tmp_path / res.run_id / "attention_weightnet.png").exists()
    verdicts = {t["target"].split(":")[0]: t for t in res.targets}
    assert verdicts["each family held out in turn"]["met"] is not None
    assert "x8" in verdicts["function-preserving widening x4 and x8"]["measured"]
    assert verdicts["function-preserving widening x4 and x8"]["met"] is not None


CHEAP = dataclasses.replace(TINY, name="tiny-cheap", predictors=("statnn-gbt", "nfn", "calc"), interpret=False)


def test_a_failed_predictor_makes_the_evaluation_partial(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(run.SUITES, "tiny-cheap", CHEAP)
    break_predictors(monkeypatch, {"nfn"})
    res = run.evaluate(tiny_zoo, "tiny-cheap", at="v1", out_dir=tmp_path, seeds=(0,))
    assert res.status == "partial"
    assert res.failures and all("nfn failed" in f and "injected failure of nfn" in f for f in res.failures)
    headline_predictors = {r["predictor"] for r in res.headline}
    assert "statnn-gbt" in headline_predictors and "nfn" not in headline_predictors
    md = (tmp_path / res.run_id / "report.md").read_text()
    assert "## Status: PARTIAL" in md and md.index("## Status") < md.index("injected failure") < md.index("## Headline")
    status, metrics = tiny_zoo.fetch("SELECT status, metrics FROM lake.main.runs WHERE run_id = ?", [res.run_id])[0]
    assert status == "partial" and json.loads(metrics)["failures"] == res.failures


def test_an_evaluation_that_measured_nothing_has_failed(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(run.SUITES, "tiny-gbt", dataclasses.replace(CHEAP, name="tiny-gbt", predictors=("statnn-gbt",)))
    break_predictors(monkeypatch, {"statnn-gbt"})
    res = run.evaluate(tiny_zoo, "tiny-gbt", at="v1", out_dir=tmp_path, seeds=(0,))
    assert res.status == "failed" and res.headline == [] and len(res.failures) == 2  # two zoos, one seed
    assert tiny_zoo.fetch("SELECT status FROM lake.main.runs WHERE run_id = ?", [res.run_id])[0][0] == "failed"
    assert "## Status: FAILED" in (tmp_path / res.run_id / "report.md").read_text()


def test_evaluate_runs_only_the_chosen_predictors(tiny_zoo, tmp_path, monkeypatch):
    from core.errors import UnknownEntry

    monkeypatch.setitem(run.SUITES, "tiny-cheap", CHEAP)
    res = run.evaluate(tiny_zoo, "tiny-cheap", at="v1", out_dir=tmp_path, seeds=(0,), predictors=("statnn-gbt",))
    assert res.status == "completed", res.failures
    assert {r["predictor"] for r in res.headline} == {"statnn-gbt"}  # neither the NFN nor the calculator ran
    config = json.loads(tiny_zoo.fetch("SELECT config FROM lake.main.runs WHERE run_id = ?", [res.run_id])[0][0])
    assert config["suite"]["predictors"] == ["statnn-gbt"]  # the choice is recorded, and names the run
    with pytest.raises(UnknownEntry, match=r"no predictor 'flat-mlp'.*it runs: statnn-gbt, nfn, calc"):
        run.evaluate(tiny_zoo, "tiny-cheap", at="v1", out_dir=tmp_path, predictors=("statnn-gbt", "flat-mlp"))
    with pytest.raises(ZooError, match="no predictors chosen"):
        run.with_predictors(CHEAP, ())


@pytest.mark.parametrize("arg, why", [("weightnet,foo", "no predictor 'foo'"), (",", "no predictors chosen")])
def test_zoo_evaluate_refuses_a_bad_predictor_choice_before_opening_the_lake(tmp_path, zoo_cli, arg, why):
    r = zoo_cli("evaluate", "--predictors", arg, "--out", str(tmp_path / "rep"), lake=tmp_path / "lake")
    assert r.returncode != 0 and why in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "lake").exists() and not (tmp_path / "rep").exists()


def test_a_chosen_subset_reaches_every_experiment_of_the_plan(tiny_zoo):
    from storage.samples import load_samples

    with tiny_zoo.viewing(tiny_zoo.resolve("v1"), True):
        samples = load_samples(tiny_zoo, None, targets=["test_accuracy", "test_loss"], require_all=False)
    suite = run.with_predictors(TINY_STANDARD, ("statnn-gbt",))
    exps, _, _ = run.plan(samples, suite, {}, [])
    kinds = {e.split.split(":")[0] for e in exps}
    assert {"random", "family", "learning-curve"} <= kinds
    assert all(e.predictors == ("statnn-gbt",) for e in exps)  # no WeightNet fit, and no ablation of it
    exps, _, _ = run.plan(samples, run.with_predictors(TINY_STANDARD, ("weightnet",)), {}, [])
    assert any(e.split.startswith("ablation") for e in exps) and all(e.predictors == ("weightnet",) for e in exps)


def test_ablations_suite_plans_one_zoo_with_every_input_and_permutation_variant(tiny_zoo):
    from storage.samples import load_samples

    with tiny_zoo.viewing(tiny_zoo.resolve("v1"), True):
        samples = load_samples(tiny_zoo, None, targets=["test_accuracy"], require_all=False)
    notes: list[str] = []
    exps, primary, targets = run.plan(samples, run.SUITES["ablations"], {}, notes)
    assert {e.zoo for e in exps} == {primary} and targets == ("test_accuracy",)
    base = [e for e in exps if e.split == "random"]
    assert [e.predictors for e in base] == [("weightnet", "statnn-gbt", "statnn-mlp")]
    variants = {e.labels["weightnet"] for e in exps if e.split.startswith("ablation")}
    assert variants == {"inputs: probes on", "inputs: probes=16", "inputs: probes off", "inputs: weight tokens off",
                        "inputs: summary off", "inputs: free probes (no generator)", "inputs: view dropout off",
                        "inputs: probe readout off",
                        *(f"permutation: {p}" for p in ("invariant", "weight_sort", "activation_sort", "align", "none"))}
    # every ablation fit sees the base split: same split function output for a seed
    ab = next(e for e in exps if e.split.startswith("ablation"))
    assert [s.model_id for s in ab.split_fn(3)[2]["test"]] == [s.model_id for s in base[0].split_fn(3)[2]["test"]]


def test_an_ablation_equal_to_the_default_shares_the_base_fit(tiny_zoo):
    """In the ablations suite the variants whose resolved config is WeightNet's default ("probes on",
    "permutation: invariant") are the base fit (same split, same single target), not fitted again."""
    from storage.samples import load_samples
    from weightnet.config import WeightNetConfig
    from evaluation.predictors import apply_overrides

    with tiny_zoo.viewing(tiny_zoo.resolve("v1"), True):
        samples = load_samples(tiny_zoo, None, targets=["test_accuracy"], require_all=False)
    exps, _, _ = run.plan(samples, run.SUITES["ablations"], {}, [])
    alias = experiments.shared_fits(exps)
    default = [v.label for v in ablations.ABLATIONS if v.group in ("inputs", "permutation")
               and apply_overrides(WeightNetConfig(), v.as_dict) == WeightNetConfig()]
    assert default  # otherwise this test proves nothing
    assert sorted(exps[i].labels[n] for i, n in alias) == sorted(f"{v.group}: {v.label}" for v in ablations.ABLATIONS
                                                                   if v.label in default)
    assert set(alias.values()) == {(0, "weightnet")} and exps[0].split == "random"
    assert experiments.n_units(exps, [0, 1]) == (sum(len(e.predictors) for e in exps) - len(alias)) * 2


def test_fit_identity_is_the_resolved_config():
    from evaluation.predictors import fit_identity
    from weightnet.config import WeightNetConfig

    default = WeightNetConfig().probes
    assert fit_identity("weightnet", {"probes": default}) == fit_identity("weightnet", {}) != \
        fit_identity("weightnet", {"probes": 0})
    assert fit_identity("weightnet", {"no_such_field": 1}) is None
    assert fit_identity("statnn-gbt", {"gbt_iter": 20}) != fit_identity("statnn-gbt", {"gbt_iter": 21})
    assert fit_identity("statnn-gbt", {}) != fit_identity("statnn-mlp", {})


@pytest.mark.parametrize("workers", [1, 2])
def test_a_fit_equal_to_an_earlier_one_is_made_once_and_scored_under_both_names(monkeypatch, workers):
    from evaluation.experiments import Experiment

    g = torch.Generator().manual_seed(0)
    samples = synthetic_samples("mlp", 40, g)
    key, fast = run._random_key(samples), {"statnn-gbt": {"gbt_iter": 20}}

    def exp(name, label, overrides=fast, split_key=key, outside=()):
        return Experiment(name, "z", "random", run._random(samples, outside), ("statnn-gbt",), ("norm0",),
                          overrides=overrides, labels={"statnn-gbt": label}, split_key=split_key)
    exps = [exp("z / random", "statnn-gbt", outside=samples[:8]),  # tests: "test" and the outside set
            exp("z / ablation", "same"),  # same split, targets and config: shares the first fit
            exp("z / ablation", "other", overrides={"statnn-gbt": {"gbt_iter": 21}}),
            exp("z / unkeyed", "unkeyed", split_key="")]  # no promise of the same split: fitted
    assert experiments.shared_fits(exps) == {(1, "statnn-gbt"): (0, "statnn-gbt")}
    fits = []
    real = experiments.make_predictor

    def counting(name, device="cpu", overrides=None):
        fits.append(name)
        return real(name, device, overrides)
    monkeypatch.setattr(experiments, "make_predictor", counting)
    monkeypatch.setattr(parallel, "autograd_survives_fork", lambda: True)  # gradient boosting needs no autograd
    ticks = []
    out = experiments.run(exps, [0, 1], workers=workers, progress=lambda d, n: ticks.append((d, n)))
    assert out.failures == []
    if workers == 1:
        assert len(fits) == 6  # 3 fits a seed, not 4 (forked children count in their own copy)
    assert ticks[-1] == (6, 6) == (experiments.n_units(exps, [0, 1]),) * 2
    rows = {(s.predictor, s.test_set, s.seed): s for s in out.scores}
    assert {t for (p, t, _) in rows if p == "statnn-gbt"} == {"test", targets_mod.OUTSIDE_SET}
    assert {t for (p, t, _) in rows if p == "same"} == {"test"}  # only the test sets it has itself
    for seed in (0, 1):
        same, base, refit = rows[("same", "test", seed)], rows[("statnn-gbt", "test", seed)], rows[("unkeyed", "test", seed)]
        assert same.experiment == "z / ablation" and same.values == base.values
        # what the shared scores stand for: fitting the same model again gives the same numbers
        assert {k: v for k, v in same.values.items() if k != "fit_seconds"} == \
            {k: v for k, v in refit.values.items() if k != "fit_seconds"}
    assert rows[("other", "test", 0)].values["rmse"] != rows[("same", "test", 0)].values["rmse"]  # a fit of its own
    y, p = out.scatter[("z / ablation", "test", "same", "norm0")]
    np.testing.assert_array_equal(p, out.scatter[("z / random", "test", "statnn-gbt", "norm0")][1])
    assert any("same is the fit of z / random: statnn-gbt" in n for n in out.notes)


def _tiny_experiments(lake) -> list:
    from storage.samples import load_samples

    with lake.viewing(lake.resolve("v1"), True):
        samples = load_samples(lake, None, targets=["test_accuracy", "test_loss"], require_all=False)
    suite = dataclasses.replace(TINY, name="tiny-workers", predictors=("weightnet", "statnn-gbt", "nfn", "calc"),
                                held_out_family=True, interpret=True)
    exps, _, _ = run.plan(samples, suite, {}, [])
    return exps


FORKED_VS_SERIAL = """
import json, torch
from fixtures.eval_zoo import synthetic_samples
from evaluation import experiments, parallel, run
from evaluation.experiments import Experiment

assert parallel.autograd_survives_fork()  # a fresh process: nothing has run backward yet
g = torch.Generator().manual_seed(0)
samples = synthetic_samples("mlp", 24, g) + synthetic_samples("cnn", 24, g)
fast = {"weightnet": {"epochs": 2}, "nfn": {"epochs": 3}, "statnn-gbt": {"gbt_iter": 20}}
exps = [Experiment(f"{f} / random", f, "random", run._random([s for s in samples if s.family == f]),
                   ("weightnet", "nfn", "statnn-gbt"), ("norm0",), overrides=fast, keep_fitted=True)
        for f in ("synthetic-mlp", "synthetic-cnn")]
forked = experiments.run(exps, [0, 1], workers=2)  # first: the fork path, before any backward here
torch.set_num_threads(1)
serial = experiments.run(exps, [0, 1])
key = lambda o: [(s.experiment, s.predictor, s.seed, s.n_test, json.dumps(
    {k: v for k, v in s.values.items() if k != "fit_seconds"}, sort_keys=True)) for s in o.scores]
print(json.dumps({"same": key(forked) == key(serial), "n": len(serial.scores),
                  "weightnet": sum(s.predictor == "weightnet" for s in serial.scores),
                  "failures": forked.failures + serial.failures, "notes": forked.notes,
                  "fitted": sorted(map(list, forked.fitted)) == sorted(map(list, serial.fitted)) != [],
                  "tests": all([s.model_id for s in forked.fitted[k][1]] == [s.model_id for s in serial.fitted[k][1]]
                               for k in serial.fitted)}))
"""


def test_forked_workers_give_the_serial_scores_bit_for_bit(tmp_path):
    """In a fresh process (so the fork path is taken, whatever earlier tests ran here), 2 forked workers
    return exactly the scores, fitted predictors and test sets of one process (NaN-equal via JSON)."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", FORKED_VS_SERIAL], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failures"] == [] and out["same"] and out["fitted"] and out["tests"], out
    assert out["n"] == 12 and out["weightnet"] == 4  # 2 zoos x 2 seeds x 3 predictors, none skipped
    assert not any("ran in one process" in n for n in out["notes"]), out["notes"]


def test_workers_give_the_serial_scores_in_the_serial_order(tiny_zoo):
    """2 workers (forked, or one process with a note where this process can no longer fork autograd)
    return exactly what one process does."""
    exps = _tiny_experiments(tiny_zoo)
    assert {e.name for e in exps} >= {"digits-cnn / random", "held-out family digits-cnn"}
    with run._threads(1):
        serial = experiments.run(exps, [0, 1])
    ticks = []
    with run._threads(1):  # as evaluate() runs it: a fallback to one process fits on this thread count
        forked = experiments.run(exps, [0, 1], progress=lambda d, n: ticks.append((d, n)), workers=2)
    forked.notes = [n for n in forked.notes if "autograd's threads already run" not in n]
    assert serial.failures == forked.failures == []
    assert [(s.experiment, s.test_set, s.predictor, s.property, s.seed, s.n_test) for s in forked.scores] == \
        [(s.experiment, s.test_set, s.predictor, s.property, s.seed, s.n_test) for s in serial.scores]
    for a, b in zip(serial.scores, forked.scores):
        keys = set(a.values) - {"fit_seconds"}
        assert keys == set(b.values) - {"fit_seconds"}
        np.testing.assert_array_equal([a.values[k] for k in sorted(keys)], [b.values[k] for k in sorted(keys)],
                                      err_msg=str((a, b)))  # bit for bit (NaN where both are NaN)
    assert forked.notes == serial.notes and len(set(serial.notes)) == len(serial.notes)
    assert set(forked.scatter) == set(serial.scatter)
    assert set(forked.fitted) == set(serial.fitted) != set()  # the fitted seed-0 predictors come back
    for key, (pred, test) in forked.fitted.items():  # with the parent's own test samples
        assert [s.model_id for s in test] == [s.model_id for s in serial.fitted[key][1]]
        assert test[0] is next(s for s in exps[0].split_fn(0)[2]["test"] if s.model_id == test[0].model_id)
        ours, theirs = pred.predict(test), serial.fitted[key][0].predict(test)  # the predictor itself came back
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks) and ticks[-1] == (experiments.n_units(exps, [0, 1]),) * 2


def test_a_failing_or_dying_worker_is_a_failure_not_a_hang(tiny_zoo, monkeypatch):
    import os

    exps = [e for e in _tiny_experiments(tiny_zoo) if e.name.endswith("/ random")][:2]
    real = experiments.make_predictor

    def make(name, device="cpu", overrides=None):
        if name == "nfn":
            raise RuntimeError("injected failure of nfn")
        if name == "weightnet" and os.getpid() != parent:
            os._exit(3)  # the worker process dies mid-unit (as when the kernel kills it for memory)
        return real(name, device, overrides)

    parent = os.getpid()
    monkeypatch.setattr(experiments, "make_predictor", make)
    monkeypatch.setattr(parallel, "autograd_survives_fork", lambda: True)  # the fork path (no child backward here)
    out = experiments.run(exps, [0], workers=2)
    assert out.failures and any("worker process died" in f for f in out.failures), out.failures
    serial = experiments.run(exps[:1], [0])  # in the parent weightnet fits; nfn still fails, as a failure
    assert any("injected failure of nfn" in f for f in serial.failures)


def test_workers_fall_back_to_one_process_when_forked_autograd_would_fail(tiny_zoo, monkeypatch):
    exps = [e for e in _tiny_experiments(tiny_zoo) if e.name.endswith("/ random")][:1]
    monkeypatch.setattr(parallel, "autograd_survives_fork", lambda: False)
    out = experiments.run(exps, [0], workers=2)
    assert out.failures == [] and out.scores
    assert out.notes[0] == ("--workers 2: autograd's threads already run in this process, so forked children "
                            "could not train; ran in one process")


def test_workers_refuse_more_threads_and_a_bad_count(tiny_zoo, tmp_path):
    with pytest.raises(ZooError, match="one thread per worker"):
        run.evaluate(tiny_zoo, "small", at="v1", out_dir=tmp_path, workers=2, threads=2)
    with pytest.raises(ZooError, match="workers must be >= 1"):
        run.evaluate(tiny_zoo, "small", at="v1", out_dir=tmp_path, workers=0)


def test_a_crashing_experiment_plan_is_a_failure_and_a_data_limit_a_note(rng, monkeypatch):
    samples = synthetic_samples("mlp", 12, rng)
    suite = dataclasses.replace(TINY, name="w", widths=True, hparams=True)
    notes, failures = [], []
    exps, _, _ = run.plan(samples, suite, {}, notes, failures)  # no lr recorded: the zoo cannot support it
    assert failures == [] and any("held-out hyperparameter split not run" in n for n in notes)
    assert any("/ widths" in e.name for e in exps)

    def crash(*a, **k):
        raise TypeError("injected bug")

    monkeypatch.setattr(splits, "width_sets", crash)
    notes, failures = [], []
    exps, _, _ = run.plan(samples, suite, {}, notes, failures)
    assert len(failures) == 1 and failures[0].startswith("width generalization on synthetic-mlp failed: TypeError")
    assert not any("/ widths" in e.name for e in exps)
    with pytest.raises(TypeError, match="injected bug"):
        run.plan(samples, suite, {}, [])


@pytest.mark.parametrize("broken", [set(), {"nfn"}])
def test_zoo_evaluate_exits_non_zero_unless_completed(tmp_path, monkeypatch, zoo_cli, broken):
    from storage.lake import Lake

    with Lake.open(tmp_path / "lake", create=True) as lk:
        trained_digits_zoo(lk, n=12, archs=("mlp",), widths=(8,))
    monkeypatch.setitem(run.SUITES, "tiny-cheap", CHEAP)
    break_predictors(monkeypatch, broken)
    r = zoo_cli("evaluate", "--suite", "tiny-cheap", "--seeds", "0", "--out", str(tmp_path / "rep"),
                lake=tmp_path / "lake")
    if broken:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "FAILED: " in r.stdout and "injected failure of nfn" in r.stdout and "evaluation partial" in r.stdout
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAILED" not in r.stdout and "completed" in r.stdout


def test_evaluate_names_bad_input(lake, tmp_path):
    from core.errors import LakeError, UnknownEntry

    with pytest.raises(UnknownEntry, match="unknown evaluation suite 'huge'"):
        run.evaluate(lake, "huge", out_dir=tmp_path)
    with pytest.raises(LakeError, match="unknown snapshot or tag"):
        run.evaluate(lake, "small", at="nope", out_dir=tmp_path)


def test_choose_targets_prefers_common_labels(rng):
    samples = synthetic_samples("mlp", 10, rng)
    samples = [dataclasses.replace(s, labels={"test_accuracy": 0.5, "test_loss": 1.0, "rare": 1.0} if i < 2 else
                                   {"test_accuracy": 0.5, "test_loss": 1.0, "n_params": 3.0})
               for i, s in enumerate(samples)]
    assert run.choose_targets(samples, 1) == ("test_accuracy", "test_loss")  # n_params is the calculators' job
    assert run.calculated_targets(samples) == ()  # 2 models lack n_params
    full = [dataclasses.replace(s, labels={"n_params": float(i % 3), "flops": 5.0}) for i, s in enumerate(samples)]
    assert run.calculated_targets(full) == ("n_params",)  # constant flops cannot be ranked


def _as_family(samples, family: str, acc_offset: float) -> list:
    return [dataclasses.replace(s, family=family, run_id=f"{family}-{s.run_id}", model_id=f"{family}-{s.model_id}",
                                labels={"test_accuracy": acc_offset + 0.01 * i})
            for i, s in enumerate(samples)]


def test_cross_suite_plans_wildcnn_random_and_every_family_held_out(rng):
    samples = (_as_family(synthetic_samples("cnn", 20, rng), "wildcnn", 0.5)
               + _as_family(synthetic_samples("cnn", 20, rng), "digits-cnn", 0.3)
               + _as_family(synthetic_samples("mlp", 20, rng), "digits-mlp", 0.1))
    notes: list[str] = []
    exps, primary, targets = run.plan(samples, run.SUITES["cross"], {}, notes)
    assert (primary, targets) == ("wildcnn", ("test_accuracy",))
    assert sorted(e.name for e in exps) == ["held-out family digits-cnn", "held-out family digits-mlp",
                                            "held-out family wildcnn", "wildcnn / random"]
    assert all("bench-" in n for n in notes)  # only the benchmark wild families are absent
    for e in exps:
        assert {"weightnet", "nfn"} <= set(e.predictors) and set(e.predictors) & set(STATNN)
        train, val, tests = e.split_fn(0)
        if e.split.startswith("family:"):
            fam = e.split.split(":")[1]
            assert {s.family for s in tests["test"]} == {fam}
            assert fam not in {s.family for s in train + val}
        else:
            assert {s.family for s in train + val + tests["test"]} == {"wildcnn"}
            assert not {s.run_id for s in train} & {s.run_id for s in tests["test"]}


def test_cross_suite_says_when_the_wildcnn_zoo_is_missing(rng):
    samples = (_as_family(synthetic_samples("cnn", 20, rng), "digits-cnn", 0.3)
               + _as_family(synthetic_samples("mlp", 20, rng), "digits-mlp", 0.1))
    notes: list[str] = []
    exps, _, _ = run.plan(samples, run.SUITES["cross"], {}, notes)
    assert any("wildcnn" in n for n in notes)
    assert "wildcnn / random" not in {e.name for e in exps}
    assert {e.name for e in exps} >= {"held-out family digits-cnn", "held-out family digits-mlp"}
