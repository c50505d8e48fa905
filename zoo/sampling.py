"""Hyperparameter and architecture sampling for zoo members.

Ranges follow the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from
Weights"): optimizer among sgd/adam/rmsprop, log-uniform learning rate [5e-4, 5e-2] and L2
[1e-8, 1e-2], an initialization scheme with a log-uniform scale, dropout in [0, 0.7], a fraction of the
training data in {0.1, 0.25, 0.5, 1.0}; we add label noise and a batch-size choice.

Sampling is a pure function of (family, index, seed): ``member_seed`` hashes the three, and every
random draw of a member (its hyperparameters, its initialization, its data order, its dropout masks,
its label noise) comes from a generator seeded from that member seed and a stream name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from core.errors import ZooError
from core.hashing import stable_hash
from zoo.archs.basic import ACTIVATIONS as ACTIVATION_MODULES

OPTIMIZERS = ("sgd", "adam", "rmsprop")
SAMPLED_INITS = ("xavier", "he", "orthogonal", "normal", "truncated_normal")
INITS = SAMPLED_INITS + ("default",)  # default: the architecture's own initialization (seeded)
ACTIVATIONS = tuple(ACTIVATION_MODULES)  # the names zoo.archs.basic.activation builds


class BadConfig(ZooError, ValueError):
    """A training or sampling configuration that cannot be used (names the field)."""


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"  # sgd | adam | rmsprop (torch defaults otherwise: no momentum, betas 0.9/0.999)
    lr: float = 1e-3
    l2: float = 0.0  # added to the gradient as l2 * w (torch's weight_decay), i.e. loss + l2/2 * |w|^2
    init: str = "he"  # one of INITS; biases start at zero
    init_scale: float = 1.0  # std for normal/truncated_normal, gain multiplier for the others
    dropout: float = 0.0  # after every hidden activation, training only
    train_fraction: float = 1.0  # share of the train split this member sees (its own subset)
    label_noise: float = 0.0  # share of its training labels replaced by uniformly random classes
    batch_size: int = 64
    epochs: int = 20
    checkpoints: tuple[int, ...] = (20,)  # epochs at which weights are stored; 0 = the initialization

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadConfig(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.init not in INITS:
            raise BadConfig(f"init {self.init!r} is not one of {', '.join(INITS)}")
        if not (self.lr > 0 and self.l2 >= 0 and self.init_scale > 0):
            raise BadConfig(f"lr, l2, init_scale must be positive (got {self.lr}, {self.l2}, {self.init_scale})")
        if not (0 <= self.dropout < 1 and 0 < self.train_fraction <= 1 and 0 <= self.label_noise < 1):
            raise BadConfig("dropout and label_noise must lie in [0, 1), train_fraction in (0, 1]")
        if self.batch_size < 1 or self.epochs < 1:
            raise BadConfig(f"batch_size and epochs must be >= 1 (got {self.batch_size}, {self.epochs})")
        object.__setattr__(self, "checkpoints", tuple(sorted({int(c) for c in self.checkpoints})))
        bad = [c for c in self.checkpoints if not 0 <= c <= self.epochs]
        if bad or not self.checkpoints:
            raise BadConfig(f"checkpoint epochs {list(self.checkpoints)} must lie in [0, epochs={self.epochs}]")

    def identity(self) -> dict:
        """What defines the trained weights: everything but the list of checkpoints kept."""
        d = asdict(self)
        d.pop("checkpoints")
        return d


@dataclass(frozen=True)
class TrainSpace:
    """Ranges a family samples TrainConfigs from (Small CNN Zoo defaults)."""

    optimizers: tuple[str, ...] = OPTIMIZERS
    lr: tuple[float, float] = (5e-4, 5e-2)  # log-uniform
    l2: tuple[float, float] = (1e-8, 1e-2)  # log-uniform
    inits: tuple[str, ...] = SAMPLED_INITS
    init_scale_normal: tuple[float, float] = (1e-3, 0.5)  # log-uniform std for normal/truncated_normal
    init_gain: tuple[float, float] = (0.5, 2.0)  # log-uniform gain for xavier/he/orthogonal
    dropout: tuple[float, float] = (0.0, 0.7)  # uniform
    train_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    label_noise: tuple[float, float] = (0.0, 0.2)  # uniform
    batch_sizes: tuple[int, ...] = (64,)
    epochs: int = 20
    sgd_lr_scale: float = 1.0  # SGD members' lr is the drawn lr times this (plain SGD needs larger steps)


def member_seed(family: str, index: int, seed: int) -> int:
    """A member's own seed: a 31-bit hash of (family, index, seed)."""
    return int(stable_hash({"family": family, "index": int(index), "seed": int(seed)}, 8), 16) & 0x7FFFFFFF


def stream(seed: int, name: str) -> torch.Generator:
    """An independent generator for one use (init, data, dropout, noise, sample) of a member seed."""
    return torch.Generator().manual_seed(int(stable_hash({"seed": int(seed), "stream": name}, 15), 16))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(_uniform(g, math.log(lo), math.log(hi)))


def _choice(g: torch.Generator, options: Sequence):
    return options[int(torch.randint(len(options), (), generator=g))]


def sample_train_config(space: TrainSpace, seed: int, checkpoints: tuple[int, ...] | None = None) -> TrainConfig:
    g = stream(seed, "train_config")
    init = _choice(g, space.inits)
    scale_range = space.init_scale_normal if init in ("normal", "truncated_normal") else space.init_gain
    optimizer = _choice(g, space.optimizers)
    lr = _log_uniform(g, *space.lr)
    return TrainConfig(
        optimizer=optimizer,
        lr=lr * space.sgd_lr_scale if optimizer == "sgd" else lr,
        l2=_log_uniform(g, *space.l2),
        init=init,
        init_scale=_log_uniform(g, *scale_range),
        dropout=_uniform(g, *space.dropout),
        train_fraction=float(_choice(g, space.train_fractions)),
        label_noise=_uniform(g, *space.label_noise),
        batch_size=int(_choice(g, space.batch_sizes)),
        epochs=space.epochs,
        checkpoints=tuple(checkpoints) if checkpoints else (space.epochs,),
    )


@dataclass(frozen=True)
class WildCNNSpace:
    """Architecture ranges of the heterogeneous ``wildcnn`` family.

    Sampled config keys (the ``wildcnn`` entry of zoo.archs reads these):
      channels: list[int], one per conv layer (2-6 layers, 4-64 channels each)
      kernel_sizes: list[int], one per conv layer (3, 5 or 7; 'same' padding, stride 1)
      activation: str (zoo.archs.basic.ACTIVATIONS names)
      residual: bool (skip connections where input and output channels match)
      norm: "none" | "batch" | "layer"
    plus ``input_shape`` and ``n_classes`` like every arch config.
    """

    layers: tuple[int, int] = (2, 6)
    channels: tuple[int, int] = (4, 64)  # log-uniform, rounded
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    activations: tuple[str, ...] = ACTIVATIONS
    norms: tuple[str, ...] = ("none", "batch", "layer")


def sample_wildcnn(space: WildCNNSpace, seed: int, input_shape: Sequence[int], n_classes: int) -> dict:
    g = stream(seed, "arch_config")
    n_layers = int(torch.randint(space.layers[0], space.layers[1] + 1, (), generator=g))
    return {
        "channels": [int(round(_log_uniform(g, *space.channels))) for _ in range(n_layers)],
        "kernel_sizes": [int(_choice(g, space.kernel_sizes)) for _ in range(n_layers)],
        "activation": _choice(g, space.activations),
        "residual": bool(torch.rand((), generator=g) < 0.5),
        "norm": _choice(g, space.norms),
        "input_shape": list(input_shape),
        "n_classes": int(n_classes),
    }


@dataclass(frozen=True)
class WildCNN1dSpace:
    """Architecture ranges of a heterogeneous 1-D CNN family (``wildcnn1d``): the ``wildcnn`` keys plus
    ``strides`` (one per layer, drawn from ``strides``), so members also differ in how fast they shrink
    the sequence."""

    base: WildCNNSpace = WildCNNSpace()
    strides: tuple[int, ...] = (1, 2)


def sample_wildcnn1d(space: WildCNN1dSpace, seed: int, input_shape: Sequence[int], n_classes: int) -> dict:
    cfg = sample_wildcnn(space.base, seed, input_shape, n_classes)
    g = stream(seed, "arch_strides")  # its own stream: the wildcnn keys are those sample_wildcnn draws
    cfg["strides"] = [int(_choice(g, space.strides)) for _ in cfg["channels"]]
    return cfg
