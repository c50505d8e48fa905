"""Population forwards of the 1-D architectures (zoo.archs.conv1d), registered into
``zoo.population.POPULATIONS``: G members of one ``cnn1d`` config train as one grouped-conv1d network.

``wildcnn1d`` (members of different shapes, BatchNorm) has its padded population in zoo.population_wild,
which ``zoo build`` leaves off by default: it measured slower than the plain loop on CPU.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from zoo.population import POPULATIONS, Population
from zoo.population_archs import _ACT, _linear


def grouped_conv1d(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Every member's conv1d at once: h (G, B, Ci, L), w (G, Co, Ci, k), bias (G, Co) -> (G, B, Co, L')."""
    g, b, ci, length = h.shape
    co, k = w.shape[1], w.shape[3]
    xin = h.transpose(0, 1).reshape(b, g * ci, length)  # member m reads channels [m*Ci, (m+1)*Ci)
    y = F.conv1d(xin, w.reshape(g * co, ci, k), bias.reshape(-1), stride=stride, padding=padding, groups=g)
    return y.view(b, g, co, y.shape[-1]).transpose(0, 1)


@POPULATIONS.register("cnn1d")
def _cnn1d(pop: Population, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    act = _ACT[pop.arch_config.get("activation", "relu")]
    kernel = int(pop.arch_config.get("kernel_size", 5))
    h = x  # (G, B, C, L)
    for i in range(int(pop.arch_config.get("n_layers", 3))):
        h = pop.drop(act(grouped_conv1d(h, p[f"convs.{i}.weight"], p[f"convs.{i}.bias"], 2, kernel // 2)), train)
    return _linear(h.mean(dim=3), p["head.weight"], p["head.bias"])
