"""Zoo families: a dataset, an architecture (fixed or sampled), a hyperparameter space, default checkpoints.

    zoo build --family digits-cnn --n 200 --seed 0

Member ``index`` of a family built with ``seed`` is a pure function of (family, index, seed): see
``Family.member``. Families whose architecture has a batched forward in ``zoo.population.POPULATIONS``
train as populations; the others (heterogeneous or large) train one by one with the plain loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from core.registry import Registry
from zoo.datasets import DatasetInfo
from zoo.sampling import (TrainConfig, TrainSpace, WildCNNSpace, member_seed, sample_train_config,
                          sample_wildcnn)

# (member seed, dataset info) -> the architecture's own config keys (input_shape/n_classes added later)
ArchSampler = Callable[[int, DatasetInfo], dict]


@dataclass(frozen=True)
class MemberPlan:
    index: int
    seed: int  # the member's own seed
    arch_config: dict  # complete: includes input_shape and n_classes
    train_config: TrainConfig


@dataclass(frozen=True)
class Family:
    name: str
    dataset: str
    arch: str
    space: TrainSpace  # hyperparameter ranges
    arch_config: dict = field(default_factory=dict)  # fixed knobs of the architecture
    arch_sampler: ArchSampler | None = None  # or a sampled architecture per member
    checkpoints: tuple[int, ...] = ()  # default checkpoint epochs; () = the last epoch only
    dataset_seed: int = 0  # the dataset split every member of the family trains and is labeled on

    def member(self, index: int, seed: int, info: DatasetInfo, checkpoints: tuple[int, ...] | None = None) -> MemberPlan:
        ms = member_seed(self.name, index, seed)
        cfg = dict(self.arch_sampler(ms, info)) if self.arch_sampler else dict(self.arch_config)
        cfg.update(input_shape=list(info.input_shape), n_classes=int(info.n_classes))
        tc = sample_train_config(self.space, ms, tuple(checkpoints or self.checkpoints) or None)
        return MemberPlan(index, ms, cfg, tc)


FAMILIES: Registry[Family] = Registry("family")


def _register(f: Family) -> Family:
    FAMILIES.register(f.name)(f)
    return f


# Small CNN Zoo: 3 conv layers of 16 channels (4,970 parameters on 8x8 digits); activation sampled.
_register(Family("digits-cnn", "digits", "cnn", TrainSpace(epochs=20, batch_sizes=(64,)),
                 arch_sampler=lambda s, info: {"channels": 16, "n_layers": 3,
                                               "activation": ("relu", "tanh")[s % 2]},
                 checkpoints=(5, 20)))
_register(Family("digits-mlp", "digits", "mlp", TrainSpace(epochs=20, batch_sizes=(32, 64, 128)),
                 arch_config={"width": 32, "depth": 2, "activation": "relu"}, checkpoints=(5, 20)))
_register(Family("arrests-mlp", "arrests", "mlp", TrainSpace(epochs=10, batch_sizes=(64, 128)),
                 arch_config={"width": 16, "depth": 2, "activation": "relu"}, checkpoints=(2, 10)))
_register(Family("mnist1d-mlp", "mnist1d", "mlp", TrainSpace(epochs=20, batch_sizes=(64, 128)),
                 arch_config={"width": 64, "depth": 2, "activation": "relu"}, checkpoints=(5, 20)))
# Heterogeneous CNNs: each member its own depth, widths, kernels, activation, residual, norm.
_register(Family("wildcnn", "digits", "wildcnn", TrainSpace(epochs=10, batch_sizes=(64,)),
                 arch_sampler=lambda s, info: sample_wildcnn(WildCNNSpace(), s, info.input_shape, info.n_classes),
                 checkpoints=(3, 10)))
# Tiny timm / transformers models: a few members, the plain loop, the architectures' own init.
_TINY = TrainSpace(optimizers=("adam",), lr=(3e-4, 3e-3), l2=(1e-8, 1e-4), inits=("default",), dropout=(0.0, 0.0),
                   train_fractions=(1.0,), label_noise=(0.0, 0.0), batch_sizes=(64,), epochs=3)
_register(Family("resnet", "digits", "resnet", _TINY, checkpoints=(1, 3)))
_register(Family("vit", "digits", "vit", _TINY, checkpoints=(1, 3)))
_register(Family("transformer", "mnist1d", "transformer", _TINY, checkpoints=(1, 3)))
