"""Predict properties for stored models with a trained WeightNet run; write them to ``predictions``."""
from __future__ import annotations

import json
import pathlib
from typing import Callable

from core.errors import ZooError
from storage.lake import Lake
from storage.writes import Prediction, read_models, read_weights, write_predictions
from weightnet.data import ZooSample
from weightnet.model import WeightNetPredictor


def run_checkpoint(lake: Lake, run_id: str, runs_dir: str | pathlib.Path | None = None) -> str:
    """The checkpoint path of a completed weightnet run (``runs_dir`` overrides the recorded folder)."""
    row = lake.fetch("SELECT kind, status, config FROM lake.main.runs WHERE run_id = ?", [run_id])
    if not row:
        raise ZooError(f"unknown WeightNet run {run_id!r} (see: zoo sql \"SELECT run_id FROM runs WHERE kind='weightnet'\")")
    kind, status, config = row[0]
    if kind != "weightnet":
        raise ZooError(f"run {run_id!r} is a {kind} run, not a weightnet run")
    if status != "completed":
        raise ZooError(f"WeightNet run {run_id!r} is {status}, not completed")
    path = json.loads(config).get("checkpoint")
    if runs_dir is not None:
        path = str(pathlib.Path(runs_dir) / "weightnet" / run_id / "checkpoint.pt")
    if not path or not pathlib.Path(path).is_file():
        raise ZooError(f"checkpoint of run {run_id!r} not found at {path}")
    return path


def predict_zoo(lake: Lake, run_id: str, where: str | None = None, device: str = "cpu",
                runs_dir: str | pathlib.Path | None = None, batch: int = 256,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Predict every target (value and conformal interval) for the models matching ``where``; returns
    the number of rows written (one snapshot). Unknown architectures still get predictions."""
    predictor = WeightNetPredictor.load(run_checkpoint(lake, run_id, runs_dir), device)
    records = read_models(lake, where)
    preds: list[Prediction] = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        weights = read_weights(lake, [r.model_id for r in chunk])
        samples = [ZooSample(r.model_id, r.run_id or r.model_id, r.family, r.arch, r.arch_config, r.spec,
                             weights[r.model_id]) for r in chunk]
        pred, intervals = predictor.predict_with_intervals(samples)
        for prop, values in pred.items():
            finite = predictor.interval_width(prop, predictor.config.alpha) < float("inf")  # else: no calibration
            for s, v, lo, hi in zip(samples, values.tolist(), *(x.tolist() for x in intervals[prop])):
                preds.append(Prediction(s.model_id, prop, v, lo if finite else None, hi if finite else None, run_id))
        if progress is not None:
            progress(min(i + batch, len(records)), len(records))
    return write_predictions(lake, preds, f"weightnet predictions of run {run_id}", {"run_id": run_id})
