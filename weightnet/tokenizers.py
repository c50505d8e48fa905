"""Tokenizers: pure functions (state dict, WeightSpec, TokenizerConfig) -> Tokens. Registry ``TOKENIZERS``.

A *stream* is one (tensor, axis) pair: every axis that a permutation group acts on gives one token per
unit of the group (the unit's slice of the tensor: incoming weights on axis 0, outgoing weights on
axis 1, a head's block of rows...), and a fixed axis 0 (classes, positions) gives one token per row.
A unit's features are statistics and sorted-value quantiles over ALL entries of its slice, so they
accept any fan-in and do not change when any other group permutes the slice's entries; permuting the
unit's own group only reorders tokens, which the set-style encoder ignores.

- ``neuron``: one token per unit (a weight's output unit also carries its bias value, and every unit
  token the mean features of the same unit in the group's other tensors: incoming <-> outgoing);
- ``layer``: one token per stream: mean and std of its unit features, and their correlation across
  units with the partner features (so coupling stays visible);
- ``global``: all parameters flattened (spec order) and chunked; NOT invariant (ablation / with
  canonicalization).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Mapping

import numpy as np
import torch

from core.errors import BadWeights, ZooError
from core.registry import Registry
from core.spec import LAYER_KINDS, ParamSpec, WeightSpec
from weightnet.config import TokenizerConfig

TOKENIZERS: Registry = Registry("tokenizer")
N_STATS = 7  # mean, std, mean|x|, rms, min, max, max|x|
N_META = 6  # relative depth, log kernel, log fan-in, log fan-out, log units in stream, log entries per unit
MAX_POS = 512  # position ids are clamped to [0, MAX_POS]; 0 = inside a permutable set
MAX_DEPTH = 64
CDF_AT_ONCE = 1 << 22  # unit_features: largest (entries x n_quantiles) compared in one op
# axis roles: which side of the tensor the token reads
ROLE_OUT, ROLE_IN, ROLE_ROW, ROLE_FLAT = 0, 1, 2, 3
N_ROLES = 3 * 4  # (weight | bias | buffer) x axis role


@dataclass(frozen=True)
class Tokens:
    features: torch.Tensor  # (T, F) float32
    kind: torch.Tensor  # (T,) long: index in core.spec.LAYER_KINDS
    role: torch.Tensor  # (T,) long: param role * 4 + axis role
    depth: torch.Tensor  # (T,) long, clamped to MAX_DEPTH - 1
    meta: torch.Tensor  # (T, N_META) float32
    position: torch.Tensor  # (T,) long: 0 inside a permutable set, else 1 + index (clamped)
    group: torch.Tensor  # (T,) long: 1 + index of the spec group whose units the tokens are, 0 = fixed axis
    mask: torch.Tensor  # (T,) bool: True for real tokens (False only after padding)
    # (S,) float32: StatNN-style per-layer statistics of the whole model (see ``layer_summary``); its
    # length depends on the layer count, so the model pads or truncates it to the training width
    summary: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, torch.Tensor]) -> "Tokens":
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def feature_dim(cfg: TokenizerConfig) -> int:
    base = N_STATS + cfg.n_quantiles + 2  # + bias value and has-bias flag
    return {"neuron": 2 * base, "layer": 3 * base, "global": cfg.chunk}[cfg.name]


def tokenize(state: Mapping[str, torch.Tensor], spec: WeightSpec, cfg: TokenizerConfig) -> Tokens:
    tok = TOKENIZERS.get(cfg.name)(state, spec, cfg)
    return dataclasses.replace(tok, summary=summarize(state, spec, cfg.summary, cfg.width_invariant))


# --- whole-model summary (StatNN features) ---------------------------------------------------------
SUMMARY_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
N_SUMMARY = 2 + len(SUMMARY_QUANTILES)  # per (layer, weight|bias): mean, variance, quantiles
_SUMMARY_Q = np.array(SUMMARY_QUANTILES, dtype=np.float64)


def _layer_stats(ts: list[torch.Tensor]) -> list[float]:
    """Mean and variance (float64), then exact linear-interpolation quantiles (numpy's default method)
    of every entry of ``ts``. One numpy sort: exact, and on CPU it is far faster than the alternatives
    (2.4M entries, one thread, measured: np.sort 15 ms, torch.kthvalue 40 ms per quantile, torch.sort
    370 ms; torch.quantile refuses > 16M entries), so no subsampling is needed."""
    x = np.concatenate([t.detach().reshape(-1).float().cpu().numpy() for t in ts])
    d = x.astype(np.float64)
    mean = d.mean()
    d -= mean
    var = np.square(d, out=d).mean()
    v = np.sort(x)
    pos = _SUMMARY_Q * (x.size - 1)  # float64, as np.quantile
    lo, hi = np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)
    w = (pos - lo).astype(np.float32)
    return [float(mean), float(var)] + (v[lo] * (1 - w) + v[hi] * w).tolist()


def per_layer_stats(state: Mapping[str, torch.Tensor], spec: WeightSpec, width_invariant: bool = False) -> np.ndarray:
    """(n_layers, 2 * N_SUMMARY) float64: per layer in spec order, mean, variance and 0/25/50/75/100%
    quantiles of all its weights, then of all its biases (zeros without bias), as in StatNN (Unterthiner
    et al. 2020). Statistics of a multiset of entries: invariant to every neuron permutation."""
    layers: dict[int, dict[str, list[torch.Tensor]]] = {}
    for p in spec.params:
        t = state[p.name]
        if p.role == "buffer" or not t.is_floating_point() or t.numel() == 0:
            continue
        layers.setdefault(p.layer, {"weight": [], "bias": []}).setdefault(p.role, []).append(t)
    rows = []
    for layer in sorted(layers):
        row: list[float] = []
        for role in ("weight", "bias"):
            ts = layers[layer].get(role) or []
            stats = _layer_stats(ts) if ts else [0.0] * N_SUMMARY
            if width_invariant and role == "weight" and ts:  # fan-in scaled: mean, quantiles x m, variance x m^2
                m = ts[0].numel() / max(1, ts[0].shape[0])
                stats = [stats[0] * m, stats[1] * m * m] + [q * m for q in stats[2:]]
            row += stats
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), 2 * N_SUMMARY)


def layer_summary(state: Mapping[str, torch.Tensor], spec: WeightSpec) -> torch.Tensor:
    """(n_layers * 2 * N_SUMMARY,): ``per_layer_stats`` flattened, layer by layer. Position i means the
    same statistic of the same layer only within one architecture (StatNN's setting)."""
    return torch.tensor(per_layer_stats(state, spec).reshape(-1), dtype=torch.float32)


N_POOLED = 5 * 2 * N_SUMMARY + 2


def pooled_summary(state: Mapping[str, torch.Tensor], spec: WeightSpec) -> torch.Tensor:
    """(N_POOLED,): a depth-free summary that means the same thing for every architecture: the first and
    the last layer's statistics, the mean, min and max of each statistic over all layers, then
    log(1 + parameters) and log(1 + layers)."""
    return _pooled(per_layer_stats(state, spec), state, spec)


def _pooled(per: np.ndarray, state: Mapping[str, torch.Tensor], spec: WeightSpec,
            width_invariant: bool = False) -> torch.Tensor:
    """``pooled_summary`` from the model's ``per_layer_stats`` (computed once when both summaries are wanted)."""
    if per.shape[0] == 0:
        return torch.zeros(N_POOLED)
    n_params = sum(int(state[p.name].numel()) for p in spec.params if p.role != "buffer")
    size = [0.0 if width_invariant else math.log1p(n_params), math.log1p(per.shape[0])]  # widening changes n_params
    out = np.concatenate([per[0], per[-1], per.mean(0), per.min(0), per.max(0), size])
    return torch.tensor(out, dtype=torch.float32)


def summarize(state: Mapping[str, torch.Tensor], spec: WeightSpec, kind: str, width_invariant: bool = False) -> torch.Tensor:
    """The whole-model summary a TokenizerConfig asks for: ``layers``, ``pooled`` or ``both`` (pooled first,
    so its positions stay aligned across architectures whatever the layer count). ``auto`` is settled by
    ``WeightNetPredictor.prepare`` from the training set; for one model on its own it means ``layers``."""
    if width_invariant and kind in ("layers", "pooled", "auto"):
        per = per_layer_stats(state, spec, True)
        return _pooled(per, state, spec, True) if kind == "pooled" else torch.tensor(per.reshape(-1), dtype=torch.float32)
    if kind == "layers":
        return layer_summary(state, spec)
    if kind == "pooled":
        return pooled_summary(state, spec)
    if kind == "both":
        per = per_layer_stats(state, spec, width_invariant)
        return torch.cat([_pooled(per, state, spec, width_invariant), torch.tensor(per.reshape(-1), dtype=torch.float32)])
    if kind == "auto":  # one model has one layout; a predictor resolves auto over its training set first
        return layer_summary(state, spec)
    raise ZooError(f"unknown summary {kind!r} (known: layers, pooled, both, auto)")


# --- per-unit features ----------------------------------------------------------------------------
def unit_features(x: torch.Tensor, n_quantiles: int) -> torch.Tensor:
    """(n, m) unit slices -> (n, N_STATS + n_quantiles); each row depends only on the multiset of its entries.

    Sort-free and single-precision reductions only (a ResNet-18 has 11.7M entries; sorting them or
    float64 sums cost seconds): mean, std, mean |x|, rms, min, max, max |x|, then the empirical CDF at
    ``n_quantiles`` standardized points mean + t * std, t in [-1.5, 1.5] (exact counts)."""
    x = x.float()
    m = x.shape[1]
    mean = x.mean(1)
    l1 = torch.linalg.vector_norm(x, 1, dim=1) / m
    rms = torch.linalg.vector_norm(x, 2, dim=1) / math.sqrt(m)
    std = (rms.double() ** 2 - mean.double() ** 2).clamp_min(0).sqrt().float()
    lo, hi = x.amin(1), x.amax(1)  # (aminmax is pathologically slow on CPU here)
    stats = [mean, std, l1, rms, lo, hi, torch.maximum(-lo, hi)]
    levels = torch.linspace(-1.5, 1.5, n_quantiles) if n_quantiles > 1 else torch.zeros(n_quantiles)
    cuts = mean[:, None] + levels * std[:, None]  # (n, n_quantiles)
    if x.numel() * n_quantiles <= CDF_AT_ONCE:  # one comparison for every level: few ops matter on small models
        below = (x[:, None, :] <= cuts[:, :, None]).sum(2, dtype=torch.int32)
    else:  # one level at a time: the bool temporary stays the size of x
        below = torch.stack([(x <= cuts[:, j, None]).sum(1, dtype=torch.int32) for j in range(n_quantiles)], 1)
    cdf = below.float() / m
    return torch.cat([torch.stack(stats, 1), cdf], 1)


def _unit_slices(t: torch.Tensor, ax: int, block: int) -> torch.Tensor:
    """(n, block * rest): row i holds every entry of unit i (indices [i*block, (i+1)*block) on ``ax``)."""
    t = t.movedim(ax, 0)
    n = t.shape[0] // block
    return t.reshape(n, -1)


def _pool(feats: torch.Tensor, budget: int, ordered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``budget`` rows: buckets of units averaged. Unordered streams sort units first (by rms,
    then mean) so the buckets do not depend on the units' order. Returns (features, bucket index)."""
    n = feats.shape[0]
    if n <= budget:
        return feats, torch.arange(n)
    if not ordered:
        key = feats[:, 3].double() * 1e6 + feats[:, 0].double()
        feats = feats[torch.argsort(key, stable=True)]
    bucket = torch.arange(n) * budget // n
    assign = (bucket[None, :] == torch.arange(budget)[:, None]).float()  # (budget, n); index_add_ is slow here
    return (assign @ feats) / assign.sum(1, keepdim=True).clamp_min(1), torch.arange(budget)


@dataclass(frozen=True)
class _Stream:
    param: ParamSpec
    axis: int
    group: str | None
    feats: torch.Tensor  # (units, F) before pooling
    ax_role: int


def _bias_for(p: ParamSpec, spec: WeightSpec, state: Mapping[str, torch.Tensor]) -> ParamSpec | None:
    if p.role != "weight" or not p.name.endswith("weight"):
        return None
    name = p.name[: -len("weight")] + "bias"
    if name not in state:
        return None
    try:
        b = spec.param(name)
    except KeyError:
        return None
    if b.shape == (p.shape[0],) and b.axes == (p.axes[0],) and b.blocks == (p.blocks[0],):
        return b
    return None


def _streams(state: Mapping[str, torch.Tensor], spec: WeightSpec, nq: int, width_invariant: bool = False) -> list[_Stream]:
    out: list[_Stream] = []
    consumed: set[str] = set()
    for p in spec.params:
        if p.name in consumed:
            continue
        t = state[p.name]
        if not t.is_floating_point() or t.dim() == 0 or t.numel() == 0:
            continue
        bias = _bias_for(p, spec, state)
        for ax, (g, b) in enumerate(zip(p.axes, p.blocks)):
            if g is None and ax != 0:
                continue
            block = b if g is not None else 1
            slices = _unit_slices(t, ax, block)
            f = unit_features(slices, nq)
            if width_invariant:  # fan-in sums: Net2Wider divides entries by k and repeats them k times
                f[:, :N_STATS] *= slices.shape[1]
            extra = torch.zeros(f.shape[0], 2)
            if ax == 0 and bias is not None:
                extra[:, 0] = _unit_slices(state[bias.name], 0, block).double().mean(1).float()
                extra[:, 1] = 1.0
            role = ROLE_OUT if ax == 0 and g is not None else (ROLE_ROW if g is None else ROLE_IN)
            out.append(_Stream(p, ax, g, torch.cat([f, extra], 1), role))
        if bias is not None:
            consumed.add(bias.name)
    if not out:
        raise BadWeights("spec has no floating-point tensor to tokenize")
    return out


def _partners(streams: list[_Stream]) -> list[torch.Tensor]:
    """Per stream (units, F): the mean features of the same units in the group's OTHER streams (a
    neuron's incoming token sees its outgoing weights and vice versa), so coupling across layers is
    visible; zeros for fixed axes and groups used by one stream only."""
    totals: dict[str, tuple[torch.Tensor, int]] = {}
    for s in streams:
        if s.group is not None:
            tot, cnt = totals.get(s.group, (torch.zeros_like(s.feats, dtype=torch.float64), 0))
            totals[s.group] = (tot + s.feats.double(), cnt + 1)
    out = []
    for s in streams:
        partner = torch.zeros_like(s.feats)
        if s.group is not None and totals[s.group][1] > 1:
            tot, cnt = totals[s.group]
            partner = ((tot - s.feats.double()) / (cnt - 1)).float()
        out.append(partner)
    return out


def _meta(p: ParamSpec, spec: WeightSpec, n_units: int, per_unit: int, width_invariant: bool = False) -> list[float]:
    kernel = math.prod(p.shape[2:]) if len(p.shape) > 2 else 1
    fan_in = math.prod(p.shape[1:]) if len(p.shape) > 1 else 1
    rel = p.layer / max(1, spec.n_layers - 1)
    if width_invariant:  # fan-in, fan-out, units and entries per unit all grow with width
        return [rel, math.log(kernel), 0.0, 0.0, 0.0, 0.0]
    return [rel, math.log(kernel), math.log(fan_in), math.log(p.shape[0]), math.log(max(1, n_units)),
            math.log(max(1, per_unit))]


def _assemble(rows: list[tuple[torch.Tensor, ParamSpec, int, torch.Tensor, int, list[float]]]) -> Tokens:
    """rows: (features (k, F), param, axis role, positions (k,), group id, meta). Per-row values are
    repeated k times in one op per field (a small CNN spends as long in per-row ops as in its features)."""
    counts = torch.tensor([f.shape[0] for f, *_ in rows])
    per_row = torch.tensor([[LAYER_KINDS.index(p.kind), ("weight", "bias", "buffer").index(p.role) * 4 + ax_role,
                             min(p.layer, MAX_DEPTH - 1), gid] for _, p, ax_role, _, gid, _ in rows])
    kind, role, depth, group = (c.contiguous() for c in per_row.repeat_interleave(counts, 0).unbind(1))
    meta = torch.tensor([m for *_, m in rows], dtype=torch.float32).repeat_interleave(counts, 0)
    f = torch.cat([r[0] for r in rows])
    pos = torch.cat([r[3] for r in rows]).clamp(0, MAX_POS)
    return Tokens(f, kind, role, depth, meta, pos, group, torch.ones(f.shape[0], dtype=torch.bool))


def _group_ids(spec: WeightSpec) -> dict[str, int]:
    return {g.name: i + 1 for i, g in enumerate(spec.groups)}


@TOKENIZERS.register("neuron")
def neuron_tokens(state: Mapping[str, torch.Tensor], spec: WeightSpec, cfg: TokenizerConfig) -> Tokens:
    ordered = cfg.permutation != "invariant"
    streams = _streams(state, spec, cfg.n_quantiles, cfg.width_invariant)
    budget = max(2, min(cfg.unit_budget, cfg.max_tokens // len(streams)))
    gids = _group_ids(spec)
    rows = []
    for s, partner in zip(streams, _partners(streams)):
        n = s.feats.shape[0]
        f, idx = _pool(torch.cat([s.feats, partner], 1), budget, ordered or s.group is None)
        positions = idx + 1 if (ordered or s.group is None) else torch.zeros_like(idx)
        per_unit = s.param.numel // max(1, n)
        rows.append((f, s.param, s.ax_role, positions, gids.get(s.group, 0),
                     _meta(s.param, spec, n, per_unit, cfg.width_invariant)))
    return _assemble(rows)


@TOKENIZERS.register("layer")
def layer_tokens(state: Mapping[str, torch.Tensor], spec: WeightSpec, cfg: TokenizerConfig) -> Tokens:
    gids = _group_ids(spec)
    rows = []
    streams = _streams(state, spec, cfg.n_quantiles, cfg.width_invariant)
    for s, partner in zip(streams, _partners(streams)):
        n = s.feats.shape[0]
        own, other = s.feats.double(), partner.double()
        a, b = own - own.mean(0), other - other.mean(0)
        # correlation across units of each own feature with the partner's: sees the coupling
        corr = (a * b).mean(0) / (a.pow(2).mean(0).sqrt() * b.pow(2).mean(0).sqrt() + 1e-12)
        f = torch.cat([own.mean(0), own.std(0, correction=0), corr]).float()[None]
        rows.append((f, s.param, s.ax_role, torch.zeros(1, dtype=torch.long), gids.get(s.group, 0),
                     _meta(s.param, spec, n, s.param.numel // max(1, n), cfg.width_invariant)))
    return _assemble(rows)


@TOKENIZERS.register("global")
def global_tokens(state: Mapping[str, torch.Tensor], spec: WeightSpec, cfg: TokenizerConfig) -> Tokens:
    rows = []
    params = [p for p in spec.params if state[p.name].is_floating_point() and state[p.name].numel() > 0]
    if not params:
        raise BadWeights("spec has no floating-point tensor to tokenize")
    per_param = max(1, cfg.max_tokens // len(params))
    for p in params:
        flat = state[p.name].reshape(-1).float()
        n_chunks = -(-flat.numel() // cfg.chunk)
        flat = torch.nn.functional.pad(flat, (0, n_chunks * cfg.chunk - flat.numel()))
        f, idx = _pool(flat.reshape(n_chunks, cfg.chunk), per_param, ordered=True)
        rows.append((f, p, ROLE_FLAT, idx + 1, 0, _meta(p, spec, n_chunks, cfg.chunk)))
    return _assemble(rows)

