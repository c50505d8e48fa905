"""Build suites: several families built, labeled, measured for label reliability and tagged as one.

    zoo build --suite benchmark            # every benchmark family at benchmark size, tagged benchmark-v1
    zoo build --suite benchmark --n 64     # a sample of each family, tagged benchmark-v1-n64
    zoo build --suite benchmark --n 64 --family bench-mnist1d-cnn   # one family's sample

Resumable: ``build_zoo`` skips stored members and ``label_zoo`` labels only what lacks a current label,
so re-running an interrupted suite continues where it stopped. Per family the suite records how long
building and labeling took and the family's label reliability (``label_reliability``) as a ``runs``
row (kind ``reliability``), which ``zoo families --reliability`` prints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.errors import ZooError
from core.hashing import stable_hash
from core.registry import Registry
from storage.lake import Lake
from storage.writes import write_run


@dataclass(frozen=True)
class BuildSuite:
    name: str
    families: tuple[tuple[str, int], ...]  # (family, training runs) in build order
    properties: tuple[str, ...]  # labeled on every model of the suite
    tag: str  # the snapshot tag of a full-size build (a build with --n gets "<tag>-n<n>")
    seed: int = 0
    # per property, parameter overrides for this suite's labels (stored with every label as its params)
    label_params: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    # (family, property, overrides) applied on top of ``label_params`` for that family's labels only
    family_label_params: tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...] = ()


SUITES: Registry[BuildSuite] = Registry("build suite")
SUITES.register("benchmark")(BuildSuite(
    "benchmark",
    # 2,000 training runs x 2 checkpoints per family: 16,000 models; 2,000 runs give random splits of
    # >= 300 test models per family with room for training sets of >= 1,000 runs
    (("bench-mnist1d-mlp", 2000), ("bench-mnist1d-cnn", 2000), ("bench-mnist1d-wild", 2000),
     ("bench-digits-wild", 2000)),
    ("performance", "efficiency", "weight_stats", "pgd"),
    "benchmark-v1",
    # PGD (4 budgets x 10 steps, forward + backward) is the labeling cost: on 1,000 examples it took ~2 s per
    # cnn1d model on the loaded 2-core machine (measured, 64-run sample), more than training the model; a
    # fixed seeded subset of 256 test examples (robust-accuracy sd <= 3%) keeps labeling below training
    label_params=(("pgd", (("n_examples", 256),)),),
    # the wild families (only): PGD on 128 examples (robust-accuracy sd <= 4.4%). On bench-digits-wild PGD
    # is ~90% of the labeling arithmetic (performance reads only 1,797 digits, PGD 40 forward-backward
    # passes per example), on bench-mnist1d-wild about a third. The homogeneous families keep 256.
    family_label_params=(("bench-mnist1d-wild", "pgd", (("n_examples", 128),)),
                         ("bench-digits-wild", "pgd", (("n_examples", 128),)))))

# (phase description, done, total) for one progress bar over the whole suite
SuiteProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FamilyTiming:
    family: str
    n: int
    models: int
    build_s: float
    label_s: float
    reliability_s: float
    reliability: dict


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    tag: str
    snapshot_id: int
    families: list[FamilyTiming]


def suite_tag(suite: BuildSuite, n: int | None, only: str | None = None) -> str:
    """The full suite at its sizes gets the suite's tag; a sample or one family gets a tag saying so."""
    return suite.tag + ("" if n is None else f"-n{n}") + ("" if only is None else f"-{only}")


def build_suite(lake: Lake, suite: str, n: int | None = None, device: str = "cpu", label_batch: int = 64,
                progress: SuiteProgress | None = None, log: Callable[[str], None] | None = None,
                only: str | None = None, workers: int = 1, threads: int | None = None) -> SuiteResult:
    """Build, label and measure every family of ``suite`` (``n`` runs each instead of the suite's sizes;
    ``only``: just that family of the suite). ``workers`` > 1 trains and labels each family in that
    many processes of ``threads`` torch threads each (default: the cores shared out), on a lake whose
    catalog admits several writers (``labeling.suite_workers``); the models and labels are the same."""
    from labeling.registry import resolve
    from labeling.suite_workers import require_shared_catalog
    from zoo.build import build_zoo, plan_family
    from zoo.families import FAMILIES
    from zoo.train import last_epoch

    s = SUITES.get(suite)
    if n is not None and n < 1:
        raise ZooError(f"--n must be >= 1 for a suite build (got {n})")
    if workers < 1:
        raise ZooError(f"--workers must be >= 1 (got {workers})")
    require_shared_catalog(lake.config, workers)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    sizes = [(fam, n if n is not None else size) for fam, size in s.families if only in (None, fam)]
    if not sizes:
        raise ZooError(f"family {only!r} is not in suite {suite!r} ({', '.join(f for f, _ in s.families)})")
    for fam, _ in sizes:
        FAMILIES.get(fam)
    resolve(list(s.properties))  # unknown properties fail before any work
    # one unit of work = one member-epoch trained or one model labeled
    plans = {fam: plan_family(FAMILIES.get(fam), size, s.seed) for fam, size in sizes}
    work = {fam: (sum(last_epoch(p.train_config) for p in plans[fam]),
                  sum(len(p.train_config.checkpoints) for p in plans[fam])) for fam, _ in sizes}
    total, offset = sum(a + b for a, b in work.values()), 0
    out: list[FamilyTiming] = []
    for fam, size in sizes:
        epochs, models = work[fam]
        t0 = time.time()
        if workers > 1:
            res = _build_family_in_workers(lake, fam, size, s.seed, plans[fam], device, workers, threads,
                                           lambda d, t, o=offset: progress and progress(f"build {fam}", o + epochs - t + d, total))
        else:
            res = build_zoo(lake, fam, size, seed=s.seed, device=device,
                            progress=lambda d, t, o=offset: progress and progress(f"build {fam}", o + epochs - t + d, total))
        t1 = time.time()
        offset += epochs
        labeled = label_family(lake, s, fam, device, label_batch,
                               lambda d, t, o=offset: progress and progress(f"label {fam}", o + models - t + d, total),
                               workers=workers, threads=threads)
        t2 = time.time()
        offset += models
        if progress:
            progress(f"reliability {fam}", offset, total)
        stored = None if res.new_ids or labeled else _finished(lake, s.name, fam, size, len(res.model_ids))
        if stored is not None:  # a finished family (resumed suite): its measured reliability and times stand
            rel = {k: v for k, v in stored.items() if k not in ("models", "build_s", "label_s", "reliability_s")}
            timing = FamilyTiming(fam, size, stored["models"], stored["build_s"], stored["label_s"],
                                  stored["reliability_s"], rel)
            t3 = time.time()
        else:
            rel = family_reliability(lake, fam, workers, threads)
            t3 = time.time()
            timing = FamilyTiming(fam, size, len(res.model_ids), round(t1 - t0, 1), round(t2 - t1, 1),
                                  round(t3 - t2, 1), rel)
            record_reliability(lake, s.name, timing)
        out.append(timing)
        if log:
            log(f"{fam}: {size} runs, {len(res.model_ids)} models ({len(res.new_ids)} new), build {t1 - t0:.0f} s, "
                f"label {t2 - t1:.0f} s ({labeled} models), reliability {t3 - t2:.0f} s: "
                f"{format_reliability(rel)}")
    tag = suite_tag(s, n, only)
    snap = lake.tag(tag)
    return SuiteResult(s.name, tag, snap, out)


def _build_family_in_workers(lake: Lake, family: str, n: int, seed: int, plans: list, device: str, workers: int,
                             threads: int, progress: Callable[[int, int], None]):
    """``build_zoo`` of the family with its units dealt to worker processes; the one-process result.
    ``plans``: the family's member plans (``zoo.build.plan_family``), already made by the caller."""
    from labeling.suite_workers import build_in_workers
    from zoo.build import build_zoo, plan_build
    from zoo.train import last_epoch

    units = plan_build(lake, family, n, seed)
    pending = sum(last_epoch(plans[i].train_config) for u in units for i in u)
    if units:
        build_in_workers(lake.config, family, n, seed, device, units, workers, threads,
                         lambda done: progress(done, pending))
    return build_zoo(lake, family, n, seed=seed, units=[])  # every member's ids, nothing trained


def label_overrides(suite: BuildSuite, family: str) -> dict[str, dict[str, object]]:
    """property -> parameter overrides for ``family``'s labels: the suite's, then the family's own."""
    out = {prop: dict(kv) for prop, kv in suite.label_params}
    for fam, prop, kv in suite.family_label_params:
        if fam == family:
            out[prop] = {**out.get(prop, {}), **dict(kv)}
    return out


def with_overrides(props: list, overrides: dict[str, dict[str, object]]) -> list:
    """The properties with their parameter overrides applied (stored with every label as its params)."""
    return [dataclasses.replace(p, params=dataclasses.replace(p.params, **overrides[p.name]))
            if p.name in overrides else p for p in props]


def label_family(lake: Lake, suite: BuildSuite, family: str, device: str, batch_size: int,
                 progress: Callable[[int, int], None] | None = None, workers: int = 1,
                 threads: int = 1) -> int:
    """Label the family's models lacking a current label of a suite property (with the suite's parameter
    overrides), one snapshot per batch; returns how many models were labeled."""
    from labeling.run import label_models, plan

    overrides = label_overrides(suite, family)
    batches = plan(lake, list(suite.properties), f"family = '{family}'", batch_size)
    total, done = sum(len(ids) for ids, _ in batches), 0
    if workers > 1 and batches:
        from labeling.suite_workers import label_in_workers

        named = [(ids, [p.name for p in props]) for ids, props in batches]
        return label_in_workers(lake.config, named, overrides, device, suite.seed, workers, threads,
                                lambda d: progress and progress(d, total))
    for ids, props in batches:
        label_models(lake, ids, with_overrides(props, overrides), device, seed=suite.seed)
        done += len(ids)
        if progress is not None:
            progress(done, total)
    return total


def family_reliability(lake: Lake, family: str, workers: int = 1, threads: int = 1) -> dict:
    """Test-accuracy label reliability of a family (all its labeled checkpoints) plus the spread of test
    accuracy over its final checkpoints: quartiles and the share under 20% (members left untrained).
    Each model's per-example test correctness is the ``test_correct`` outcome its ``performance`` label
    stored; models labeled before outcomes were kept are re-run on the test split, in ``workers``
    processes when > 1 (the serial re-run of 4,000 bench-mnist1d-cnn models on 20,000 examples took
    ~9 minutes on one core while the other idled)."""
    from labeling.reliability import TEST_CORRECT, correctness_of_stored, label_reliability
    from storage.samples import load_samples
    from storage.writes import read_outcomes

    samples = load_samples(lake, f"family = '{family}'", ("test_accuracy",), weights=False)
    if not samples:
        return {"n_models": 0}
    stored = read_outcomes(lake, [s.model_id for s in samples], TEST_CORRECT)

    def correct(ss, x, y):  # the models without a stored outcome: their weights are read where they run
        ids = [s.model_id for s in ss]
        if workers > 1:
            from labeling.suite_workers import correctness_in_workers

            return correctness_in_workers(lake.config, ids, x, y, workers, threads)
        return correctness_of_stored(lake, ids, x, y)
    rel, notes = label_reliability(samples, min_models=2, correct=correct, stored=stored)
    out = dict(rel.get(family, {"n_models": len(samples)}))
    out["rerun"] = len(samples) - len(stored)  # models re-run on the test split (no stored outcome)
    if notes:
        out["notes"] = notes
    last: dict[str, tuple[int, float]] = {}
    epochs = dict(lake.fetch("SELECT model_id, epoch FROM lake.main.models WHERE family = ?", [family]))
    for smp in samples:  # the final checkpoint of each training run
        e = int(epochs.get(smp.model_id) or 0)
        if smp.run_id not in last or e > last[smp.run_id][0]:
            last[smp.run_id] = (e, smp.labels["test_accuracy"])
    acc = np.array([a for _, a in last.values()])
    q = np.quantile(acc, [0.25, 0.5, 0.75])
    out.update(n_runs=len(acc), acc_q1=float(q[0]), acc_median=float(q[1]), acc_q3=float(q[2]),
               frac_under_20=float((acc < 0.2).mean()))
    return out


def record_reliability(lake: Lake, suite: str, t: FamilyTiming) -> None:
    """One ``runs`` row per (suite, family, snapshot): the family's reliability and wall times."""
    snap = lake.current_snapshot()
    run_id = "reliability-" + stable_hash({"suite": suite, "family": t.family, "n": t.n, "snapshot": snap})
    metrics = {**t.reliability, "models": t.models, "build_s": t.build_s, "label_s": t.label_s,
               "reliability_s": t.reliability_s}
    write_run(lake, run_id, "reliability", {"suite": suite, "family": t.family, "n": t.n}, "completed", metrics,
              snapshot_id=snap)


def _finished(lake: Lake, suite: str, family: str, n: int, models: int) -> dict | None:
    """The latest reliability row of (suite, family, n) when it measured all ``models`` models, else None."""
    rows = lake.fetch("SELECT config, metrics FROM lake.main.runs WHERE kind = 'reliability' ORDER BY snapshot_id DESC")
    for config, metrics in rows:
        c, m = json.loads(config), json.loads(metrics)
        if (c.get("suite"), c.get("family"), c.get("n")) == (suite, family, n):
            return m if m.get("models") == models and m.get("n_models") == models else None
    return None


def stored_reliability(lake: Lake) -> dict[str, dict]:
    """family -> metrics of its latest ``reliability`` run row."""
    rows = lake.fetch("SELECT config, metrics FROM lake.main.runs WHERE kind = 'reliability' "
                      "ORDER BY snapshot_id")
    out: dict[str, dict] = {}
    for config, metrics in rows:
        out[json.loads(config)["family"]] = json.loads(metrics)
    return out


def format_reliability(r: dict) -> str:
    if "split_half_tau" not in r:
        return f"{r.get('n_models', 0)} models, reliability not measured"
    return (f"split-half tau {r['split_half_tau']:.3f}, bootstrap tau {r['bootstrap_tau']:.3f} "
            f"({r['n_models']} models, n_test {r['n_test']}); test acc q1/median/q3 "
            f"{r['acc_q1']:.3f}/{r['acc_median']:.3f}/{r['acc_q3']:.3f}, {100 * r['frac_under_20']:.0f}% under 20%")
