"""Architecture registry (timm style). Every entry builds a module AND its weight-space spec.

    @ARCHS.register("mlp")
    def mlp(config: dict) -> Built: ...

``config`` always holds ``input_shape`` (one example) and ``n_classes`` besides the architecture's
own knobs, so ``build(arch, config)`` alone rebuilds any stored model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from core.registry import Registry
from core.spec import WeightSpec

ARCHS: Registry = Registry("architecture")


@dataclass(frozen=True)
class Built:
    module: torch.nn.Module
    spec: WeightSpec


def build(arch: str, config: Mapping) -> Built:
    return ARCHS.get(arch)(dict(config))


from zoo.archs import basic  # noqa: E402,F401  (fills the registry)
