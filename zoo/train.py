"""Training one member at a time: the plain loop (the baseline, and the fallback for heterogeneous or
large architectures), plus the pieces the population trainer shares with it so both see the very same
member: its initialization, its training subset and noisy labels, and its data order per epoch.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from core.hashing import stable_hash
from core.spec import WeightSpec
from zoo.archs import build
from zoo.datasets import Splits
from zoo.sampling import TrainConfig, stream

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MemberData:
    indices: torch.Tensor  # (n_m,) int64: the member's subset of the train split
    labels: torch.Tensor  # (N_train,) int64: train labels with this member's label noise applied


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    step: int  # optimizer steps taken so far by this member
    state: dict[str, torch.Tensor]  # standard state dict of the registered architecture, on CPU


def member_data(y_train: torch.Tensor, n_classes: int, tc: TrainConfig, seed: int) -> MemberData:
    g = stream(seed, "data_subset")
    n = len(y_train)
    keep = max(1, round(tc.train_fraction * n))
    indices = torch.randperm(n, generator=g)[:keep].sort().values
    labels = y_train.clone()
    flip = torch.rand(n, generator=g) < tc.label_noise
    labels[flip] = torch.randint(n_classes, (int(flip.sum()),), generator=g)
    return MemberData(indices, labels)


def epoch_orders(data: MemberData, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """The member's own data order for every epoch (a fresh permutation of its subset each time)."""
    g = stream(seed, "data_order")
    for _ in range(epochs):
        yield data.indices[torch.randperm(len(data.indices), generator=g)]


def last_epoch(tc: TrainConfig) -> int:
    """Epochs actually trained: up to the last checkpoint kept (nothing depends on ``tc.epochs`` beyond it)."""
    return max(tc.checkpoints)


def steps_per_epoch(data: MemberData, tc: TrainConfig) -> int:
    return math.ceil(len(data.indices) / tc.batch_size)  # the last batch may be short (no drop_last)


@contextmanager
def seeded_global_rng(seed: int, name: str) -> Iterator[None]:
    """Code we do not own (module constructors, nn.Dropout) draws from the global RNG: fork it, seed it,
    and restore it afterwards, so a member's randomness depends only on its seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(stable_hash({"seed": int(seed), "stream": name}, 15), 16))
        yield


def init_state(arch: str, arch_config: Mapping, spec: WeightSpec, tc: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """The member's initial weights: the architecture's own init (seeded), then ``tc.init`` on every
    linear/conv weight with zero biases (unless init == "default")."""
    with seeded_global_rng(seed, "module_init"):
        state = {k: v.detach().clone() for k, v in build(arch, arch_config).module.state_dict().items()}
    if tc.init == "default":
        return state
    g = stream(seed, "init")
    for p in spec.params:
        if p.kind not in ("linear", "conv") or p.role == "buffer":
            continue
        t = state[p.name]
        if p.role == "bias":
            t.zero_()
            continue
        fan_in = t[0].numel()  # (out, in, *kernel): in * kernel taps
        if tc.init == "xavier":
            torch.nn.init.xavier_normal_(t, gain=tc.init_scale, generator=g)
        elif tc.init == "he":
            t.normal_(0.0, tc.init_scale * math.sqrt(2.0 / fan_in), generator=g)
        elif tc.init == "orthogonal":
            torch.nn.init.orthogonal_(t, gain=tc.init_scale, generator=g)
        elif tc.init == "normal":
            t.normal_(0.0, tc.init_scale, generator=g)
        else:  # truncated_normal
            torch.nn.init.trunc_normal_(t, 0.0, tc.init_scale, -2 * tc.init_scale, 2 * tc.init_scale, generator=g)
    return state


def make_optimizer(params, tc: TrainConfig) -> torch.optim.Optimizer:
    kw = dict(lr=tc.lr, weight_decay=tc.l2, foreach=False)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, **kw)
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, **kw)
    return torch.optim.RMSprop(params, **kw)


def train_plain(arch: str, arch_config: Mapping, spec: WeightSpec, splits: Splits, tc: TrainConfig, seed: int,
                device: str = "cpu", progress: Progress | None = None) -> list[Checkpoint]:
    """Train one member with a standard torch loop; returns its checkpoints in epoch order."""
    state = init_state(arch, arch_config, spec, tc, seed)
    cfg = dict(arch_config)
    if tc.dropout > 0:
        cfg["dropout"] = tc.dropout  # training-time only: stored arch_config keeps the arch's default
    with seeded_global_rng(seed, "module_init"):
        module = build(arch, cfg).module
    module.load_state_dict(state)
    module.to(device).train()
    opt = make_optimizer(module.parameters(), tc)
    data = member_data(splits.y_train, splits.info.n_classes, tc, seed)
    x_all, y_all = splits.x_train.to(device), data.labels.to(device)
    out: list[Checkpoint] = []
    if 0 in tc.checkpoints:
        out.append(Checkpoint(0, 0, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}))
    step = 0
    with seeded_global_rng(seed, "dropout"):
        # no schedule depends on the total, so training stops after the last checkpoint kept
        for epoch, order in enumerate(epoch_orders(data, last_epoch(tc), seed), start=1):
            for batch in order.split(tc.batch_size):
                batch = batch.to(device)
                loss = F.cross_entropy(module(x_all[batch]), y_all[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if epoch in tc.checkpoints:
                out.append(Checkpoint(epoch, step, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}))
            if progress is not None:
                progress(epoch, last_epoch(tc))
    return out


@torch.no_grad()
def accuracy(arch: str, arch_config: Mapping, state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> float:
    module = build(arch, arch_config).module
    module.load_state_dict(dict(state))
    module.eval()
    correct = sum(int((module(xb).argmax(-1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / max(1, len(y))
