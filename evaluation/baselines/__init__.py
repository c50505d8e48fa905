"""Baseline property predictors, each behind ``weightnet.predictor.Predictor`` and registered in
``evaluation.predictors.PREDICTORS`` beside WeightNet, so evaluation treats them alike.

Entries: ``flat-mlp`` (MLP on globally flattened weights), ``statnn-mlp`` / ``statnn-gbt``
(Unterthiner et al. 2020 per-layer statistics), ``nfn`` (permutation-equivariant NP layers after
Zhou et al. 2023), ``calc`` (zero-shot architecture calculators for n_params and flops).
"""
from __future__ import annotations

from evaluation.baselines import calculators, flat, nfn, statnn  # noqa: F401  (fill the registry)
