"""Baseline (1): an MLP on the globally flattened weights (zero-padded to the longest model)."""
from __future__ import annotations

from evaluation.registry import predictor
from evaluation.baselines.features import FeatureModelConfig, FeaturePredictor, flat_vector


@predictor("flat-mlp")
def flat_mlp(device: str = "cpu", **overrides) -> FeaturePredictor:
    cfg = FeatureModelConfig(**{"model": "mlp", "hidden": 128, "dropout": 0.0, "lr": 3e-3, "per_column": False, **overrides})
    return FeaturePredictor("flat-mlp", flat_vector, cfg, device)
