"""Baseline (4): zero-shot architecture calculators. ``n_params`` comes from the spec (trainable
entries), ``flops`` from one forward pass of the rebuilt architecture on a single example under
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add, as that counter defines it)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.errors import ZooError
from core.flops import count_flops, example_input
from evaluation.registry import predictor
from weightnet.data import ZooSample

CALCULATED = ("n_params", "flops")


def n_params(s: ZooSample) -> float:
    return float(s.spec.n_params)


def flops(s: ZooSample) -> float:
    """FLOPs of one forward pass on one example, from the architecture and its config alone."""
    from zoo.archs import build

    cfg = s.arch_config
    if "input_shape" not in cfg:
        raise ZooError(f"model {s.model_id}: arch_config has no input_shape, cannot count FLOPs")
    module = build(s.arch, cfg).module.eval()
    return float(count_flops(module, example_input(cfg)))


class Calculator:
    """Predicts only the properties it can compute; ``fit`` is a no-op (zero-shot)."""

    name = "calc"

    def __init__(self) -> None:
        self.targets: tuple[str, ...] = ()
        self._cache: dict[tuple[str, str], float] = {}

    def fit(self, train: Sequence[ZooSample], val: Sequence[ZooSample], targets: Sequence[str], seed: int) -> None:
        self.targets = tuple(t for t in targets if t in CALCULATED)

    def _value(self, prop: str, s: ZooSample) -> float:
        key = (prop, s.model_id)
        if key not in self._cache:
            self._cache[key] = n_params(s) if prop == "n_params" else flops(s)
        return self._cache[key]

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:
        return {t: np.array([self._value(t, s) for s in samples], dtype=np.float64) for t in self.targets}

    def predict_interval(self, samples: Sequence[ZooSample], alpha: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Exact calculations: the interval is the point (coverage is 1 when the labeler agrees)."""
        return {t: (v, v.copy()) for t, v in self.predict(samples).items()}


@predictor("calc", computes=CALCULATED)
def calc(device: str = "cpu", **overrides) -> Calculator:
    if overrides:
        raise ZooError(f"the calculator baseline takes no options (got {', '.join(overrides)})")
    return Calculator()
