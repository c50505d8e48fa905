"""``evaluate``: the comparison suites, the issue-14 targets (evaluation.targets), and the report.

Suites (``SUITES``):
- ``small`` (default, minutes on the demo zoo): random split by training run on up to two families,
  WeightNet vs StatNN (GBT and MLP) vs NFN vs flat MLP (+ calculators when n_params/flops are
  labelled), test_accuracy and two more labels, 3 seeds.
- ``standard``: every family (each with its "outside recipes" test set when models of its architecture
  were ingested, see ``zoo recipes``); the pooled zoo; held-out families; held-out widths (2x/4x/8x
  function-preserving widenings and wider-trained models); held-out learning-rate range; the seed's
  ablations; a learning curve; sensitivity and WeightNet's attention by layer kind and depth.
- ``cross``: only the cross-architecture targets: the heterogeneous zoos (``WILD_ZOOS``) on a random
  split and every family held out in turn (trained on the other families of its input space),
  test_accuracy only, WeightNet vs StatNN vs NFN.
- ``ablations``: one zoo's random split (test_accuracy) with WeightNet's input and permutation-handling
  ablations beside WeightNet and the StatNNs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from core.errors import UnknownEntry, ZooError
from core.hashing import code_version, stable_hash
from evaluation import ablations, experiments, interpret, report, splits
from evaluation import targets as targets_mod
from evaluation.experiments import Experiment
from evaluation.predictors import PREDICTORS, WEIGHTNET, computed_properties
from labeling.reliability import label_reliability
from storage.lake import Lake
from storage.runs import Run, finish_run, start_run
from storage.writes import read_models
from storage.samples import ZooSample, load_samples
from weightnet.data import split_samples

PREFERRED_TARGETS = ("test_accuracy", "gen_gap_accuracy", "pgd_linf_2_255", "corruption_mean_accuracy", "test_loss",
                     "test_f1", "pgd_linf_8_255")
WILD_ZOOS = ("wildcnn", "bench-mnist1d-wild", "bench-digits-wild")  # heterogeneous families (the cross suite)
PREFERRED_ZOOS = ("digits-cnn", "wildcnn", "digits-mlp", "mnist1d-mlp", "arrests-mlp")
# labels that widening leaves unchanged (it preserves the function, not the weights or their count)
NOT_FUNCTION = ("n_params", "flops", "weights_")
INGESTED_PREFIX = "ingest-"  # families of models ingested from files and hubs (zoo.ingest)
MIN_OUTSIDE = 8  # outside-recipe models a zoo needs before their ranking is scored


@dataclass(frozen=True)
class Suite:
    name: str
    max_zoos: int  # families evaluated on the random split (preferred first, then largest)
    n_extra_targets: int  # labels besides test_accuracy
    predictors: tuple[str, ...]
    pooled: bool = False  # also the whole snapshot as one zoo
    held_out_family: bool = False
    widths: bool = False
    hparams: bool = False
    ablation_groups: tuple[str, ...] = ()
    learning_curve: tuple[float, ...] = ()  # fractions of the training runs
    interpret: bool = False
    min_models: int = 20  # a family needs this many labelled models to be a zoo here
    zoos: tuple[str, ...] = ()  # when set, only these families get a random split (in this order)
    max_held_out: int = 3  # families held out in turn (preferred first)
    # per predictor, config overrides for this suite: ((name, ((field, value), ...)), ...)
    overrides: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    def overrides_for(self) -> dict[str, dict[str, object]]:
        return {name: dict(kv) for name, kv in self.overrides}


SUITES = {
    "small": Suite("small", 2, 2, (WEIGHTNET, "statnn-gbt", "statnn-mlp", "nfn", "flat-mlp", "calc"),
                   interpret=True),
    "standard": Suite("standard", 8, 4, (WEIGHTNET, "statnn-gbt", "statnn-mlp", "nfn", "flat-mlp", "calc"),
                      pooled=True, held_out_family=True, widths=True, hparams=True,
                      ablation_groups=("permutation", "tokenization", "inputs", "depth", "heads", "d_model", "embeddings"),
                      learning_curve=(0.25, 0.5, 1.0), interpret=True),
    "cross": Suite("cross", len(WILD_ZOOS), 0, (WEIGHTNET, "statnn-gbt", "statnn-mlp", "nfn"), held_out_family=True,
                   zoos=WILD_ZOOS, max_held_out=16),
    # issue 14's ablations (probes, weight tokens, summary, each permutation handling) on one zoo's random
    # split, beside the StatNNs on the same splits: what `standard` measures too, without its hours of
    # other experiments on a benchmark zoo (choose the zoo with --where)
    "ablations": Suite("ablations", 1, 0, (WEIGHTNET, "statnn-gbt", "statnn-mlp"),
                       ablation_groups=("inputs", "permutation")),
}


def with_predictors(suite: Suite, names: Sequence[str]) -> Suite:
    """The suite with only ``names`` of its predictors (in the suite's order), e.g. without the NFN, whose
    fits take 4-15 min each on a benchmark zoo. A name the suite does not run is refused, naming the
    ones it does; the run id changes with the choice (the suite's config is part of it)."""
    unknown = [n for n in names if n not in suite.predictors]
    if unknown:
        raise UnknownEntry(f"suite {suite.name} has no predictor {', '.join(map(repr, unknown))} "
                           f"(it runs: {', '.join(suite.predictors)})")
    if not names:
        raise ZooError(f"no predictors chosen for suite {suite.name} (it runs: {', '.join(suite.predictors)})")
    return dataclasses.replace(suite, predictors=tuple(p for p in suite.predictors if p in names))


@dataclass(frozen=True)
class EvalResult:
    run_id: str
    report_path: str
    headline: list[dict]  # rows of the headline table
    targets: list[dict] = field(default_factory=list)  # issue-14 targets: measured value and whether met
    notes: list[str] = field(default_factory=list)
    status: str = "completed"  # completed | partial (some part failed) | failed (nothing measured)
    failures: list[str] = field(default_factory=list)  # what raised: listed first in the report

    def format_headline(self) -> str:
        return report.headline_text(self.headline, self.targets)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def choose_targets(samples: Sequence[ZooSample], n_extra: int) -> tuple[str, ...]:
    """test_accuracy plus up to ``n_extra`` labels that >= 80% of the models carry (preferred ones first).

    Architecture quantities (n_params, flops) are left to the calculators: see ``calculated_targets``.
    """
    computed = computed_properties()
    counts = Counter(k for s in samples for k in s.labels if k not in computed)
    common = [k for k, c in counts.items() if c >= 0.8 * len(samples)]
    ordered = [t for t in PREFERRED_TARGETS if t in common] + sorted(t for t in common if t not in PREFERRED_TARGETS)
    return tuple([t for t in ordered if t == "test_accuracy"] + [t for t in ordered if t != "test_accuracy"][:n_extra])


def calculated_targets(samples: Sequence[ZooSample], props: Sequence[str] | None = None) -> tuple[str, ...]:
    """Of ``props`` (default: every computed property, n_params / flops), those every model carries and
    that vary (a constant has no ranking to score)."""
    return tuple(t for t in (computed_properties() if props is None else props)
                 if samples and all(t in s.labels for s in samples) and len({s.labels[t] for s in samples}) > 1)


RELIABILITY_KEYS = ("n_models", "n_test", "bootstrap_tau", "split_half_tau")


def measured_reliability(lake: Lake, samples: Sequence[ZooSample]) -> tuple[dict[str, dict], list[str]]:
    """Test-accuracy label reliability per family (``label_reliability``), read from the family's latest
    build-suite ``reliability`` row where that row measured exactly as many labelled models as the
    evaluation has of the family (a suite measures all of a family's models), measured otherwise: from the
    models' stored test-split outcomes where they have them, else by running them on the test split."""
    from labeling.reliability import TEST_CORRECT
    from labeling.suite import stored_reliability
    from storage.writes import read_outcomes

    stored = stored_reliability(lake)
    counts = Counter(s.family for s in samples if "test_accuracy" in s.labels)
    reused = {f: {k: stored[f][k] for k in RELIABILITY_KEYS} for f, n in counts.items()
              if all(k in stored.get(f, {}) for k in RELIABILITY_KEYS) and stored[f]["n_models"] == n}
    rest = [s for s in samples if s.family not in reused]
    out, notes = label_reliability(rest, stored=read_outcomes(lake, [s.model_id for s in rest], TEST_CORRECT)
                                   ) if rest else ({}, [])
    if reused:
        notes.append(f"label reliability of {', '.join(sorted(reused))}: read from the build suite's measurement "
                     "of the same number of models (zoo families --reliability), not measured again")
    return {**out, **reused}, notes


def _labelled(samples: Sequence[ZooSample], targets: Sequence[str]) -> list[ZooSample]:
    return [s for s in samples if all(t in s.labels for t in targets)]


def _random(samples: list[ZooSample], outside: Sequence[ZooSample] = ()) -> experiments.SplitFn:
    def fn(seed: int):
        tr, va, te = split_samples(samples, "random", seed)
        return tr, va, {"test": te, **({targets_mod.OUTSIDE_SET: list(outside)} if outside else {})}
    return fn


def _random_key(samples: Sequence[ZooSample]) -> str:
    """``Experiment.split_key`` of ``_random(samples, ...)``: the random split is a function of the ordered
    models and the seed, so equal keys are equal splits (the outside set adds a test set, nothing else)."""
    return "random:" + stable_hash([s.model_id for s in samples])


def _shape_key(s: ZooSample) -> tuple:
    """What a model must share with a zoo to be scored as one of its outside-recipe models."""
    cfg = s.arch_config
    return s.arch, tuple(cfg.get("input_shape") or ()), cfg.get("n_classes")


def _outside_models(zoo: Sequence[ZooSample], ingested: Sequence[ZooSample]) -> list[ZooSample]:
    """Ingested models (``ingest-*`` families: trained elsewhere, e.g. by ``zoo recipes``) with an
    architecture, input shape and class count of ``zoo``, labelled with test accuracy."""
    keys = {_shape_key(s) for s in zoo}
    return [s for s in ingested if _shape_key(s) in keys and "test_accuracy" in s.labels]


def heterogeneous_zoos(samples: Sequence[ZooSample]) -> set[str]:
    """Families whose models do not share one set of tensors (depth, residual or norm layers vary: the wild
    families); width alone varying (the width experiments' zoos) keeps a family homogeneous."""
    layouts: dict[str, set] = {}
    for s in samples:
        layouts.setdefault(s.family, set()).add(tuple(sorted(s.state)))
    return {f for f, ls in layouts.items() if len(ls) > 1}


def _zoos(samples: Sequence[ZooSample], suite: Suite) -> list[tuple[str, list[ZooSample]]]:
    fams: dict[str, list[ZooSample]] = {}
    for s in samples:
        fams.setdefault(s.family, []).append(s)
    big = {f: ss for f, ss in fams.items() if len(ss) >= suite.min_models}
    order = [f for f in PREFERRED_ZOOS if f in big] + sorted((f for f in big if f not in PREFERRED_ZOOS),
                                                             key=lambda f: -len(big[f]))
    if suite.zoos:
        order = [f for f in suite.zoos if f in big]
    zoos = [(f, big[f]) for f in order[:suite.max_zoos]]
    if not zoos or (suite.pooled and len(fams) > 1):
        zoos.append(("all", list(samples)))
    return zoos


def plan(samples: Sequence[ZooSample], suite: Suite, train_configs: dict[str, dict],
         notes: list[str], failures: list[str] | None = None) -> tuple[list[Experiment], str, tuple[str, ...]]:
    """The experiments of a suite, the primary zoo's name and its targets.

    An experiment the zoo cannot support (a ``ZooError``: too few widths, no lr recorded) is left out
    with a note; one whose planning raises anything else is a failure (appended to ``failures``,
    re-raised when that is None), so the evaluation cannot end as completed without it.
    """
    def failed(what: str, e: Exception) -> None:
        if failures is None:
            raise e
        failures.append(f"{what} failed: {type(e).__name__}: {e}")
    # models ingested from outside (files, hubs) never train or tune a predictor: they are only the
    # "outside recipes" test set of the zoos whose architecture they share
    ingested = [s for s in samples if s.family.startswith(INGESTED_PREFIX)]
    samples = [s for s in samples if not s.family.startswith(INGESTED_PREFIX)]
    zoos = _zoos(samples, suite)
    missing = [f for f in suite.zoos if f not in {z for z, _ in zoos}]
    if missing:
        notes.append(f"suite {suite.name}: no zoo of {', '.join(missing)} with >= {suite.min_models} models; "
                     "its random split was not run")
    exps: list[Experiment] = []
    primary, primary_targets = zoos[0][0], ()
    for i, (zoo, ss) in enumerate(zoos):
        targets = choose_targets(ss, suite.n_extra_targets)
        ss = _labelled(ss, targets)
        if len(ss) < 8:
            notes.append(f"zoo {zoo}: only {len(ss)} models carry {', '.join(targets)}; skipped")
            continue
        if i == 0:
            primary_targets = targets
        learned = tuple(p for p in suite.predictors if PREDICTORS.get(p).learned)
        outside = _outside_models(ss, ingested) if zoo != "all" else []
        if len(outside) < MIN_OUTSIDE:
            outside = []
        elif outside:
            notes.append(f"zoo {zoo}: {len(outside)} ingested models of its architecture scored as '{targets_mod.OUTSIDE_SET}'")
        key = _random_key(ss)
        exps.append(Experiment(f"{zoo} / random", zoo, "random", _random(ss, outside), learned, targets,
                               overrides=suite.overrides_for(), keep_fitted=(i == 0 and suite.interpret),
                               split_key=key))
        for p in suite.predictors:  # zero-shot calculators: scored on the properties they compute
            computed = calculated_targets(ss, PREDICTORS.get(p).computes)
            if computed:
                exps.append(Experiment(f"{zoo} / random", zoo, "random", _random(ss), (p,), computed,
                                       split_key=key))
    base = exps[0] if exps else None
    if base is None:
        return exps, primary, primary_targets
    fams = sorted({s.family for s in samples})
    learned = tuple(p for p in suite.predictors if PREDICTORS.get(p).learned)
    if suite.held_out_family and len(fams) > 1:
        held = [f for f in PREFERRED_ZOOS if f in fams] + [f for f in fams if f not in PREFERRED_ZOOS]
        for fam in held[:suite.max_held_out]:
            ss = _labelled(samples, ("test_accuracy",))
            try:
                splits.family_split(ss, fam, 0)
            except ZooError as e:
                notes.append(str(e))
                continue

            def fn(seed: int, fam=fam, ss=ss):
                tr, va, te = splits.family_split(ss, fam, seed)
                return tr, va, {"test": te}
            exps.append(Experiment(f"held-out family {fam}", "all", f"family:{fam}", fn, learned, ("test_accuracy",),
                                   overrides=base.overrides))
    primary_samples = _labelled([s for s in samples if primary in ("all", s.family)], primary_targets)
    if suite.widths:
        fn_targets = tuple(t for t in primary_targets if not t.startswith(NOT_FUNCTION))  # widening keeps these
        try:
            splits.width_sets(primary_samples, 0, factors=(2,))  # fail early with a clear note

            def wfn(seed: int, ss=primary_samples):
                w = splits.width_sets(ss, seed, factors=(2, 4, 8))
                tests = {"test": w.test, **{f"widened x{f}": v for f, v in w.widened.items()},
                         "wider-trained": w.wider_trained}
                return w.train, w.val, tests
            exps.append(Experiment(f"{primary} / widths", primary, "width", wfn, learned, fn_targets,
                                   overrides=base.overrides))
        except ZooError as e:
            notes.append(f"width generalization not run on {primary}: {e}")
        except Exception as e:
            failed(f"width generalization on {primary}", e)
    if suite.hparams:
        try:
            splits.hparam_split(primary_samples, train_configs, "lr", 0)

            def hfn(seed: int, ss=primary_samples):
                tr, va, te = splits.hparam_split(ss, train_configs, "lr", seed)
                return tr, va, {"test": te}
            exps.append(Experiment(f"{primary} / held-out lr range", primary, "hparam:lr", hfn, learned,
                                   primary_targets, overrides=base.overrides))
        except ZooError as e:
            notes.append(f"held-out hyperparameter split not run on {primary}: {e}")
        except Exception as e:
            failed(f"held-out hyperparameter split on {primary}", e)
    curve_predictors = tuple(p for p in (WEIGHTNET, "statnn-gbt") if p in suite.predictors)
    if suite.learning_curve and curve_predictors:
        for frac in suite.learning_curve:
            def lfn(seed: int, frac=frac, ss=primary_samples):
                tr, va, te = split_samples(ss, "random", seed)
                runs = sorted({s.run_id for s in tr})
                g = torch.Generator().manual_seed(seed)
                keep = {runs[i] for i in torch.randperm(len(runs), generator=g)[:max(2, int(frac * len(runs)))].tolist()}
                return [s for s in tr if s.run_id in keep], va, {"test": te}
            exps.append(Experiment(f"{primary} / learning curve {frac:g}", primary, f"learning-curve:{frac:g}", lfn,
                                   curve_predictors, ("test_accuracy",), overrides=base.overrides))
    if suite.ablation_groups and WEIGHTNET in suite.predictors:
        variants, why = ablations.plan(suite.ablation_groups)
        notes += why
        split, key = _random(primary_samples), _random_key(primary_samples)  # one split for every variant
        for v in variants:
            exps.append(Experiment(f"{primary} / ablation", primary, f"ablation:{v.group}",
                                   split, (WEIGHTNET,), ("test_accuracy",),
                                   overrides={WEIGHTNET: {**suite.overrides_for().get(WEIGHTNET, {}),
                                                          **v.as_dict}},
                                   labels={WEIGHTNET: f"{v.group}: {v.label}"}, split_key=key))
    return exps, primary, primary_targets


def evaluate(lake: Lake, suite: str = "small", at: str | int | None = None, out_dir: str | pathlib.Path = "reports",
             seeds: Sequence[int] = (0, 1, 2), progress: Callable[[int, int], None] | None = None,
             where: str | None = None, device: str = "cpu", threads: int | None = 1, workers: int = 1,
             predictors: Sequence[str] | None = None) -> EvalResult:
    """Run a suite on the zoo at snapshot/tag ``at`` (default latest), write reports/<run>/report.md
    with its plots, and record a ``runs`` row (kind=evaluate).

    The run ends ``completed`` only when every predictor fit and predicted and every planned experiment
    ran; otherwise ``partial`` (something was measured; the failures open the report) or ``failed``
    (nothing was). An exception outside the experiments marks the run ``failed`` and propagates.

    ``threads``: torch intra-op threads while fitting (restored afterwards; None leaves it alone). The
    predictors are small, so one thread is fastest on CPU: WeightNet fitted 5x faster on 1 thread than on
    2 on the shared development machine (8.6 s vs 46 s, measured under load).

    ``workers``: fit the (experiment, seed) units in that many forked processes, one thread each
    (``evaluation.parallel``); the scores and the report are the serial run's. Not part of the run id.

    ``predictors``: run only these of the suite's predictors (``with_predictors``); None runs them all.
    """
    if suite not in SUITES:
        raise UnknownEntry(f"unknown evaluation suite {suite!r} (known: {', '.join(SUITES)})")
    if workers < 1:
        raise ZooError(f"workers must be >= 1, got {workers}")
    if workers > 1 and threads not in (None, 1):
        raise ZooError(f"--workers {workers} fits on one thread per worker; --threads {threads} cannot apply "
                       "(use --threads 1, or --workers 1 with more threads)")
    cfg = SUITES[suite] if predictors is None else with_predictors(SUITES[suite], predictors)
    snapshot = lake.pin(at)
    with lake.viewing(snapshot, True):
        props = [r[0] for r in lake.fetch("SELECT DISTINCT property FROM lake.main.labels ORDER BY 1")]
        samples = load_samples(lake, where, targets=props, require_all=False)
        train_configs = {r.model_id: r.train_config for r in read_models(lake, where)}
    config = {"suite": dataclasses.asdict(cfg), "at": at, "snapshot_id": snapshot, "where": where,
              "seeds": list(seeds), "device": device, "threads": threads}
    run_id = "eval-" + stable_hash({**config, "code_version": code_version()}, 12)
    run = Run(run_id, "evaluate", config, snapshot, dt.datetime.now(dt.timezone.utc))
    with lake.viewing(None, False):
        start_run(lake, run)
    notes: list[str] = []
    failures: list[str] = []
    try:
        exps, primary, _ = plan(samples, cfg, train_configs, notes, failures)
        with _threads(threads):
            outcome = experiments.run(exps, list(seeds), device, progress, workers=workers)
        notes += outcome.notes
        failures += outcome.failures
        rows = experiments.summarize(outcome.scores)
        sens, attn = {}, {}
        if cfg.interpret:
            for (exp_name, label), (pred, test) in outcome.fitted.items():
                if label in (WEIGHTNET, "statnn-gbt", "nfn") and test:
                    try:
                        sens[label] = interpret.sensitivity(pred, test)
                        a = interpret.attention(pred, test)
                        if a is not None:
                            attn[label] = a
                    except Exception as e:
                        failures.append(f"sensitivity of {label} failed: {type(e).__name__}: {e}")
        try:
            reliability, rel_notes = measured_reliability(lake, samples)
            notes += rel_notes
        except Exception as e:  # a diagnostic: the report goes out without it, as a partial evaluation
            reliability = {}
            failures.append(f"label reliability failed: {type(e).__name__}: {e}")
        targets = targets_mod.check_targets(rows, reliability, heterogeneous_zoos(samples))
        headline = report.headline_rows(rows, primary)
        out = pathlib.Path(out_dir) / run_id
        status = "completed" if not failures else ("partial" if rows else "failed")
        path = report.write(out, run_id, config, rows, outcome.scatter, sens, attn, targets, headline, notes, samples,
                            reliability, failures=failures, status=status)
    except BaseException as e:
        with lake.viewing(None, False):
            finish_run(lake, run, e)
        raise
    run.status = status
    run.metrics = {"headline": [{k: v for k, v in r.items()} for r in headline], "targets": targets,
                   "report": str(path), "failures": failures}
    with lake.viewing(None, False):
        finish_run(lake, run)
    return EvalResult(run_id, str(path), headline, targets, notes, status, failures)
