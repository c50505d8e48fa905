"""The experiment runner: fit every predictor on the same split for each seed, score every test set.

An ``Experiment`` is a named zoo (a list of samples) plus a split function ``seed -> (train, val,
{test set name: samples})``. ``run`` returns one ``Score`` row per (test set, predictor, property,
seed); ``summarize`` turns them into mean/std rows. Predictors that cannot read a zoo (the NFN on a
heterogeneous one, calculators for learned properties) are skipped and said so, never faked.

A fit is made once: where two experiments promise the same split (the same ``split_key``) and a predictor
would be fitted on both with the same targets and the same resolved config (an ablation variant that
equals WeightNet's default, e.g. "probes on"), the later one takes the earlier one's scores on the test
sets they share instead of fitting the same model again (``shared_fits``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from evaluation.predictors import PREDICTORS, fit_identity, make_predictor
from weightnet import metrics
from weightnet.data import ZooSample

SplitFn = Callable[[int], tuple[list[ZooSample], list[ZooSample], dict[str, list[ZooSample]]]]


@dataclass
class Experiment:
    name: str  # e.g. "digits-cnn / random"
    zoo: str
    split: str  # random | family:X | width | hparam:lr | learning-curve:0.5 | ablation:...
    split_fn: SplitFn
    predictors: tuple[str, ...]
    targets: tuple[str, ...]
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # predictor -> config overrides
    labels: Mapping[str, str] = field(default_factory=dict)  # predictor -> display name (ablation variants)
    keep_fitted: bool = False  # keep seed-0 predictors (for interpretability)
    # experiments with the same non-empty key draw the same train and val for every seed, and their test
    # sets of one name hold the same models (the planner makes it a hash of the zoo's ordered model ids)
    split_key: str = ""


@dataclass(frozen=True)
class SharedFit:
    """A predictor of a later experiment scored by an earlier, identical fit (same split, targets, config)."""
    source: tuple[str, str]  # (experiment name, predictor label) that fits
    target: tuple[str, str]  # (experiment name, predictor label) that takes its scores
    seed: int
    tests: tuple[str, ...]  # the target's test sets
    first: bool  # the first seed: scatter data is copied too


@dataclass(frozen=True)
class Score:
    experiment: str
    test_set: str
    predictor: str
    property: str
    seed: int
    n_train: int
    n_test: int
    values: dict  # metric -> float


@dataclass
class Outcome:
    scores: list[Score] = field(default_factory=list)
    scatter: dict = field(default_factory=dict)  # (experiment, test_set, predictor, property) -> (y, p) of the first seed
    fitted: dict = field(default_factory=dict)  # (experiment, predictor) -> (predictor, test samples) of the first seed
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # fits/predictions that raised: the evaluation is not complete
    shared: list[SharedFit] = field(default_factory=list)  # resolved by ``merge`` once the source is in


def applicable(name: str, train: Sequence[ZooSample], tests: Sequence[ZooSample], targets: Sequence[str]) -> str:
    """'' when ``name`` can run here, else the reason it is skipped."""
    entry = PREDICTORS.get(name)
    if entry.computes and not set(targets) & set(entry.computes):
        return f"{name} only computes {' and '.join(entry.computes)}"
    return entry.skip(list(train) + list(tests))


def _fit_key(exp: Experiment, name: str) -> tuple | None:
    if not exp.split_key:
        return None
    return exp.split_key, tuple(exp.targets), name, fit_identity(name, exp.overrides.get(name))


def shared_fits(exps: Sequence[Experiment]) -> dict[tuple[int, str], tuple[int, str]]:
    """(experiment index, predictor) -> the earlier (index, predictor) whose fit it reuses. A fit is only
    shared where its (experiment name, label) names one fit (the scores are found by them) and the later
    experiment does not keep its fitted predictors (interpretation needs its own object)."""
    counts = Counter((e.name, e.labels.get(n, n)) for e in exps for n in e.predictors)
    first: dict[tuple, tuple[int, str]] = {}
    alias: dict[tuple[int, str], tuple[int, str]] = {}
    for i, e in enumerate(exps):
        for name in e.predictors:
            key = _fit_key(e, name)
            if key is None or key[3] is None or counts[(e.name, e.labels.get(name, name))] > 1:
                continue
            if key not in first:
                first[key] = (i, name)
            elif not e.keep_fitted:
                alias[(i, name)] = first[key]
    return alias


def n_fits(exps: Sequence[Experiment], index: int, alias: Mapping[tuple[int, str], tuple[int, str]]) -> int:
    return sum((index, n) not in alias for n in exps[index].predictors)


def n_units(exps: Sequence[Experiment], seeds: Sequence[int],
            alias: Mapping[tuple[int, str], tuple[int, str]] | None = None) -> int:
    """Fits the run makes: every (experiment, predictor, seed) but the shared ones (``alias``: the run's
    ``shared_fits``, computed here when not given)."""
    alias = shared_fits(exps) if alias is None else alias
    return sum(n_fits(exps, i, alias) for i in range(len(exps))) * len(seeds)


def run(exps: Sequence[Experiment], seeds: Sequence[int], device: str = "cpu",
        progress: Callable[[int, int], None] | None = None, workers: int = 1) -> Outcome:
    """Fit and score every (experiment, seed, predictor); with ``workers`` > 1 the (experiment, seed)
    units run in that many forked processes (see ``evaluation.parallel``), merged in the serial order."""
    if workers > 1:
        from evaluation.parallel import run_forked

        return run_forked(exps, seeds, device, progress, workers)
    out = Outcome()
    alias = shared_fits(exps)
    total, done = n_units(exps, seeds, alias), 0
    for i in range(len(exps)):
        for seed in seeds:
            merge(out, run_unit(exps, i, seed, seeds[0], device, alias))
            done += n_fits(exps, i, alias)
            if progress is not None:
                progress(done, total)
    return out


def run_unit(exps: Sequence[Experiment], index: int, seed: int, first_seed: int, device: str,
             alias: Mapping[tuple[int, str], tuple[int, str]] | None = None) -> Outcome:
    """Experiment ``index`` on one seed: one split, every predictor fitted on it and scored (those in
    ``alias`` take an earlier experiment's scores when the unit is merged, see ``shared_fits``)."""
    exp, out = exps[index], Outcome()
    train, val, tests = exp.split_fn(seed)
    all_test = [s for ss in tests.values() for s in ss]
    for name in exp.predictors:
        label = exp.labels.get(name, name)
        if alias and (index, name) in alias:
            j, src = alias[(index, name)]
            source = (exps[j].name, exps[j].labels.get(src, src))
            out.shared.append(SharedFit(source, (exp.name, label), seed, tuple(tests), seed == first_seed))
            out.notes.append(f"{exp.name}: {label} is the fit of {source[0]}: {source[1]} "
                             "(same split, targets and config), scored once")
            continue
        why = applicable(name, train, all_test, exp.targets)
        if why:
            out.notes.append(f"{exp.name}: {label} skipped: {why}")
        else:
            _fit_and_score(exp, name, label, seed, first_seed, train, val, tests, device, out)
    return out


def kept_test(tests: Mapping[str, list[ZooSample]]) -> list[ZooSample]:
    """The test set a kept (fitted) predictor is interpreted on: "test", else the first one."""
    return tests.get("test") or next(iter(tests.values()))


def merge(into: Outcome, part: Outcome) -> None:
    """Append ``part`` to ``into``; a note already there (a skip repeated for every seed) is kept once."""
    into.scores += part.scores
    into.scatter.update(part.scatter)
    into.fitted.update(part.fitted)
    into.notes += [n for n in part.notes if n not in into.notes]
    into.failures += part.failures
    for c in part.shared:
        _copy_shared(into, c)


def _copy_shared(out: Outcome, c: SharedFit) -> None:
    """The source's scores (and first-seed scatter) on the target's test sets, under the target's names;
    the source unit was merged before (it comes earlier in the serial order)."""
    rows = [s for s in out.scores if (s.experiment, s.predictor) == c.source and s.seed == c.seed and s.test_set in c.tests]
    if not rows:
        out.notes.append(f"{c.target[0]}: {c.target[1]} not scored on seed {c.seed}: "
                         f"its fit is {c.source[1]}'s, which has no scores")
        return
    out.scores += [dataclasses.replace(s, experiment=c.target[0], predictor=c.target[1]) for s in rows]
    if c.first:
        for (e, t, p, prop), v in list(out.scatter.items()):
            if (e, p) == c.source and t in c.tests:
                out.scatter[(c.target[0], t, c.target[1], prop)] = v


def _fit_and_score(exp: Experiment, name: str, label: str, seed: int, first_seed: int, train, val, tests,
                   device: str, out: Outcome) -> None:
    t0 = time.perf_counter()
    try:
        pred = make_predictor(name, device, exp.overrides.get(name))
        pred.fit(train, val, list(exp.targets), seed)
    except Exception as e:  # one failing predictor must not sink the comparison; it is reported as a failure
        out.failures.append(f"{exp.name}: {label} failed on seed {seed}: {type(e).__name__}: {e}")
        return
    fit_seconds = time.perf_counter() - t0  # wall time, so it depends on the machine's load
    if exp.keep_fitted and seed == first_seed:
        out.fitted[(exp.name, label)] = (pred, kept_test(tests))
    for test_name, samples in tests.items():
        if not samples:
            continue
        try:
            if hasattr(pred, "predict_with_intervals"):  # one pass for both (learned predictors)
                p, iv = pred.predict_with_intervals(samples, alpha=0.1)
            else:
                p = pred.predict(samples)
                iv = pred.predict_interval(samples, alpha=0.1) if hasattr(pred, "predict_interval") else {}
        except Exception as e:
            out.failures.append(f"{exp.name}/{test_name}: {label} could not predict: {type(e).__name__}: {e}")
            continue
        for prop, values in p.items():
            y = np.array([s.labels.get(prop, math.nan) for s in samples], dtype=np.float64)
            ok = ~np.isnan(y)
            if not ok.any():
                continue
            interval = (iv[prop][0][ok], iv[prop][1][ok]) if prop in iv else None
            vals = {**metrics.score(y[ok], np.asarray(values)[ok], interval), "fit_seconds": fit_seconds}
            out.scores.append(Score(exp.name, test_name, label, prop, seed, len(train), int(ok.sum()), vals))
            if seed == first_seed:
                out.scatter[(exp.name, test_name, label, prop)] = (y[ok], np.asarray(values)[ok])


def summarize(scores: Sequence[Score]) -> list[dict]:
    """One row per (experiment, test set, predictor, property): metric -> (mean, std) over seeds."""
    groups: dict[tuple, list[Score]] = {}
    for s in scores:
        groups.setdefault((s.experiment, s.test_set, s.predictor, s.property), []).append(s)
    rows = []
    for (exp, test, pred, prop), ss in groups.items():
        agg = metrics.aggregate([s.values for s in ss])
        rows.append({"experiment": exp, "test_set": test, "predictor": pred, "property": prop,
                     "n_seeds": len(ss), "n_train": ss[0].n_train, "n_test": ss[0].n_test, **agg})
    return rows


def lookup(rows: Sequence[dict], experiment: str, predictor: str, prop: str, test_set: str = "test") -> dict | None:
    for r in rows:
        if (r["experiment"], r["predictor"], r["property"], r["test_set"]) == (experiment, predictor, prop, test_set):
            return r
    return None
