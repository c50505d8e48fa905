"""Eval-mode forwards of many trained members at once, members of differing configs included.

``weightnet.probes`` runs its learned probe inputs through every model of a training batch, many
times per WeightNet fit. Models of one config stack into one ``vmap``; but in a heterogeneous (wild)
zoo nearly every member has its own config (800 mnist1d-wild members: 713 configs), so the probes ran
one tiny forward per model. A ``StackedForward`` registered here for an architecture runs every
member of one ``key`` together.

For the 1-D wild CNNs (``wildcnn1d``) the key is only the depth (with input and classes): members of
differing widths, kernels and strides share one padded layout, per layer the widest channel count and
largest kernel of the stacked members, each member's tensors zero-padded into it (kernels centred).
Each convolution is one batched matmul over the members: every output position's input window is
gathered per member (``_windows``: its own stride and 'same' padding; taps off its sequence read a zero
row), so members of differing strides and lengths share a
call. Padded weights are zero, so padded channels and taps never reach a real value, and the result
equals each member's own forward up to float rounding (the padded sums add exact zeros). Norm kind
and activation are applied per member (members sorted so each kind is one slice), residuals through a
per-member factor, and the pooling averages each member's own positions. Eval mode only: BatchNorm
reads running statistics, dropout is off. Gradients flow to the shared input (the probes).

Padding to the widest member wastes arithmetic, so one key's members are cut into chunks of similar
cost (``_chunks``), trading padded multiply-adds against the fixed cost of a call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.hashing import canonical_json
from core.registry import Registry
from zoo.population_wild import (NORM_EPS, _ACT, _kernels, _linear, _region, _skips, _strides, bn_affine,
                                 padded_config)

# the fixed cost of one chunk per layer, in padded multiply-adds. Probe forward + backward on 32-member
# batches of bench-mnist1d-wild, 32 probes, one thread: 1e6 (16 calls a batch) and 4e6 (8) both 130-175 ms,
# 1.6e7 (3 calls, nearly no cut) 178-184 ms, the (depth, strides) grouped convs before 265-290 ms
CHUNK_MACS = 1e6


@dataclass(frozen=True)
class StackedForward:
    """How to run members of one architecture together: ``key(config)`` names the members that may
    share one call; ``logits(configs, states, x)`` maps a shared input x (P, *input_shape) to (G, P, K)."""

    key: Callable[[Mapping], str]
    logits: Callable[[Sequence[Mapping], Sequence[Mapping[str, torch.Tensor]], torch.Tensor], torch.Tensor]


STACKED: Registry[StackedForward] = Registry("stacked forward")


def depth_key(cfg: Mapping) -> str:
    """Wild 1-D members with equal keys share one stacked call: same depth, input and classes."""
    return canonical_json({"depth": len(cfg["channels"]), "input_shape": list(cfg["input_shape"]),
                           "n_classes": int(cfg["n_classes"])})


def wild_shapes(padded: Mapping) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of a wild CNN's (wildcnn, wildcnn1d) float parameters and buffers, read off its config:
    the module's own state_dict without building it (a training batch's padded layout is new nearly every
    step, and building one measured ~5 ms, ~20% of a batch's probe forward and backward)."""
    shape = [int(d) for d in padded["input_shape"]]
    kernel_dims, prev = len(shape) - 1, shape[0]  # (C, L) -> 1-D kernels, (C, H, W) -> 2-D
    norm_names = {"none": (), "layer": ("weight", "bias"),
                  "batch": ("weight", "bias", "running_mean", "running_var")}[padded.get("norm", "none")]
    convs, norms = [], []
    for i, (c, k) in enumerate(zip((int(c) for c in padded["channels"]), _kernels(padded))):
        convs += [(f"convs.{i}.weight", (c, prev) + (k,) * kernel_dims), (f"convs.{i}.bias", (c,))]
        norms += [(f"norms.{i}.{n}", (c,)) for n in norm_names]
        prev = c
    n_classes = int(padded["n_classes"])
    return (*convs, *norms, ("head.weight", (n_classes, prev)), ("head.bias", (n_classes,)))


def _stack_padded(padded: Mapping, states: Sequence[Mapping[str, torch.Tensor]],
                  device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """name -> (G, *shape in the ``padded`` config): member m's tensor in row m, zeros where it has none
    (padded channels, outer kernel taps, a norm it does not have)."""
    out = {}
    for name, shape in wild_shapes(padded):
        t = torch.zeros((len(states), *shape), dtype=dtype)
        for m, s in enumerate(states):
            if name in s:
                t[m][_region(name, tuple(s[name].shape), shape)] = s[name]
        out[name] = t.to(device)
    return out


def _geometry(cfg: Mapping, length: int) -> list[tuple[int, int, int, int]]:
    """Per layer (in channels, out channels, kernel, output length) of a 1-D wild member."""
    out, c_in = [], int(cfg["input_shape"][0])
    for c, k, s in zip((int(c) for c in cfg["channels"]), _kernels(cfg), _strides(cfg)):
        length = (length + 2 * (k // 2) - k) // s + 1  # Conv1d with padding k // 2
        out.append((c_in, c, k, length))
        c_in = c
    return out


def _chunks(configs: Sequence[Mapping], length: int, n_inputs: int) -> list[list[int]]:
    """Members (indices) cut into chunks: sorted by their own multiply-adds, then the contiguous cut that
    minimizes padded multiply-adds on n_inputs inputs + CHUNK_MACS per chunk and layer (exact, O(G^2)
    over the cut points)."""
    geo = [_geometry(c, length) for c in configs]
    order = sorted(range(len(geo)), key=lambda m: sum(a * b * k * n for a, b, k, n in geo[m]))
    per_layer = CHUNK_MACS * len(geo[0])

    def padded(a: int, b: int) -> float:  # the padded multiply-adds of order[a:b] together
        rows = [geo[m] for m in order[a:b]]
        return (b - a) * sum(max(r[i][0] for r in rows) * max(r[i][1] for r in rows) * max(r[i][2] for r in rows)
                             * max(r[i][3] for r in rows) for i in range(len(rows[0])))

    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for b in range(1, len(order) + 1):
        for a in range(b):
            cost = best[a] + padded(a, b) * n_inputs + per_layer
            if cost < best[b]:
                best[b], cut[b] = cost, a
    chunks, b = [], len(order)
    while b:
        chunks.append(order[cut[b]:b])
        b = cut[b]
    return chunks[::-1]


def _windows(lens: torch.Tensor, k: torch.Tensor, s: torch.Tensor, lout: torch.Tensor, K: int, L: int
             ) -> torch.Tensor:
    """(G, Lout, K) input positions each member's output position reads through tap t of the padded K
    (its own k taps centred in them, stride s, padding k // 2); L (the padded input's zero row) where the
    position is off the member's lens-long input. Taps outside its own k have zero weights, and outputs
    past its own length are never read (the next layer's windows, the pooling and LayerNorm skip them)."""
    j = torch.arange(int(lout.max())).view(1, -1, 1)
    tap = torch.arange(K).view(1, 1, -1) - ((K - k) // 2).view(-1, 1, 1)  # the member's own tap index
    pos = s.view(-1, 1, 1) * j + tap - (k // 2).view(-1, 1, 1)
    return torch.where((pos >= 0) & (pos < lens.view(-1, 1, 1)), pos, L)


def _norm_act(kind: tuple[str, str], y: torch.Tensor, p: Mapping[str, torch.Tensor], i: int,
              chans: torch.Tensor, lout: torch.Tensor) -> torch.Tensor:
    """y (n, P, L, C): members of one (norm, activation) through them, eval mode; p, chans (n,) and
    lout (n,) are those members' rows."""
    norm, act = kind
    n, _, L, C = y.shape
    view = (n, 1, 1, C)
    if norm == "batch":  # running statistics; bn_affine reads channels on dim 2 (a transposed view)
        y = bn_affine(y.transpose(2, 3), p[f"norms.{i}.running_mean"], p[f"norms.{i}.running_var"],
                      p[f"norms.{i}.weight"], p[f"norms.{i}.bias"]).transpose(2, 3)
    elif norm == "layer":  # GroupNorm(1, C) over each member's real channels and positions
        real = ((torch.arange(L).view(1, -1, 1) < lout.view(-1, 1, 1))
                & (torch.arange(C).view(1, 1, -1) < chans.view(-1, 1, 1))).to(y).unsqueeze(1)  # (n, 1, L, C)
        count = (chans * lout).to(y).view(n, 1, 1, 1)
        mean = (y * real).sum((2, 3), keepdim=True) / count
        var = ((y - mean).square() * real).sum((2, 3), keepdim=True) / count
        y = torch.addcmul(p[f"norms.{i}.bias"].view(view), (y - mean) * torch.rsqrt(var + NORM_EPS),
                          p[f"norms.{i}.weight"].view(view))
    return _ACT[act](y)


def _wild1d_chunk(configs: Sequence[Mapping], states: Sequence[Mapping[str, torch.Tensor]],
                  x: torch.Tensor) -> torch.Tensor:
    """One padded call: members of one depth, x (P, C, L) -> (G, P, K) in the members' order."""
    kinds = [(c.get("norm", "none"), c.get("activation", "relu")) for c in configs]
    order = sorted(range(len(configs)), key=lambda m: kinds[m])  # each (norm, activation): one slice
    configs, states, kinds = [configs[m] for m in order], [states[m] for m in order], [kinds[m] for m in order]
    G, P = len(configs), x.shape[0]
    p = _stack_padded(padded_config(configs, depth_key), states, x.device, x.dtype)
    slices, start = [], 0
    for kind in dict.fromkeys(kinds):
        slices.append((kind, start, start + kinds.count(kind)))
        start += kinds.count(kind)
    geo = torch.tensor([_geometry(c, x.shape[-1]) for c in configs])  # (G, depth, (in, out, kernel, length))
    chans, kernels, louts = geo[..., 1], geo[..., 2], geo[..., 3]
    strides = torch.tensor([_strides(c) for c in configs])
    skip = torch.tensor([[float(s) for s in _skips(c)] for c in configs], dtype=x.dtype, device=x.device)
    lens = torch.full((G,), x.shape[-1])  # each member's sequence length before layer i
    h = x.transpose(1, 2).unsqueeze(0).expand(G, P, x.shape[2], x.shape[1])  # (G, P, L, C): channels last
    for i in range(chans.shape[1]):
        k, s, lout = kernels[:, i], strides[:, i], louts[:, i]
        L, C_in, K = h.shape[2], h.shape[3], int(k.max())
        win = _windows(lens, k, s, lout, K, L)  # (G, Lout, K)
        rows = torch.arange(G * P).view(G, P, 1, 1) * (L + 1) + win.unsqueeze(1)  # into (G*P*(L+1), C_in)
        flat = F.pad(h, (0, 0, 0, 1)).reshape(-1, C_in)  # row L of each (member, probe): zeros
        cols = flat.index_select(0, rows.view(-1).to(x.device)).view(G, -1, K * C_in)  # (G, P*Lout, K*C_in)
        w = p[f"convs.{i}.weight"]  # (G, C_out, C_in, K) -> (G, K*C_in, C_out), tap-major like cols
        y = torch.baddbmm(p[f"convs.{i}.bias"].unsqueeze(1), cols, w.permute(0, 3, 2, 1).reshape(G, K * C_in, -1))
        y = y.view(G, P, win.shape[1], w.shape[1])
        parts = [_norm_act(kind, y[a:b], {n: t[a:b] for n, t in p.items() if n.startswith(f"norms.{i}.")}, i,
                           chans[a:b, i], lout[a:b]) for kind, a, b in slices]
        y = torch.cat(parts) if len(parts) > 1 else parts[0]
        if bool(skip[:, i].any()):  # a member without this skip adds 0 * h
            c = y.shape[3]
            prev = h[:, :, :y.shape[2], :c] if C_in >= c else F.pad(h[:, :, :y.shape[2]], (0, c - C_in))
            y = torch.addcmul(y, skip[:, i].view(G, 1, 1, 1), prev)
        h, lens = y, lout
    own = (torch.arange(h.shape[2]).view(1, -1) < lens.view(-1, 1)).to(h) / lens.to(h).view(-1, 1)  # (G, L)
    logits = _linear(torch.einsum("gplc,gl->gpc", h, own), p["head.weight"], p["head.bias"])
    return logits.index_select(0, torch.tensor(order).argsort().to(x.device))


def wild1d_logits(configs: Sequence[Mapping], states: Sequence[Mapping[str, torch.Tensor]],
                  x: torch.Tensor) -> torch.Tensor:
    """Members of one ``depth_key`` (their own configs and state dicts), shared input x (P, C, L)
    -> logits (G, P, K), as each member's own module in eval mode would give them."""
    if x.dim() != 3:
        raise ZooError(f"wild1d_logits runs 1-D members on inputs (P, C, L); got input shape {tuple(x.shape)}")
    chunks = _chunks(configs, x.shape[-1], x.shape[0])
    if len(chunks) == 1:
        return _wild1d_chunk(configs, states, x)
    ys = [_wild1d_chunk([configs[m] for m in ms], [states[m] for m in ms], x) for ms in chunks]
    order = torch.tensor([m for ms in chunks for m in ms])
    return torch.cat(ys).index_select(0, order.argsort().to(x.device))


# Registered where it measured faster than one vmap per config. wildcnn1d: probe forward + backward on
# 32-member batches of bench-mnist1d-wild (32 probes, one thread) 265-290 ms with one grouped conv per
# (depth, strides) group (13-19 groups a batch) -> 130-175 ms as depth chunks of batched matmuls. Not
# wildcnn (2-D): on bench-digits-wild a grouped conv2d over padded members was slower than one plain
# conv2d per member (fit 41 -> 45 s), so its members keep the per-config vmap.
STACKED.register("wildcnn1d")(StackedForward(depth_key, wild1d_logits))
