"""Baseline property predictors, each behind ``weightnet.predictor.Predictor`` so evaluation treats
WeightNet and the baselines alike (same samples, same splits, same metrics).

    BASELINES.get("statnn-gbt")(seed=0) -> Predictor

Entries: ``flat-mlp`` (MLP on globally flattened weights), ``statnn-mlp`` / ``statnn-gbt``
(Unterthiner et al. 2020 per-layer statistics), ``nfn`` (permutation-equivariant NP layers after
Zhou et al. 2023), ``calc`` (zero-shot architecture calculators for n_params and flops).
"""
from __future__ import annotations

from core.registry import Registry

BASELINES: Registry = Registry("baseline")

from evaluation.baselines import calculators, flat, nfn, statnn  # noqa: E402,F401  (fill the registry)
