"""Baseline (3): a permutation-equivariant neural functional built from NP layers (after Zhou et al.
2023, "Permutation Equivariant Neural Functionals"), for MLP and CNN zoos.

Every weight tensor is viewed as a feature map over its *neuron axes* (out, in) with channels: a
linear weight (out, in) has 1 channel, a conv weight (out, in, kh, kw) has kh*kw (kernel taps are
channels, as in NFN), a bias (out,) has 1. Each neuron axis belongs to a *set*: the spec's
permutation group when it has one (shared by every tensor that the group couples), else a set of
its own (input pixels, classes). An NP layer computes, for tensor p with channels x_p:

    y_p = A_p x_p + sum_{axis a of p} broadcast(V[set(a)]) + G
    V[s] = sum_{tensors q, axes b with set(b) = s} B_{q,b} mean_{other axes of q}(x_q)   # (C, |s|)
    G    = sum_q C_q mean_{all axes}(x_q)                                             # (C,)

Permuting a group reorders its index in every x_q and in V[s] alike and leaves the means over other
axes unchanged, so the layer is equivariant; the head (per-tensor means, concatenated in spec order,
then an MLP) is invariant. Widths may differ between models (every operation pools or acts per entry).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from core.errors import ZooError
from core.spec import WeightSpec
from evaluation.registry import predictor
from evaluation.baselines.base import ConformalMixin, Standardizer, fit_torch, mlp, one_thread, target_matrix
from weightnet.data import ZooSample


@dataclass(frozen=True)
class Layout:
    """What an NP network needs to know about a spec: per tensor, its name, channels and neuron-axis sets."""

    names: tuple[str, ...]
    channels: tuple[int, ...]  # input channels per tensor (kernel taps for conv weights, else 1)
    sets: tuple[tuple[str, ...], ...]  # per tensor, the set of each neuron axis


def layout(spec: WeightSpec) -> Layout:
    names, chans, sets = [], [], []
    for p in spec.params:
        if p.role == "buffer":
            continue
        if p.kind not in ("linear", "conv", "norm") or any(b != 1 for b in p.blocks):
            raise ZooError(f"the NFN baseline handles MLP and CNN zoos only; tensor {p.name!r} is {p.kind!r}"
                           + (" acted on in blocks" if any(b != 1 for b in p.blocks) else ""))
        n_neuron = 1 if len(p.shape) == 1 else 2
        if len(p.shape) > 2 and p.kind != "conv":
            raise ZooError(f"the NFN baseline cannot read {len(p.shape)}-d {p.kind} tensor {p.name!r}")
        taps = int(np.prod(p.shape[2:])) if len(p.shape) > 2 else 1
        names.append(p.name)
        chans.append(taps)
        sets.append(tuple(p.axes[a] if p.axes[a] is not None else f"{p.name}#{a}" for a in range(n_neuron)))
    return Layout(tuple(names), tuple(chans), tuple(sets))


def to_features(layout_: Layout, states: Sequence[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Per tensor, a batch (B, C, *neuron axes): kernel taps moved into the channel axis."""
    out = []
    for name, c in zip(layout_.names, layout_.channels):
        t = torch.stack([s[name].float() for s in states])  # (B, *shape)
        if t.dim() > 3:  # conv (B, out, in, kh, kw) -> (B, kh*kw, out, in)
            t = t.flatten(3).permute(0, 3, 1, 2)
        else:
            t = t.unsqueeze(1)
        out.append(t)
    return out


def _channel_linear(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply ``lin`` to axis 1 (channels) of (B, C, ...)."""
    return lin(x.movedim(1, -1)).movedim(-1, 1)


class NPLayer(nn.Module):
    def __init__(self, layout_: Layout, c_in: Sequence[int], c_out: int) -> None:
        super().__init__()
        self.layout = layout_
        self.own = nn.ModuleList(nn.Linear(c, c_out) for c in c_in)
        self.pool = nn.ModuleList(nn.ModuleList(nn.Linear(c, c_out, bias=False) for _ in sets)
                                  for c, sets in zip(c_in, layout_.sets))
        self.glob = nn.ModuleList(nn.Linear(c, c_out, bias=False) for c in c_in)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        vec: dict[str, torch.Tensor] = {}  # set -> (B, c_out, n)
        g = 0.0
        for x, sets, pools, glob in zip(xs, self.layout.sets, self.pool, self.glob):
            n_ax = len(sets)
            for a, (s, lin) in enumerate(zip(sets, pools)):
                other = [2 + b for b in range(n_ax) if b != a]
                pooled = x.mean(dim=other) if other else x  # (B, C, n_a)
                v = _channel_linear(lin, pooled)
                vec[s] = vec[s] + v if s in vec else v
            g = g + glob(x.mean(dim=tuple(range(2, 2 + n_ax))))  # (B, c_out)
        out = []
        for x, sets, own in zip(xs, self.layout.sets, self.own):
            y = _channel_linear(own, x)
            n_ax = len(sets)
            for a, s in enumerate(sets):
                shape = [y.shape[0], y.shape[1]] + [1] * n_ax
                shape[2 + a] = y.shape[2 + a]
                y = y + vec[s].reshape(shape)
            out.append(y + g.reshape(g.shape + (1,) * n_ax))
        return out


class NFN(nn.Module):
    """NP layers with ReLU, then the invariant head: per-tensor means concatenated -> MLP."""

    def __init__(self, layout_: Layout, n_out: int, hidden: int = 16, n_layers: int = 2, head_hidden: int = 64) -> None:
        super().__init__()
        chans: list[Sequence[int]] = [layout_.channels] + [[hidden] * len(layout_.names)] * n_layers
        self.layers = nn.ModuleList(NPLayer(layout_, chans[i], hidden) for i in range(n_layers))
        self.head = mlp(hidden * len(layout_.names), n_out, head_hidden, 1)

    def embed(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            xs = [torch.relu(x) for x in layer(xs)]
        return torch.cat([x.mean(dim=tuple(range(2, x.dim()))) for x in xs], dim=1)  # (B, T*hidden)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(xs))


@dataclass(frozen=True)
class NFNConfig:
    hidden: int = 16  # channels per weight entry inside the NP layers
    n_layers: int = 2
    head_hidden: int = 64
    epochs: int = 100
    lr: float = 2e-3
    batch_size: int = 16
    patience: int = 15  # epochs without validation improvement before stopping
    max_examples: int | None = None  # cap on training examples seen (None: up to `epochs` passes)


class NFNPredictor(ConformalMixin):
    name = "nfn"

    def __init__(self, config: NFNConfig = NFNConfig(), device: str = "cpu") -> None:
        self.config, self.device = config, device
        self.targets: tuple[str, ...] = ()

    def _check(self, samples: Sequence[ZooSample]) -> None:
        for s in samples:
            lay = layout(s.spec)
            if lay.names != self.layout.names or lay.sets != self.layout.sets:
                raise ZooError(f"NFN baseline: model {s.model_id} ({s.arch}) has a different tensor layout from "
                               f"the zoo it was trained on")

    def _groups(self, samples: Sequence[ZooSample]) -> list[list[int]]:
        """Indices of samples with identical shapes (so they stack into one batch)."""
        by: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            by.setdefault(tuple(tuple(s.state[n].shape) for n in self.layout.names), []).append(i)
        return list(by.values())

    def _inputs(self, states: Sequence[dict]) -> list[torch.Tensor]:
        return [(x / sc).to(self.device) for x, sc in zip(to_features(self.layout, states), self.scale)]

    def fit(self, train: Sequence[ZooSample], val: Sequence[ZooSample], targets: Sequence[str], seed: int) -> None:
        if not train:
            raise ZooError("NFN baseline: empty training set")
        self.targets = tuple(targets)
        val, calibration = self._split_calibration(val, seed)
        self.layout = layout(train[0].spec)
        self._check(list(train) + list(val))
        # one scalar scale per tensor (invariant): the training std of its entries
        self.scale = [max(float(torch.cat([s.state[n].float().reshape(-1) for s in train]).std()), 1e-8)
                      for n in self.layout.names]
        ytr = target_matrix(train, self.targets)
        self.ys = Standardizer(ytr)
        y = {"train": torch.tensor(self.ys(ytr), dtype=torch.float32),
             "val": torch.tensor(self.ys(target_matrix(val, self.targets)), dtype=torch.float32) if val else None}
        data = {"train": list(train), "val": list(val)}
        c = self.config

        def batches(split: str, g: torch.Generator):
            ss = data[split]
            if not ss:
                return
            for grp in self._groups(ss):
                order = torch.tensor(grp)
                if split == "train":
                    order = order[torch.randperm(len(grp), generator=g)]
                for i in range(0, len(order), c.batch_size):
                    idx = order[i:i + c.batch_size].tolist()
                    yield self._inputs([ss[j].state for j in idx]), y[split][idx].to(self.device)

        with torch.random.fork_rng():
            torch.manual_seed(seed)  # parameter init from the seed; global RNG restored afterwards
            self.net = NFN(self.layout, len(self.targets), c.hidden, c.n_layers, c.head_hidden).to(self.device)
        self.net = fit_torch(self.net, batches, lambda m, x: m(x), seed, epochs=c.epochs, lr=c.lr,
                             patience=c.patience, max_examples=c.max_examples)
        self._calibrate(calibration, train, seed)

    def _forward(self, samples: Sequence[ZooSample]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One pass: the (N, layers * hidden) invariant pooled encodings the head reads, and the predictions."""
        self._check(samples)
        emb = np.zeros((len(samples), self.net.head[0].in_features))
        z = np.zeros((len(samples), len(self.targets)))
        with torch.no_grad(), one_thread():
            for grp in self._groups(samples):
                e = self.net.embed(self._inputs([samples[i].state for i in grp]))
                emb[grp], z[grp] = e.cpu().double().numpy(), self.net.head(e).cpu().double().numpy()
        y = self.ys.inverse(z)
        return emb, self._bounded({t: y[:, j] for j, t in enumerate(self.targets)})

    def _representation(self, samples: Sequence[ZooSample]) -> np.ndarray:
        return self._forward(samples)[0]

    def _predict_scaled(self, samples: Sequence[ZooSample]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        emb, pred = self._forward(samples)  # the NP layers once for both
        return pred, (self.novelty.scale(emb) if self.novelty is not None else None)

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:
        return self._forward(samples)[1]


def supports(samples: Sequence[ZooSample]) -> bool:
    """True when every sample is an MLP/CNN with one shared tensor layout (what NFN needs)."""
    try:
        lays = {(l.names, l.sets) for l in (layout(s.spec) for s in samples)}
    except ZooError:
        return False
    return len(lays) == 1


def unsupported(samples: Sequence[ZooSample]) -> str:
    """'' when the NFN can read this zoo, else why not (the evaluation skips it and says so)."""
    return "" if supports(samples) else "the NFN baseline needs one MLP/CNN tensor layout across the zoo"


@predictor("nfn", skip=unsupported)
def nfn(device: str = "cpu", **overrides) -> NFNPredictor:
    return NFNPredictor(NFNConfig(**overrides), device)
