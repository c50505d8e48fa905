"""1-D convolutional families for sequences (N, C, L) such as MNIST-1D.

- ``cnn1d``: the Small CNN Zoo shape in 1-D: ``n_layers`` conv1d blocks (kernel ``kernel_size``,
  stride 2, padding k // 2) of ``channels`` channels, one activation, global average pooling over
  the sequence, a linear head. Spec groups ``c{i}``: output channels of conv layer ``i``.
- ``wildcnn1d``: heterogeneous 1-D CNNs (the keys of ``zoo.sampling.sample_wildcnn1d``): per layer a
  channel count, kernel size and stride; one activation; optional residual connections (only where a
  layer keeps channels and length: stride 1, equal channels) and normalization. Spec groups as for
  ``wildcnn``: ``c{i}``, with a residual chain sharing the group of its first layer.
"""
from __future__ import annotations

import torch
from torch import nn

from core.errors import UnknownEntry
from core.spec import spec_from_module
from zoo.archs import ARCHS, Built
from zoo.archs.basic import activation
from zoo.archs.wild import chain_annotations

NORMS = ("none", "batch", "layer")


class SmallCNN1d(nn.Module):
    def __init__(self, in_channels: int, channels: int, n_layers: int, kernel: int, n_classes: int, act: str,
                 dropout: float):
        super().__init__()
        chans = [in_channels] + [channels] * n_layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, stride=2, padding=kernel // 2)
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Linear(chans[-1], n_classes)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.drop(self.act(conv(x)))  # (N, C, L) -> (N, C', ~L/2)
        return self.head(x.mean(dim=2))


@ARCHS.register("cnn1d")
def cnn1d(config: dict) -> Built:
    channels, n_layers = int(config.get("channels", 16)), int(config.get("n_layers", 3))
    kernel = int(config.get("kernel_size", 5))
    if kernel < 1 or kernel % 2 == 0:
        raise UnknownEntry(f"cnn1d: kernel_size must be odd and positive (got {kernel})")
    m = SmallCNN1d(int(config["input_shape"][0]), channels, n_layers, kernel, int(config["n_classes"]),
                   config.get("activation", "relu"), float(config.get("dropout", 0.0)))
    ann: dict = {}
    prev = None
    for i in range(n_layers):
        ann[f"convs.{i}.weight"] = ("conv", i, (f"c{i}", prev, None), ())
        ann[f"convs.{i}.bias"] = ("conv", i, (f"c{i}",), ())
        prev = f"c{i}"
    ann["head.weight"] = ("linear", n_layers, (None, prev), ())
    ann["head.bias"] = ("linear", n_layers, (None,), ())
    return Built(m, spec_from_module(m, ann))


def _norm1d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, L) with a per-channel affine: channel-equivariant
    if kind == "none":
        return nn.Identity()
    raise UnknownEntry(f"unknown wildcnn1d norm {kind!r} (known: {', '.join(NORMS)})")


class WildCNN1d(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], kernels: list[int], strides: list[int], n_classes: int,
                 act: str, residual: bool, norm: str, dropout: float):
        super().__init__()
        chans = [in_channels] + list(channels)
        self.convs = nn.ModuleList(nn.Conv1d(a, b, k, stride=s, padding=k // 2)
                                   for a, b, k, s in zip(chans[:-1], chans[1:], kernels, strides))
        self.norms = nn.ModuleList(_norm1d(norm, c) for c in channels)
        # a skip only where shapes match (same channels, stride 1); the first layer reads the input
        self.skips = [bool(residual) and i > 0 and chans[i] == chans[i + 1] and strides[i] == 1
                      for i in range(len(channels))]
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(chans[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, skip in zip(self.convs, self.norms, self.skips):
            h = self.drop(self.act(norm(conv(x))))  # (N, C_i, L_i)
            x = x + h if skip else h
        return self.head(x.mean(dim=2))


@ARCHS.register("wildcnn1d")
def wildcnn1d(config: dict) -> Built:
    channels = [int(c) for c in config.get("channels", [8, 8, 16])]
    kernels = [int(k) for k in config.get("kernel_sizes", [3] * len(channels))]
    strides = [int(s) for s in config.get("strides", [1] * len(channels))]
    if not len(kernels) == len(strides) == len(channels):
        raise UnknownEntry(f"wildcnn1d: {len(kernels)} kernel sizes and {len(strides)} strides for "
                           f"{len(channels)} layers")
    norm = config.get("norm", "none")
    m = WildCNN1d(int(config["input_shape"][0]), channels, kernels, strides, int(config["n_classes"]),
                  config.get("activation", "relu"), bool(config.get("residual", False)), norm,
                  float(config.get("dropout", 0.0)))
    return Built(m, spec_from_module(m, chain_annotations(m.skips, norm, kernel_dims=1)))
