"""``wildcnn``: heterogeneous CNNs (2-6 conv layers, 4-64 channels, kernels 3/5/7, any activation,
optional residual connections and normalization). Config keys are those of ``zoo.sampling.sample_wildcnn``."""
from __future__ import annotations

import torch
from torch import nn

from core.errors import UnknownEntry
from core.spec import spec_from_module
from zoo.archs import ARCHS, Built
from zoo.archs.basic import activation

NORMS = ("none", "batch", "layer")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W), per-channel affine: channel-equivariant
    if kind == "none":
        return nn.Identity()
    raise UnknownEntry(f"unknown wildcnn norm {kind!r} (known: {', '.join(NORMS)})")


class WildCNN(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], kernels: list[int], n_classes: int, act: str,
                 residual: bool, norm: str, dropout: float):
        super().__init__()
        chans = [in_channels] + list(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, k, padding=k // 2) for a, b, k in zip(chans[:-1], chans[1:], kernels))
        self.norms = nn.ModuleList(_norm(norm, c) for c in channels)
        # a skip only where shapes match; the first layer reads the image, never skipped
        self.skips = [bool(residual) and i > 0 and chans[i] == chans[i + 1] for i in range(len(channels))]
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(chans[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, skip in zip(self.convs, self.norms, self.skips):
            h = self.drop(self.act(norm(conv(x))))  # (N, C_i, H, W): 'same' padding, stride 1
            x = x + h if skip else h
        return self.head(x.mean(dim=(2, 3)))


@ARCHS.register("wildcnn")
def wildcnn(config: dict) -> Built:
    channels = [int(c) for c in config.get("channels", [8, 8, 16])]
    kernels = [int(k) for k in config.get("kernel_sizes", [3] * len(channels))]
    if len(kernels) != len(channels):
        raise UnknownEntry(f"wildcnn: {len(kernels)} kernel sizes for {len(channels)} layers")
    norm = config.get("norm", "none")
    m = WildCNN(int(config["input_shape"][0]), channels, kernels, int(config["n_classes"]),
                config.get("activation", "relu"), bool(config.get("residual", False)), norm,
                float(config.get("dropout", 0.0)))
    return Built(m, spec_from_module(m, chain_annotations(m.skips, norm, kernel_dims=2)))


def chain_annotations(skips: list[bool], norm: str, kernel_dims: int) -> dict:
    """Spec annotations of a wild conv chain (``convs.i``, optional ``norms.i``, ``head``), 1-D or 2-D kernels:
    each conv's output channels are a permutation group, except that a residual conv keeps its input's."""
    ann: dict = {}
    prev = None
    for i, skip in enumerate(skips):
        g = prev if skip else f"c{i}"  # a residual chain keeps one channel permutation
        ann[f"convs.{i}.weight"] = ("conv", i, (g, prev) + (None,) * kernel_dims, ())
        ann[f"convs.{i}.bias"] = ("conv", i, (g,), ())
        if norm != "none":
            for part in ("weight", "bias") + (("running_mean", "running_var") if norm == "batch" else ()):
                ann[f"norms.{i}.{part}"] = ("norm", i, (g,), ())
        prev = g
    ann["head.weight"] = ("linear", len(skips), (None, prev), ())
    ann["head.bias"] = ("linear", len(skips), (None,), ())
    return ann
