"""Baseline (2): StatNN (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights").

Per layer in spec order: mean, variance and the 0/25/50/75/100% quantiles of its weights and of its
biases; the features go to an MLP (``statnn-mlp``) or to gradient boosting (``statnn-gbt``, the
paper's strongest variant).
"""
from __future__ import annotations

from evaluation.registry import predictor
from evaluation.baselines.features import FeatureModelConfig, FeaturePredictor, statnn_vector


@predictor("statnn-mlp")
def statnn_mlp(device: str = "cpu", **overrides) -> FeaturePredictor:
    return FeaturePredictor("statnn-mlp", statnn_vector, FeatureModelConfig(model="mlp", **overrides), device)


@predictor("statnn-gbt")
def statnn_gbt(device: str = "cpu", **overrides) -> FeaturePredictor:
    return FeaturePredictor("statnn-gbt", statnn_vector, FeatureModelConfig(model="gbt", **overrides), device)
