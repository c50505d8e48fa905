"""Train WeightNet on a zoo snapshot and record the run (kind=weightnet) in the lake."""
from __future__ import annotations

import datetime as dt
import pathlib
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from core import settings
from core.errors import ZooError
from core.hashing import stable_hash
from storage.lake import Lake
from storage.runs import Run, finish_run, start_run
from weightnet.config import WeightNetConfig
from storage.samples import ZooSample, load_samples
from weightnet.data import DatasetConfig, split_samples
from weightnet.metrics import score
from weightnet.model import WeightNetPredictor

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    metrics: dict
    snapshot_id: int
    checkpoint: str


def default_runs_dir() -> pathlib.Path:
    return settings.runs_root()


def regression_metrics(pred: WeightNetPredictor, samples: Sequence[ZooSample]) -> dict:
    """Per target: weightnet.metrics.score (mae, rmse, r2, spearman, kendall tau, interval coverage)
    and the mean interval width on ``samples``."""
    if not samples:
        return {}
    out = {}
    alpha = pred.config.alpha
    values, intervals = pred.predict_with_intervals(samples, alpha)  # one ensemble pass for both
    for t, p in values.items():
        half = pred.interval_width(t, alpha)
        lo, hi = intervals[t]
        y = np.array([s.labels.get(t, np.nan) for s in samples], dtype=np.float64)
        ok = np.isfinite(y)
        if not ok.any():
            continue
        out[t] = {**score(y[ok], p[ok], (lo[ok], hi[ok])), "n": int(ok.sum()),
                  "interval_width": float(np.mean(hi[ok] - lo[ok])) if np.isfinite(half) else float("inf")}
    return out


def train_weightnet(lake: Lake, dataset: DatasetConfig, config: WeightNetConfig | None = None, device: str = "cpu",
                    progress: Progress | None = None, runs_dir: str | pathlib.Path | None = None) -> TrainResult:
    """Resolve the snapshot, load samples there, split, train, evaluate on the test split, save the
    checkpoint under ``runs_dir/weightnet/<run_id>/`` and upsert a ``runs`` row (needs a writable lake)."""
    config = config or WeightNetConfig()
    if not dataset.targets:
        raise ZooError("no target properties given (e.g. --targets test_accuracy,gen_gap_accuracy)")
    snapshot = lake.pin(dataset.at)
    run_id = "wn-" + stable_hash({"dataset": dataset, "config": config, "snapshot": snapshot,
                                  "lake": lake.config.display}, 12)
    run_config = {"dataset": asdict(dataset), "weightnet": config.to_dict(), "device": device}
    run = Run(run_id, "weightnet", run_config, snapshot, dt.datetime.now(dt.timezone.utc))
    can_write = not lake.read_only  # a read-only handle trains and saves the checkpoint without a runs row
    if can_write:
        start_run(lake, run)
    try:
        with lake.viewing(snapshot) as snap:
            samples = load_samples(snap, dataset.where, dataset.targets)
        if len(samples) < 3:
            raise ZooError(f"only {len(samples)} models at snapshot {snapshot} have all of {', '.join(dataset.targets)}"
                           f"{' and match ' + repr(dataset.where) if dataset.where else ''}: label the zoo first")
        train, val, test = split_samples(samples, dataset.split, dataset.seed, dataset.val_fraction, dataset.test_fraction)
        if not train:
            raise ZooError(f"split {dataset.split!r} leaves no training models")
        predictor = WeightNetPredictor(config, device)
        predictor.prepare(train)
        predictor.pipeline.many(samples, snapshot=snapshot, lake_name=lake.config.display)
        predictor.fit(train, val, dataset.targets, seed=config.seed, progress=progress)
        out = pathlib.Path(runs_dir or default_runs_dir()) / "weightnet" / run_id
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = str((out / "checkpoint.pt").absolute())
        predictor.save(checkpoint)
        hist = predictor.history
        metrics = {"n_train": len(train), "n_val": len(val), "n_test": len(test), "epochs": len(hist),
                   "best_val_loss": min(h["val_loss"] for h in hist),
                   "val_mean_baseline_loss": predictor.mean_baseline_loss(val) if val else None,
                   "test": regression_metrics(predictor, test), "checkpoint": checkpoint}
    except BaseException as e:
        if can_write:
            finish_run(lake, run, e)
        raise
    run.config, run.metrics = {**run_config, "checkpoint": checkpoint}, metrics
    if can_write:
        finish_run(lake, run)
    return TrainResult(run_id, metrics, snapshot, checkpoint)
