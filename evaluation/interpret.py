"""Interpretability: which layers a predictor relies on.

Sensitivity: zero (or add noise to) one layer of every test model at a time and measure the mean
absolute change of each prediction, in units of that property's spread over the test set. Layers are
keyed ``<kind>@<depth>`` so zoos with different architectures aggregate by layer kind and depth.
Attention: when the predictor exposes ``attention_by_layer(samples) -> {key: weight}``, it is reported
beside the sensitivities (WeightNet's attention mass per layer kind and depth).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from weightnet.data import ZooSample


def layer_keys(s: ZooSample) -> dict[str, list[str]]:
    """``kind@depth`` -> tensor names of that layer (trainable tensors only)."""
    out: dict[str, list[str]] = {}
    for p in s.spec.params:
        if p.role != "buffer":
            out.setdefault(f"{p.kind}@{p.layer}", []).append(p.name)
    return out


def _perturbed(s: ZooSample, names: Sequence[str], mode: str, gen: torch.Generator, key: str) -> ZooSample:
    state = dict(s.state)
    for n in names:
        t = state[n]
        if mode == "zero":
            state[n] = torch.zeros_like(t)
        else:  # noise of 10% of the tensor's own std: a small, scale-aware perturbation
            state[n] = t + 0.1 * t.float().std().nan_to_num(0.0) * torch.randn(t.shape, generator=gen).to(t.dtype)
    # a new id: predictors may cache per model id (WeightNet's token cache does)
    return ZooSample(f"{s.model_id}~{mode}:{key}", s.run_id, s.family, s.arch, s.arch_config, s.spec, state, s.labels)


def sensitivity(predictor, samples: Sequence[ZooSample], mode: str = "zero",
                seed: int = 0) -> dict[str, dict[str, float]]:
    """property -> {layer key -> mean |prediction change| / std of the predictions}."""
    gen = torch.Generator().manual_seed(seed)
    base = predictor.predict(samples)
    keys = sorted({k for s in samples for k in layer_keys(s)}, key=lambda k: (int(k.split("@")[1]), k))
    out: dict[str, dict[str, float]] = {t: {} for t in base}
    for key in keys:
        idx = [i for i, s in enumerate(samples) if key in layer_keys(s)]
        if not idx:
            continue
        pert = [_perturbed(samples[i], layer_keys(samples[i])[key], mode, gen, key) for i in idx]
        pred = predictor.predict(pert)
        for t, p in pred.items():
            spread = float(np.std(base[t])) or 1.0
            out[t][key] = float(np.mean(np.abs(p - base[t][idx]))) / spread
    return out


def attention(predictor, samples: Sequence[ZooSample]) -> dict[str, float] | None:
    """Attention mass per ``kind@depth`` when the predictor exposes it, else None."""
    fn = getattr(predictor, "attention_by_layer", None)
    return fn(samples) if callable(fn) else None
