"""Fixed-shape families: ``mlp`` and ``cnn`` (the Small CNN Zoo shape)."""
from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import UnknownEntry
from core.spec import spec_from_module
from zoo.archs import ARCHS, Built

ACTIVATIONS = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UnknownEntry(f"unknown activation {name!r} (known: {', '.join(sorted(ACTIVATIONS))})")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    def __init__(self, in_features: int, width: int, depth: int, n_classes: int, act: str, dropout: float):
        super().__init__()
        dims = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], n_classes)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, in_features)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.head(x)


@ARCHS.register("mlp")
def mlp(config: dict) -> Built:
    width, depth = int(config.get("width", 32)), int(config.get("depth", 2))
    in_features = math.prod(config["input_shape"])
    m = MLP(in_features, width, depth, int(config["n_classes"]), config.get("activation", "relu"),
            float(config.get("dropout", 0.0)))
    ann = {}
    prev = None
    for i in range(depth):
        ann[f"layers.{i}.weight"] = ("linear", i, (f"h{i}", prev), ())
        ann[f"layers.{i}.bias"] = ("linear", i, (f"h{i}",), ())
        prev = f"h{i}"
    ann["head.weight"] = ("linear", depth, (None, prev), ())
    ann["head.bias"] = ("linear", depth, (None,), ())
    return Built(m, spec_from_module(m, ann))


class SmallCNN(nn.Module):
    """Unterthiner et al. (2020): 3 conv layers (3x3, stride 2) + global average pool + linear head."""

    def __init__(self, in_channels: int, channels: int, n_layers: int, n_classes: int, act: str, dropout: float):
        super().__init__()
        chans = [in_channels] + [channels] * n_layers
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Linear(chans[-1], n_classes)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.drop(self.act(conv(x)))  # (N, C, H/2, W/2)
        return self.head(x.mean(dim=(2, 3)))


@ARCHS.register("cnn")
def cnn(config: dict) -> Built:
    channels, n_layers = int(config.get("channels", 16)), int(config.get("n_layers", 3))
    m = SmallCNN(int(config["input_shape"][0]), channels, n_layers, int(config["n_classes"]),
                 config.get("activation", "relu"), float(config.get("dropout", 0.0)))
    ann = {}
    prev = None
    for i in range(n_layers):
        ann[f"convs.{i}.weight"] = ("conv", i, (f"c{i}", prev, None, None), ())
        ann[f"convs.{i}.bias"] = ("conv", i, (f"c{i}",), ())
        prev = f"c{i}"
    ann["head.weight"] = ("linear", n_layers, (None, prev), ())
    ann["head.bias"] = ("linear", n_layers, (None,), ())
    return Built(m, spec_from_module(m, ann))
