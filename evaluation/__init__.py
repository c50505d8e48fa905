"""Evaluation of WeightNet against the baselines: metrics, splits, widening, ablations, interpretability
and the report. Entry point: ``evaluation.run.evaluate`` (also reachable as ``evaluation.evaluate``)."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # lazy: importing metrics alone must not pull in the whole suite
    if name in ("evaluate", "EvalResult", "SUITES"):
        from evaluation import run

        return getattr(run, name)
    raise AttributeError(name)
