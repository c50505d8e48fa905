"""The predictor registry: WeightNet and every baseline, one entry each, so evaluation builds, schedules
and skips them alike (same samples, same splits, same metrics).

    PREDICTORS.get("statnn-gbt").make(device="cpu", gbt_iter=20) -> weightnet.predictor.Predictor

Import ``PREDICTORS`` from ``evaluation.predictors``: that module fills it (WeightNet there, the
baselines in ``evaluation.baselines``). This module only defines the axis, so entries can register
without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from core.registry import Registry
from weightnet.data import ZooSample
from weightnet.predictor import Predictor


def runs_anywhere(samples: Sequence[ZooSample]) -> str:
    return ""


@dataclass(frozen=True)
class PredictorEntry:
    make: Callable[..., Predictor]  # (device="cpu", **config overrides) -> an unfitted predictor
    # properties computed exactly from the architecture alone (zero-shot: nothing is learned, the fit is a
    # no-op); empty for a learned predictor, which predicts any label
    computes: tuple[str, ...] = ()
    # samples of one zoo -> '' when the predictor can read them, else why it is skipped (reported, never faked)
    skip: Callable[[Sequence[ZooSample]], str] = runs_anywhere

    @property
    def learned(self) -> bool:
        return not self.computes


PREDICTORS: Registry[PredictorEntry] = Registry("predictor")


def predictor(name: str, computes: tuple[str, ...] = (),
              skip: Callable[[Sequence[ZooSample]], str] = runs_anywhere) -> Callable:
    """Decorator: register the factory ``(device, **overrides) -> Predictor`` as predictor ``name``."""
    def deco(make: Callable[..., Predictor]) -> Callable[..., Predictor]:
        PREDICTORS.register(name)(PredictorEntry(make, computes, skip))
        return make

    return deco
