"""WeightNet vs StatNN vs NFN on one zoo, side by side on identical splits: Kendall tau per target.

    .venv/bin/python bench/weightnet_quality.py --lake /tmp/q-lake [--seeds 0,1,2] [--only weightnet,statnn-gbt]
        [--variant NAME=JSON ...]   # extra WeightNet variants: JSON overrides of WeightNetConfig
        [--split family:digits-cnn]  # a held-out family / architecture / width instead of a random split
        [--views]                     # WeightNet: also score the test models read in full, from probes alone, and the mean
        [--threads 1]                 # torch threads; run two benches side by side to use two cores

Build the zoo first (zoo build --family digits-cnn --n 60; zoo label -p performance). Prints mean +- std
over the split seeds and each fit's wall time (measured on whatever load the machine has; compare the
predictors within one run, not across runs). ``--quick`` (seconds, run by the tests) builds and labels a
12-member digits-mlp zoo in a temporary folder (left for inspection; print says where) and fits WeightNet
(2 epochs) and StatNN-GBT on one seed: its figures only show that the bench runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from evaluation.predictors import PREDICTORS  # noqa: E402
from evaluation.widen import widen  # noqa: E402
from storage.lake import Lake  # noqa: E402
from weightnet.config import WeightNetConfig  # noqa: E402
from weightnet.conformal import clip_to_bounds  # noqa: E402
from storage.samples import load_samples  # noqa: E402
from weightnet.data import split_samples  # noqa: E402
from weightnet.model import WeightNetPredictor  # noqa: E402


def r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - np.mean((y - p) ** 2) / np.var(y)) if np.var(y) > 0 else float("nan")


def weightnet_variant(overrides: dict):
    cfg = WeightNetConfig.from_dict({**WeightNetConfig().to_dict(), **overrides})
    return lambda: WeightNetPredictor(cfg)


def readings(pred: WeightNetPredictor, test: list, target: str) -> dict[str, np.ndarray]:
    """One fit's predictions of ``target`` for the test models read three ways, whatever their architecture:
    in full, from their probe tokens alone, and the mean of the two (``predict`` picks full or probes by
    ``unseen_view``; this shows what each choice would give on the same fit)."""
    toks, handles, j = pred.pipeline.many(test), pred.runner.handles(test), pred.targets.index(target)
    out = {view: pred._predict_tokens(toks, handles, probe_only=torch.full((len(test),), view == "probes"))[:, j]
           .numpy().astype(np.float64) for view in ("full", "probes")}
    out["mean"] = (out["full"] + out["probes"]) / 2
    return {view: clip_to_bounds(target, p) for view, p in out.items()}


def quick_lake(folder: str) -> str:
    """A tiny labelled zoo: 12 digits-mlp members at epochs 1 and 2 (24 models), test accuracy labelled."""
    from labeling.run import label_zoo
    from zoo.build import build_zoo

    with Lake.open(folder, create=True) as lk:
        build_zoo(lk, "digits-mlp", 12, 0, (1, 2))
        label_zoo(lk, ["performance"])
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", default=None, help="a labelled lake (required unless --quick)")
    ap.add_argument("--quick", action="store_true", help="a tiny temporary zoo (seconds): checks that the bench runs")
    ap.add_argument("--target", default="test_accuracy")
    ap.add_argument("--where", default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--split", default="random", help="random | family:NAME | arch:NAME | width:MAX")
    ap.add_argument("--only", default="weightnet,statnn-gbt,statnn-mlp,nfn")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON WeightNetConfig overrides")
    ap.add_argument("--views", action="store_true",
                    help="WeightNet: also score the test models read in full, from probes alone, and the mean of both")
    ap.add_argument("--widen", default="", help="also score the test models widened by these factors (e.g. 2,4)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as zoo evaluate: a fit gains ~5%% from a second thread, "
                         "so two benches side by side use two cores better)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.lake = quick_lake(tempfile.mkdtemp(prefix="wn-quality-") + "/lake")
        args.seeds, args.only, args.views = "0", "statnn-gbt", True
        args.variant = args.variant or ['weightnet-2ep={"epochs": 2}']  # WeightNet, trained briefly
    elif args.lake is None:
        ap.error("--lake is required (or --quick)")
    lake = Lake.open(args.lake, read_only=True)
    samples = load_samples(lake, args.where, [args.target])
    makers = {}
    for name in filter(None, args.only.split(",")):
        makers[name] = lambda n=name: PREDICTORS.get(n).make()
    for v in args.variant:
        name, js = v.split("=", 1)
        makers[name] = weightnet_variant(json.loads(js))
    seeds = [int(s) for s in args.seeds.split(",")]
    factors = [int(f) for f in args.widen.split(",") if f]
    print(f"{len(samples)} models in {args.lake}; target {args.target}; split {args.split}; seeds {seeds}")
    for name, make in makers.items():
        taus, secs, covs, r2s = [], [], [], []
        wide: dict[int, list[tuple[float, float]]] = {f: [] for f in factors}  # factor -> (tau, r2) per seed
        views: dict[str, list[tuple[float, float]]] = {}  # reading -> (tau, r2) per seed
        for seed in seeds:
            train, val, test = split_samples(samples, args.split, seed)
            pred = make()
            t0 = time.perf_counter()
            pred.fit(train, val, [args.target], seed=seed)
            secs.append(time.perf_counter() - t0)
            p = pred.predict(test)[args.target]
            y = np.array([s.labels[args.target] for s in test])
            taus.append(float(kendalltau(p, y).statistic))
            r2s.append(r2(y, p))
            for f in factors:  # function-preserving widening: the labels are unchanged
                pw = pred.predict([widen(s, f) for s in test])[args.target]
                wide[f].append((float(kendalltau(pw, y).statistic), r2(y, pw)))
            if args.views and isinstance(pred, WeightNetPredictor):
                read = readings(pred, test, args.target)
                pick = pred._views(test)  # what predict did: each model read by its architecture's view
                chosen = np.where(pick.numpy(), read["probes"], read["full"]) if pick is not None else read["full"]
                assert np.allclose(p, chosen, atol=1e-5), "predict differs from the reading its view rule picks"
                for view, pv in read.items():
                    views.setdefault(view, []).append((float(kendalltau(pv, y).statistic), r2(y, pv)))
            print(f"  {name} seed {seed}: tau {taus[-1]:.3f} r2 {r2s[-1]:.3f} fit {secs[-1]:.0f}s"
                  + "".join(f" x{f}: tau {wide[f][-1][0]:.3f} r2 {wide[f][-1][1]:.3f}" for f in factors)
                  + "".join(f" {v}: tau {vals[-1][0]:.3f} r2 {vals[-1][1]:.3f}" for v, vals in views.items()), flush=True)
            if hasattr(pred, "predict_interval"):  # split-conformal 90% intervals: share of test models covered
                lo, hi = pred.predict_interval(test, alpha=0.1)[args.target]
                covs.append(float(np.mean((y >= lo) & (y <= hi))))
        cov = f"  90% coverage {np.mean(covs):.3f}" if covs else ""
        print(f"{name:28s} tau {np.mean(taus):.3f} +- {np.std(taus):.3f}  per seed {['%.3f' % t for t in taus]}"
              f"  fit {np.mean(secs):.1f}s{cov}  n_test {len(test)}  r2 {np.mean(r2s):.3f}", flush=True)
        for f, vals in wide.items():
            print(f"{'':28s} widened x{f}: tau {np.mean([v[0] for v in vals]):.3f}  r2 {np.mean([v[1] for v in vals]):.3f}",
                  flush=True)
        for view, vals in views.items():
            print(f"{'':28s} read {view}: tau {np.mean([v[0] for v in vals]):.3f} +- {np.std([v[0] for v in vals]):.3f}"
                  f"  r2 {np.mean([v[1] for v in vals]):.3f}", flush=True)


if __name__ == "__main__":
    main()
