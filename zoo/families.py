"""Zoo families: a dataset, an architecture (fixed or sampled), a hyperparameter space, default checkpoints.

    zoo build --family digits-cnn --n 200 --seed 0

Member ``index`` of a family built with ``seed`` is a pure function of (family, index, seed): see
``Family.member``. Families whose architecture has a batched forward in ``zoo.population.POPULATIONS``
train as populations (``zoo.build.population_family``); the others (large archs, and the heterogeneous
wild families, whose padded populations measured slower than the plain loop on CPU) train one by one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from core.registry import Registry
from zoo.datasets import DatasetInfo
from zoo.sampling import (TrainConfig, TrainSpace, WildCNN1dSpace, WildCNNSpace, member_seed,
                          sample_train_config, sample_wildcnn, sample_wildcnn1d)

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


# --- Benchmark families (``zoo build --suite benchmark``) --------------------------------------------
# Designed so that test-accuracy labels can tell predictors apart: (1) the labels are measured on a
# large test set (mnist1d-20k: 20,000 examples) so re-measuring them ranks the models the same way
# (split-half Kendall tau), and (2) the hyperparameters spread accuracy over a wide range while few
# members stay at chance level (ranking models at chance is ranking noise).
#
# Why these ranges (narrowed from the Small CNN Zoo ranges of TrainSpace's defaults):
# - lr (1e-3, 3e-2) for Adam/RMSprop, 10x that for SGD (no momentum): in a 64-run sample with one range
#   for all, SGD members had median test accuracy 0.20 on mnist1d (10k test) (Adam 0.32); below 1e-3 SGD barely
#   moves in 20 epochs of ~50 steps; above ~3e-2 Adam/RMSprop diverge or collapse to one class.
# - init scale: std (0.01, 0.3) for normal inits, gain (0.5, 2) otherwise: the default lower end
#   (std 1e-3) gives vanishing signals that SGD cannot recover from within the budget.
# - dropout <= 0.5, label noise <= 0.3, data fractions 0.1-1: the knobs that spread accuracy (and the
#   generalization gap) from well-trained to weak, without pushing members to chance.
# - l2 <= 1e-3: the default upper end (1e-2) with Adam's lr pins weights near zero.
BENCH_SPACE = TrainSpace(lr=(1e-3, 3e-2), l2=(1e-8, 1e-3), init_scale_normal=(0.01, 0.3), dropout=(0.0, 0.5),
                         label_noise=(0.0, 0.3), batch_sizes=(32, 64, 128), epochs=20, sgd_lr_scale=10.0)
BENCH_CHECKPOINTS = (5, 20)  # an early and a final checkpoint: 2 models per training run

# MLP on MNIST-1D: 40 inputs -> 2 x 64 -> 10; activation sampled (an MLP reaches ~60-75% here, a CNN
# ~90%+, so the two families cover different accuracy ranges).
_register(Family("bench-mnist1d-mlp", "mnist1d-20k", "mlp", BENCH_SPACE,
                 arch_sampler=lambda s, info: {"width": 64, "depth": 2,
                                               "activation": ("relu", "tanh", "gelu")[s % 3]},
                 checkpoints=BENCH_CHECKPOINTS))
# Small-CNN-Zoo shape in 1-D: 3 conv1d blocks (16 channels, kernel 5, stride 2: 40 -> 20 -> 10 -> 5
# steps) + global average pooling + linear head (2,858 parameters); activation sampled.
_register(Family("bench-mnist1d-cnn", "mnist1d-20k", "cnn1d", BENCH_SPACE,
                 arch_sampler=lambda s, info: {"channels": 16, "n_layers": 3, "kernel_size": 5,
                                               "activation": ("relu", "tanh", "gelu")[s % 3]},
                 checkpoints=BENCH_CHECKPOINTS))
# --- The wild benchmark families: heterogeneous, narrowed toward the suite's 60-minute budget ---
# (2 cores for ~16,000 models: ~1 core-second per training run including labeling its 2 checkpoints;
# not reached yet, ~1.5-2.7 projected: docs/results.md.)
# The first versions (1-D: 2-5 layers of 4-48 channels, batch 32-128; digits: 2-4 layers of 8-48 channels,
# kernels 3/5/7 on `digits`) cost 4-6 core-seconds per run, ~5.4 of the suite's ~6.3 core-hours
# (docs/results.md, "Wild benchmark families made cheaper"). Every member still samples its own depth, widths,
# kernels, activation, residual and norm (and, in 1-D, strides); only the ranges are narrower.
#
# Heterogeneous 1-D CNNs on mnist1d-20k. Why these ranges:
# - depth 2-4 (was 2-5) and widths 4-24 (was 4-48, log-uniform): labeling runs every model on 24,000
#   examples, so its cost is the forward FLOPs; the 5th layer and the 25-48-channel layers were two thirds
#   of the family's FLOPs (mean forward 155k -> 51k FLOP per example) while the accuracy spread comes
#   mostly from the training knobs (32-run samples: median final accuracy 0.33 before, 0.35 after);
#   4-24 channels still span 6x in width and ~100x in parameter count.
# - batch 64/128 (no 32): these small members are bound by per-step overhead in the plain loop (562
#   optimizer steps per run on average with batch 32 in the mix, 340 without), not by arithmetic.
# - sigmoid left out (deep sigmoid stacks do not train in 20 epochs); kernels 3/5/7, strides 1/2,
#   residual and norm as in wildcnn; the benchmark training ranges and 20 epochs, checkpoints (5, 20).
WILD1D_SPACE = WildCNN1dSpace(WildCNNSpace(layers=(2, 4), channels=(4, 24),
                                           activations=("relu", "gelu", "tanh", "leaky_relu", "silu")))
_register(Family("bench-mnist1d-wild", "mnist1d-20k", "wildcnn1d", dataclasses.replace(BENCH_SPACE, batch_sizes=(64, 128)),
                 arch_sampler=lambda s, info: sample_wildcnn1d(WILD1D_SPACE, s, info.input_shape, info.n_classes),
                 checkpoints=BENCH_CHECKPOINTS))
# wildcnn on digits, trainable and cheap: the `wildcnn` family leaves ~70% of members under 20% test
# accuracy (sigmoid stacks, tiny init scales, 10 epochs on 108 examples at data fraction 0.1, lr 5e-4
# SGD). Why these ranges:
# - dataset `digits-t900` (900 test examples, 672 train): on `digits` (360 test) split-half tau was
#   0.87-0.91, label noise as large as the gaps between members; fewer training examples also cost less.
# - kernels 3/5 (no 7) and widths 8-24 (was 8-48): on 8x8 images every layer keeps all 64 positions, so
#   a 7x7, 48-channel layer cost ~14 MFLOP per example; training and labeling are arithmetic-bound here
#   and these two cuts take the mean forward from 3.9 to ~1.0 MFLOP per example. Depth stays 2-4.
# - data fractions 0.5/1 and batch 32/64 (of 672 examples): at fraction 0.25 and batch 128 a member gets
#   40 optimizer steps in 20 epochs; here it gets >= 110 (cost is per example, not per step).
# - Adam/RMSprop only, checkpoints (10, 20): plain SGD (no momentum) left 6 of 32 members at chance after
#   20 epochs and most epoch-5 checkpoints were at chance too; chance-level models differ only by test
#   noise, so they cap the split-half tau (a 32-run sample with SGD and (5, 20): tau 0.87 on 900 examples).
# - no sigmoid; the benchmark training ranges otherwise; 20 epochs.
DIGITS_WILD_SPACE = WildCNNSpace(layers=(2, 4), channels=(8, 24), kernel_sizes=(3, 5),
                                 activations=("relu", "gelu", "tanh", "leaky_relu", "silu"))
_register(Family("bench-digits-wild", "digits-t900", "wildcnn",
                 dataclasses.replace(BENCH_SPACE, optimizers=("adam", "rmsprop"), train_fractions=(0.5, 1.0),
                                     batch_sizes=(32, 64)),
                 arch_sampler=lambda s, info: sample_wildcnn(DIGITS_WILD_SPACE, s, info.input_shape, info.n_classes),
                 checkpoints=(10, 20)))
