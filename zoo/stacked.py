"""Eval-mode forwards of many trained members at once, members of differing configs included.

``weightnet.probes`` runs its learned probe inputs through every model of a training batch, many
times per WeightNet fit. Models of one config stack into one ``vmap``; but in a heterogeneous (wild)
zoo nearly every member has its own config (800 mnist1d-wild members: 713 configs), so the probes ran
one tiny forward per model. A ``StackedForward`` registered here for an architecture runs every
member of one ``key`` together, from a ``bank`` of those members' tensors laid out once per model set
(a WeightNet fit reads the same models every epoch).

For the 1-D wild CNNs (``wildcnn1d``) the key is only the depth (with input and classes). The bank holds
every member zero-padded, per layer, to the widest channel count and largest kernel of the key's members
(kernels centred), conv weights tap-major with BatchNorm folded in (eval mode: an affine map per
channel). A call cuts its members into chunks of similar cost (``_chunks``: padding to the widest member
wastes arithmetic, each chunk costs a fixed overhead) and runs each chunk on the smallest block of the bank
that holds its members. Each convolution is one batched matmul over the members: every output position's
input window is gathered per member (``_windows``: its own stride, kernel and 'same' padding; taps off its
sequence read a zero row), so members of differing strides and lengths share a call. Padded weights are
zero, so padded channels and taps never reach a real value, and the result equals each member's own
forward up to float rounding. LayerNorm and activation are applied per member (members sorted so each kind
is one slice), residuals through a per-member factor, and the pooling averages each member's own
positions. Eval mode only: dropout is off. Gradients flow to the shared input (the probes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.hashing import canonical_json
from core.registry import Registry
from zoo.population_wild import (NORM_EPS, _ACT, _kernels, _linear, _region, _skips, _strides, bn_scale_shift,
                                 padded_config)

# the fixed cost of one chunk per layer, in padded multiply-adds. Probe forward + backward on 32-member
# batches of bench-mnist1d-wild, 32 probes, one thread: 1e6 (16 calls a batch) and 4e6 (8) both 130-175 ms,
# 1.6e7 (3 calls, nearly no cut) 178-184 ms, the (depth, strides) grouped convs before 265-290 ms
CHUNK_MACS = 1e6


@dataclass(frozen=True)
class StackedForward:
    """How to run members of one architecture together: ``key(config)`` names the members that may
    share one call; ``bank(configs, states)`` lays out members of one key once; ``logits(bank, rows, x)``
    maps a shared input x (P, *input_shape) to (G, P, K) for the bank's members at rows."""

    key: Callable[[Mapping], str]
    bank: Callable[[Sequence[Mapping], Sequence[Mapping[str, torch.Tensor]]], Any]
    logits: Callable[[Any, Sequence[int], torch.Tensor], torch.Tensor]


STACKED: Registry[StackedForward] = Registry("stacked forward")


def depth_key(cfg: Mapping) -> str:
    """Wild 1-D members with equal keys share one stacked call: same depth, input and classes."""
    return canonical_json({"depth": len(cfg["channels"]), "input_shape": list(cfg["input_shape"]),
                           "n_classes": int(cfg["n_classes"])})


def wild_shapes(padded: Mapping) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of a wild CNN's (wildcnn, wildcnn1d) float parameters and buffers, read off its config:
    the module's own state_dict without building it (building the padded module of a bank's layout
    measured ~5 ms)."""
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


def _stack_padded(padded: Mapping, states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """name -> (G, *shape in the ``padded`` config), float32 on the CPU: member m's tensor in row m, zeros
    where it has none (padded channels, outer kernel taps, a norm it does not have)."""
    out = {}
    for name, shape in wild_shapes(padded):
        out[name] = torch.zeros((len(states), *shape))
        for m, s in enumerate(states):
            if name in s:
                out[name][m][_region(name, tuple(s[name].shape), shape)] = s[name]
    return out


def _geometry(cfg: Mapping, length: int) -> list[tuple[int, int, int, int]]:
    """Per layer (in channels, out channels, kernel, output length) of a 1-D wild member."""
    out, c_in = [], int(cfg["input_shape"][0])
    for c, k, s in zip((int(c) for c in cfg["channels"]), _kernels(cfg), _strides(cfg)):
        length = (length + 2 * (k // 2) - k) // s + 1  # Conv1d with padding k // 2
        out.append((c_in, c, k, length))
        c_in = c
    return out


@dataclass(eq=False)
class Wild1dBank:
    """Members of one ``depth_key``, laid out once. Per layer i: conv weights w[i] (N, K_i, C_in_i, C_out_i)
    tap-major (the batched matmul's layout) with BatchNorm folded in, biases b[i] (N, C_out_i) and the
    LayerNorm affine ln_w[i], ln_b[i] (N, C_out_i); the head head_w (N, K, C_last), head_b (N, K). Sizes are
    the largest of the members, zeros where a member has no entry."""

    configs: tuple[Mapping, ...]
    w: list[torch.Tensor]
    b: list[torch.Tensor]
    ln_w: list[torch.Tensor]
    ln_b: list[torch.Tensor]
    head_w: torch.Tensor
    head_b: torch.Tensor
    kern_off: np.ndarray  # (N, depth) the tap of w[i] where each member's own kernel starts
    strides: np.ndarray  # (N, depth)
    skip: torch.Tensor  # (N, depth) 1.0 where the member adds the layer's input back
    kinds: list[tuple[bool, str]]  # per member (LayerNorm?, activation): sorting by it makes each kind a slice
    _geo: dict[int, np.ndarray] = field(default_factory=dict)  # input length -> (N, depth, 4) per _geometry

    def geometry(self, length: int) -> np.ndarray:
        if length not in self._geo:
            self._geo[length] = np.array([_geometry(c, length) for c in self.configs], dtype=np.int64)
        return self._geo[length]


def wild1d_bank(configs: Sequence[Mapping], states: Sequence[Mapping[str, torch.Tensor]]) -> Wild1dBank:
    """The bank of 1-D wild members of one ``depth_key`` (their own configs and state dicts)."""
    if not configs or len(configs) != len(states):
        raise ZooError(f"a wild 1-D bank needs one state per config; got {len(configs)} configs, {len(states)} states")
    padded = padded_config(configs, depth_key)
    p = _stack_padded(padded, states)
    batch = torch.tensor([c.get("norm", "none") == "batch" for c in configs]).view(-1, 1)
    w, b, ln_w, ln_b = [], [], [], []
    for i in range(len(padded["channels"])):
        scale, shift = torch.ones_like(p[f"convs.{i}.bias"]), torch.zeros_like(p[f"convs.{i}.bias"])
        if f"norms.{i}.running_mean" in p:  # BatchNorm in eval mode: an affine map per channel
            s, t = bn_scale_shift(p[f"norms.{i}.running_mean"], p[f"norms.{i}.running_var"], p[f"norms.{i}.weight"],
                                  p[f"norms.{i}.bias"])
            scale, shift = torch.where(batch, s, scale), torch.where(batch, t, shift)
            ln_w.append(p[f"norms.{i}.weight"])  # the same names hold a LayerNorm member's affine
            ln_b.append(p[f"norms.{i}.bias"])
        w.append((p[f"convs.{i}.weight"] * scale[:, :, None, None]).permute(0, 3, 2, 1).contiguous())
        b.append(p[f"convs.{i}.bias"] * scale + shift)
    kern_off = np.array([[(K - k) // 2 for K, k in zip(_kernels(padded), _kernels(c))] for c in configs])
    return Wild1dBank(tuple(configs), w, b, ln_w, ln_b, p["head.weight"], p["head.bias"], kern_off,
                      np.array([_strides(c) for c in configs]),
                      torch.tensor([[float(s) for s in _skips(c)] for c in configs]),
                      [(c.get("norm", "none") == "layer", c.get("activation", "relu")) for c in configs])


def _chunks(geo: np.ndarray, n_inputs: int) -> list[list[int]]:
    """Members (indices into geo (G, depth, 4) per ``_geometry``) cut into chunks: sorted by their own
    multiply-adds, then the contiguous cut that minimizes padded multiply-adds on n_inputs inputs +
    CHUNK_MACS per chunk and layer (exact: every cut point, running maxima per end point)."""
    order = np.argsort(geo.prod(-1).sum(-1), kind="stable")
    g, n, per_layer = geo[order], len(order), CHUNK_MACS * geo.shape[1]
    best, cut = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=np.int64)
    best[0] = 0.0
    for e in range(1, n + 1):  # chunk order[a:e] for every a < e, a running max from e - 1 down
        widest = np.maximum.accumulate(g[e - 1::-1], axis=0)  # row j: the maxima of order[e-1-j:e]
        size = np.arange(1, e + 1)
        cost = best[e - 1::-1] + size * widest.prod(-1).sum(-1) * n_inputs + per_layer  # a = e - size
        j = int(np.argmin(cost))
        best[e], cut[e] = cost[j], e - 1 - j
    chunks, e = [], n
    while e:
        chunks.append(order[cut[e]:e].tolist())
        e = int(cut[e])
    return chunks[::-1]


def _windows(lens: torch.Tensor, k: torch.Tensor, s: torch.Tensor, off: torch.Tensor, n_out: int, K: int,
             L: int) -> torch.Tensor:
    """(G, n_out, K) input positions each member's output position reads through tap t of the K taps
    (its own k taps start at ``off``; stride s, padding k // 2); L (the padded input's zero row) where the
    position is off the member's lens-long input. Taps outside its own k have zero weights, and outputs
    past its own length are never read (the next layer's windows, the pooling and LayerNorm skip them)."""
    j = torch.arange(n_out).view(1, -1, 1)
    tap = torch.arange(K).view(1, 1, -1) - off.view(-1, 1, 1)  # the member's own tap index
    pos = s.view(-1, 1, 1) * j + tap - (k // 2).view(-1, 1, 1)
    return torch.where((pos >= 0) & (pos < lens.view(-1, 1, 1)), pos, L)


def _layer_norm(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, chans: torch.Tensor, lout: torch.Tensor
                ) -> torch.Tensor:
    """GroupNorm(1, C) of y (n, P, L, C) over each member's real channels (n,) and positions (n,), eval
    mode, with its affine w, b (n, C)."""
    n, _, L, C = y.shape
    real = ((torch.arange(L).view(1, -1, 1) < lout.view(-1, 1, 1))
            & (torch.arange(C).view(1, 1, -1) < chans.view(-1, 1, 1))).to(y).unsqueeze(1)  # (n, 1, L, C)
    count = (chans * lout).to(y).view(n, 1, 1, 1)
    mean = (y * real).sum((2, 3), keepdim=True) / count
    var = ((y - mean).square() * real).sum((2, 3), keepdim=True) / count
    return torch.addcmul(b.view(n, 1, 1, C), (y - mean) * torch.rsqrt(var + NORM_EPS), w.view(n, 1, 1, C))


def _slices(keys: Sequence) -> list[tuple[object, int, int]]:
    """(key, start, end) of each run of equal keys."""
    out, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((keys[start], start, i))
            start = i
    return out


def _wild1d_chunk(bank: Wild1dBank, rows: Sequence[int], x: torch.Tensor) -> torch.Tensor:
    """One padded call: the bank's members at rows, x (P, C, L) -> (G, P, K) in the rows' order."""
    order = sorted(range(len(rows)), key=lambda m: bank.kinds[rows[m]])  # each (LayerNorm?, act): one slice
    rows = [rows[m] for m in order]
    G, P, dev = len(rows), x.shape[0], x.device
    idx = torch.tensor(rows)
    geo = torch.from_numpy(bank.geometry(x.shape[-1])[rows])  # (G, depth, (in, out, kernel, length))
    offs, strides = torch.from_numpy(bank.kern_off[rows]), torch.from_numpy(bank.strides[rows])
    kinds = [bank.kinds[r] for r in rows]
    n_plain = sum(1 for ln, _ in kinds if not ln)  # LayerNorm members sort last
    acts = _slices([a for _, a in kinds])
    skip = bank.skip[idx].to(dev)
    lens = torch.full((G,), x.shape[-1])  # each member's sequence length before layer i
    h = x.transpose(1, 2).unsqueeze(0).expand(G, P, x.shape[2], x.shape[1])  # (G, P, L, C): channels last
    for i in range(geo.shape[1]):
        k, lout, chans = geo[:, i, 2], geo[:, i, 3], geo[:, i, 1]
        L, C_in, C_out, n_out = h.shape[2], h.shape[3], int(chans.max()), int(lout.max())
        o = int(offs[:, i].min())
        K = int((offs[:, i] + k).max()) - o  # the taps of w[i] any of these members uses
        win = _windows(lens, k, strides[:, i], offs[:, i] - o, n_out, K, L)  # (G, n_out, K)
        at = torch.arange(G * P).view(G, P, 1, 1) * (L + 1) + win.unsqueeze(1)  # into (G*P*(L+1), C_in)
        flat = F.pad(h, (0, 0, 0, 1)).reshape(-1, C_in)  # row L of each (member, probe): zeros
        cols = flat.index_select(0, at.view(-1).to(dev)).view(G, -1, K * C_in)  # (G, P*n_out, K*C_in)
        w = bank.w[i][idx, o:o + K, :C_in, :C_out].to(dev).reshape(G, K * C_in, C_out)
        y = torch.baddbmm(bank.b[i][idx, :C_out].to(dev).unsqueeze(1), cols, w).view(G, P, n_out, C_out)
        if n_plain < G:
            ln = idx[n_plain:]
            normed = _layer_norm(y[n_plain:], bank.ln_w[i][ln, :C_out].to(dev), bank.ln_b[i][ln, :C_out].to(dev),
                                 chans[n_plain:], lout[n_plain:])
            y = torch.cat([y[:n_plain], normed]) if n_plain else normed
        parts = [_ACT[act](y[a:b]) for act, a, b in acts]
        y = torch.cat(parts) if len(parts) > 1 else parts[0]
        if bool(skip[:, i].any()):  # a member without this skip adds 0 * h
            prev = h[:, :, :n_out, :C_out] if C_in >= C_out else F.pad(h[:, :, :n_out], (0, C_out - C_in))
            y = torch.addcmul(y, skip[:, i].view(G, 1, 1, 1), prev)
        h, lens = y, lout
    C = h.shape[3]
    own = (torch.arange(h.shape[2]).view(1, -1) < lens.view(-1, 1)).to(h) / lens.to(h).view(-1, 1)  # (G, L)
    pooled = torch.einsum("gplc,gl->gpc", h, own)
    logits = _linear(pooled, bank.head_w[idx, :, :C].to(dev), bank.head_b[idx].to(dev))
    return logits.index_select(0, torch.tensor(order).argsort().to(dev))


def wild1d_bank_logits(bank: Wild1dBank, rows: Sequence[int], x: torch.Tensor) -> torch.Tensor:
    """The bank's members at rows, shared input x (P, C, L) -> logits (G, P, K), as each member's own
    module in eval mode would give them."""
    if x.dim() != 3:
        raise ZooError(f"wild1d_logits runs 1-D members on inputs (P, C, L); got input shape {tuple(x.shape)}")
    rows = list(rows)
    chunks = _chunks(bank.geometry(x.shape[-1])[rows], x.shape[0])
    if len(chunks) == 1:
        return _wild1d_chunk(bank, rows, x)
    ys = [_wild1d_chunk(bank, [rows[m] for m in ms], x) for ms in chunks]
    order = torch.tensor([m for ms in chunks for m in ms])
    return torch.cat(ys).index_select(0, order.argsort().to(x.device))


def wild1d_logits(configs: Sequence[Mapping], states: Sequence[Mapping[str, torch.Tensor]],
                  x: torch.Tensor) -> torch.Tensor:
    """Members of one ``depth_key`` (their own configs and state dicts), shared input x (P, C, L)
    -> logits (G, P, K): ``wild1d_bank_logits`` on a bank of just them."""
    return wild1d_bank_logits(wild1d_bank(configs, states), range(len(configs)), x)


# Registered where it measured faster than one vmap per config. wildcnn1d: probe forward + backward on
# 32-member batches of bench-mnist1d-wild (32 probes, one thread) 265-290 ms with one grouped conv per
# (depth, strides) group (13-19 groups a batch) -> 130-175 ms as depth chunks of batched matmuls. Not
# wildcnn (2-D): on bench-digits-wild a grouped conv2d over padded members was slower than one plain
# conv2d per member (fit 41 -> 45 s), so its members keep the per-config vmap.
STACKED.register("wildcnn1d")(StackedForward(depth_key, wild1d_bank, wild1d_bank_logits))
