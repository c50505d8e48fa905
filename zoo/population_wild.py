"""Population training of the heterogeneous CNNs (``wildcnn``, ``wildcnn1d``), registered into
``zoo.population.POPULATIONS``.

Why not one population per identical config: a benchmark family's 2,000 members have ~2,000 distinct
configs, and even grouping by every structural choice (depth, kernels, strides, activation, residual,
norm) leaves 1,300-1,900 groups of one or two (measured: docs/results.md). So a ``WildPopulation``
holds members that share only what changes tensor shapes along the data path: the depth and, in 1-D,
the stride of every layer (``group_key``). Everything else stays per member:

- widths and kernel sizes: every member's weights sit in a padded layout, the group's widest channel
  count and largest kernel per layer (``padded_config``); a member's k-tap kernel is centred in the
  group's K taps (same output, as its 'same' padding k//2 reads the same inputs). Padded entries start
  at zero and the forward multiplies every weight by the member's 0/1 mask, so their gradients are
  exact zeros and the optimizer (zero gradient, zero weight, zero moments) leaves them at zero;
- activation and norm: the stepping members are split into (norm, activation) subsets, each computed
  on its own rows of the batch and put back in member order;
- residual connections: a per-member, per-layer 0/1 factor on the skip;
- BatchNorm: per-member batch statistics over the member's real rows only (and every position), its
  own running mean/var updated with torch's momentum rule (unbiased variance, momentum 0.1) outside
  autograd; eval mode uses them. The buffers live beside the layout (``running_mean``/``running_var``,
  (G, C_i) per layer), never in the trained flat buffer. LayerNorm (GroupNorm(1, C)) averages over the
  member's real channels only.
- dropout: member m draws bits for its own real units (rows x its channels x positions) from its own
  stream, so its masks, like everything above, do not depend on who shares its population.

A member trained in any population therefore equals the member trained alone (to float rounding: the
padded sums add exact zeros in another order), and ``extract`` cuts it back to its own state dict.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.hashing import canonical_json
from zoo.archs import build
from zoo.archs.basic import ACTIVATIONS
from zoo.population import POPULATIONS, Member, Population
from zoo.sampling import stream
from zoo.train import init_state

WILD_ARCHS = ("wildcnn", "wildcnn1d")
# ``zoo build`` keeps the plain loop for these families: on CPU the benchmark families' members are
# conv-arithmetic bound, so batching saves no per-step overhead while padding adds arithmetic; measured
# 1.5-5x slower than the plain loop (bench/zoo_build_wild.py, docs/results.md). False: build as populations.
PLAIN_BY_DEFAULT = True
BN_MOMENTUM, NORM_EPS = 0.1, 1e-5  # torch's BatchNorm / GroupNorm defaults
DROP_LEVELS = 65536  # dropout compares 16 random bits: a rate p drops round(p * 65536) of 65536 levels
_ACT = {name: cls() for name, cls in ACTIVATIONS.items()}


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h (G, B, in), w (G, out, in), b (G, out) -> (G, B, out)."""
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _kernels(cfg: Mapping) -> list[int]:
    return [int(k) for k in cfg.get("kernel_sizes", [3] * len(cfg["channels"]))]


def _strides(cfg: Mapping) -> list[int]:
    return [int(s) for s in cfg.get("strides", [1] * len(cfg["channels"]))]


def _skips(cfg: Mapping) -> list[bool]:
    """Where the member adds its input back (the rule of zoo.archs.wild / conv1d: equal channels, stride 1)."""
    chans = [int(cfg["input_shape"][0])] + [int(c) for c in cfg["channels"]]
    st = _strides(cfg)
    return [bool(cfg.get("residual", False)) and i > 0 and chans[i] == chans[i + 1] and st[i] == 1
            for i in range(len(st))]


def group_key(cfg: Mapping) -> str:
    """Members with equal keys can share a population: same depth, strides, input and classes."""
    return canonical_json({"depth": len(cfg["channels"]), "strides": _strides(cfg),
                           "input_shape": list(cfg["input_shape"]), "n_classes": int(cfg["n_classes"])})


def order_key(cfg: Mapping) -> tuple:
    """Sort a group by this before cutting it into populations: members of similar size end up together,
    so each population's padded widths stay close to its members' own (less arithmetic on zeros)."""
    return (max(int(c) for c in cfg["channels"]), sum(int(c) for c in cfg["channels"]), tuple(_kernels(cfg)))


def padded_config(configs: Sequence[Mapping], key: Callable[[Mapping], str] = group_key) -> dict:
    """The config whose module has every member's parameters as a sub-block: per layer the largest
    width and kernel, a norm if any member has one (BatchNorm: its affine params plus buffers). Members
    must share ``key`` (a population: ``group_key``; zoo.stacked only needs the depth)."""
    keys = {key(c) for c in configs}
    if len(keys) != 1:
        raise ZooError(f"wild members padded together must agree on {key.__name__}; got {len(keys)} "
                       f"different ones: {sorted(keys)[:3]}")
    depth = len(configs[0]["channels"])
    out = dict(configs[0])
    out["channels"] = [max(int(c["channels"][i]) for c in configs) for i in range(depth)]
    out["kernel_sizes"] = [max(_kernels(c)[i] for c in configs) for i in range(depth)]
    out["norm"] = "batch" if any(c.get("norm", "none") != "none" for c in configs) else "none"
    out["residual"] = False
    out.pop("dropout", None)
    return out


def _region(name: str, own: Sequence[int], padded: Sequence[int]) -> tuple[slice, ...]:
    """Where a member's tensor of shape ``own`` sits in the padded one: from 0 on channel dims, centred
    on kernel dims (conv weights' dims 2+)."""
    kernel_from = 2 if name.startswith("convs.") and name.endswith(".weight") else len(own)
    return tuple(slice((p - o) // 2, (p - o) // 2 + o) if d >= kernel_from else slice(0, o)
                 for d, (o, p) in enumerate(zip(own, padded)))


class WildPopulation(Population):
    """Members of one ``group_key`` with their own configs (``configs[m]`` for ``members[m]``)."""

    def __init__(self, arch: str, configs: Sequence[Mapping], members: Sequence[Member], device: str = "cpu"):
        if arch not in WILD_ARCHS:
            raise ZooError(f"WildPopulation trains {', '.join(WILD_ARCHS)}, not {arch!r}")
        if len(configs) != len(members):
            raise ZooError(f"{len(configs)} configs for {len(members)} members")
        padded = padded_config(configs)
        super().__init__(arch, padded, members, device)
        group = build(arch, padded).module
        # trained parameters only: BatchNorm buffers live in running_mean / running_var below
        self.layout = [(k, tuple(v.shape), v.numel()) for k, v in group.named_parameters()]
        self.depth = len(padded["channels"])
        self.kernel_sizes, self.strides = _kernels(padded), _strides(padded)
        self.configs = [dict(c) for c in configs]
        own = [build(arch, c) for c in configs]
        self.own_shapes = [[(k, tuple(v.shape)) for k, v in b.module.state_dict().items()] for b in own]
        states = [init_state(arch, c, b.spec, m.train_config, m.seed) for c, b, m in zip(configs, own, members)]
        self.flat = torch.stack([self._embed(s) for s in states]).to(device)  # (G, P), padded entries 0
        ones = [{k: torch.ones_like(v) for k, v in s.items()} for s in states]
        self.mask = torch.stack([self._embed(s) for s in ones]).to(device)  # (G, P): 1 on real entries
        self.exp_avg, self.sq_avg = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        widths = padded["channels"]
        self.running_mean = [torch.stack([_pad_to(s.get(f"norms.{i}.running_mean"), w, 0.0) for s in states]).to(device)
                             for i, w in enumerate(widths)]  # (G, C_i) per layer; padded channels unused
        self.running_var = [torch.stack([_pad_to(s.get(f"norms.{i}.running_var"), w, 1.0) for s in states]).to(device)
                            for i, w in enumerate(widths)]
        self.tracked = torch.zeros(len(members), dtype=torch.int64)  # BatchNorm's num_batches_tracked
        self._per_member()

    def _per_member(self) -> None:
        """Per-member columns in the current member order (rebuilt after ``permute``)."""
        cfgs, dev = self.configs, self.device
        self.chans = torch.tensor([[int(c) for c in cfg["channels"]] for cfg in cfgs])  # (G, depth)
        self.skip = torch.tensor([[float(s) for s in _skips(c)] for c in cfgs], device=dev)  # (G, depth)
        self.kinds = [(c.get("norm", "none"), c.get("activation", "relu")) for c in cfgs]
        self.batch_normed = torch.tensor([[k[0] == "batch"] for k in self.kinds], device=dev)  # (G, 1)
        self.wild_rates = [m.train_config.dropout for m in self.members]
        self.wild_gens = getattr(self, "wild_gens", None) or [stream(m.seed, "dropout") for m in self.members]
        self._subsets: dict[int, tuple] = {}

    def _embed(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A member's own state dict -> its (P,) row of the padded layout (zeros where it has no entry)."""
        parts = []
        for name, shape, _ in self.layout:
            t = torch.zeros(shape)
            if name in state:
                t[_region(name, state[name].shape, shape)] = state[name].float()
            parts.append(t.reshape(-1))
        return torch.cat(parts)

    def permute(self, order: Sequence[int]) -> None:
        gens = [self.wild_gens[i] for i in order]
        super().permute(order)
        idx = torch.as_tensor(list(order), device=self.device)
        self.mask = self.mask[idx].contiguous()
        self.running_mean = [r[idx].contiguous() for r in self.running_mean]
        self.running_var = [r[idx].contiguous() for r in self.running_var]
        self.tracked = self.tracked[idx.cpu()]
        self.configs = [self.configs[i] for i in order]
        self.own_shapes = [self.own_shapes[i] for i in order]
        self.wild_gens = gens
        self._per_member()

    def masks(self, k: int) -> dict[str, torch.Tensor]:
        """name -> (k, *shape) 0/1 masks of the first k members."""
        return self.params(self.mask[:k])

    def subsets(self, k: int) -> tuple[list, torch.Tensor | None, torch.Tensor | None]:
        """The first k members by (norm, activation): [((norm, act), idx (n,))] in the order of their
        first member, the permutation ``order`` that makes each subset a contiguous block (then one
        ``split``: views, whose backward is one ``cat``) and its ``inverse`` (both None: no reordering)."""
        if k not in self._subsets:
            kinds = self.kinds[:k]
            groups = {kind: [m for m in range(k) if kinds[m] == kind] for kind in dict.fromkeys(kinds)}
            subsets = [(kind, torch.tensor(ms, device=self.device)) for kind, ms in groups.items()]
            order = torch.cat([idx for _, idx in subsets])
            if bool((order == torch.arange(k, device=self.device)).all()):
                self._subsets[k] = (subsets, None, None)
            else:
                inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(k, device=self.device))
                self._subsets[k] = (subsets, order, inverse)
        return self._subsets[k]

    def counts_of(self, idx: torch.Tensor, batch: int) -> torch.Tensor:
        """Real rows in this step of the members ``idx`` (n,), on the device."""
        counts = torch.tensor(self.batch_counts) if self.batch_counts else torch.full((len(self.kinds),), batch)
        return counts[idx.cpu()].to(self.device)

    def extract(self, m: int) -> dict[str, torch.Tensor]:
        """Member m as the state dict of its own config (CPU copies)."""
        padded = self.params()
        out = {}
        for name, shape in self.own_shapes[m]:
            if name in padded:
                out[name] = padded[name][m][_region(name, shape, padded[name].shape[1:])].detach().cpu().clone()
                continue
            i = int(name.split(".")[1])
            if name.endswith("running_mean"):
                out[name] = self.running_mean[i][m, :shape[0]].cpu().clone()
            elif name.endswith("running_var"):
                out[name] = self.running_var[i][m, :shape[0]].cpu().clone()
            else:  # num_batches_tracked: every BatchNorm layer of a member counts the same steps
                out[name] = self.tracked[m].clone()
        return out

    def wild_drop(self, h: torch.Tensor, i: int, train: bool) -> torch.Tensor:
        """Inverted dropout after layer i, h (k, B, C_i, *S): member m draws 16 random bits for each of
        its real units (its rows x its channels x positions, row-major), as it would alone."""
        k, b = h.shape[:2]
        if not train or max(self.wild_rates[:k]) <= 0:
            return h
        counts = self.batch_counts or [b] * k
        scale = torch.ones_like(h)
        for m in range(k):
            rate, n, c = self.wild_rates[m], counts[m], int(self.chans[m, i])
            if rate <= 0 or n <= 0:
                continue
            level = round(rate * DROP_LEVELS)
            units = n * c * h[0, 0, 0].numel()
            words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((units + 3) // 4,), dtype=torch.int64,
                                  generator=self.wild_gens[m])
            keep = words.view(torch.int16)[:units] >= level - 32768
            scale[m, :n, :c] = keep.view(n, c, *h.shape[3:]).to(h.dtype).mul_(DROP_LEVELS / (DROP_LEVELS - level))
        return h * scale


def _pad_to(t: torch.Tensor | None, width: int, fill: float) -> torch.Tensor:
    out = torch.full((width,), fill)
    if t is not None:
        out[:len(t)] = t
    return out


def make_population(arch: str, configs: Sequence[Mapping], members: Sequence[Member],
                    device: str = "cpu") -> WildPopulation:
    return WildPopulation(arch, configs, members, device)


def _grouped_conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int) -> torch.Tensor:
    """Every member's conv at once ('same'-style padding K//2): h (k, B, Ci, *S), w (k, Co, Ci, *K),
    b (k, Co) -> (k, B, Co, *S')."""
    k, bs, ci = h.shape[:3]
    co = w.shape[1]
    conv = F.conv1d if h.dim() == 4 else F.conv2d
    xin = h.transpose(0, 1).reshape(bs, k * ci, *h.shape[3:])  # member m reads channels [m*Ci, (m+1)*Ci)
    y = conv(xin, w.reshape(k * co, ci, *w.shape[3:]), b.reshape(-1), stride=stride, padding=w.shape[-1] // 2,
             groups=k)
    return y.view(bs, k, co, *y.shape[2:]).transpose(0, 1)


def _batch_norm(pop: WildPopulation, i: int, y: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                bias: torch.Tensor, train: bool) -> torch.Tensor:
    """y (n, B, C, *S) of the members ``idx``; w, bias (n, C). Output y * scale + shift with per-member,
    per-channel (n, C) scale = w / sqrt(var + eps) and shift = bias - mean * scale (one pass)."""
    n, bs, c = y.shape[:3]
    view = (n, 1, c) + (1,) * (y.dim() - 3)
    if train:
        red = (1,) + tuple(range(3, y.dim()))
        counts = pop.counts_of(idx, bs)  # (n,) real rows
        if bool((counts == bs).all()):  # no padded rows: one fused pass for the statistics
            var, mean = torch.var_mean(y, dim=red, unbiased=False)  # (n, C) each
        else:
            rows = (torch.arange(bs, device=y.device)[None, :] < counts[:, None]).to(y.dtype)
            rows = rows.view((n, bs) + (1,) * (y.dim() - 2))
            per = (counts * math.prod(y.shape[3:])).to(y.dtype).clamp(min=1)[:, None]  # values per channel
            mean = (y * rows).sum(red) / per
            var = ((y - mean.view(view)).square() * rows).sum(red) / per  # biased: what torch normalizes with
        with torch.no_grad():  # torch's running statistics: unbiased variance, momentum 0.1
            per = (counts * math.prod(y.shape[3:])).to(y.dtype)
            live = counts > 0
            unbiased = var * (per / (per - 1).clamp(min=1))[:, None]
            rm, rv, sel = pop.running_mean[i], pop.running_var[i], idx[live]
            rm.index_copy_(0, sel, torch.lerp(rm[sel], mean[live].detach(), BN_MOMENTUM))
            rv.index_copy_(0, sel, torch.lerp(rv[sel], unbiased[live].detach(), BN_MOMENTUM))
            if i == 0:
                pop.tracked[sel.cpu()] += 1
    else:
        mean, var = pop.running_mean[i].index_select(0, idx), pop.running_var[i].index_select(0, idx)
    return bn_affine(y, mean, var, w, bias)


def bn_scale_shift(mean: torch.Tensor, var: torch.Tensor, w: torch.Tensor, bias: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval form, y * scale + shift, from per-member, per-channel (n, C) statistics and affine
    params: scale = w / sqrt(var + eps), shift = bias - mean * scale."""
    scale = w * torch.rsqrt(var + NORM_EPS)
    return scale, bias - mean * scale


def bn_affine(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, w: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
    """BatchNorm's output for y (n, B, C, *S) from per-member, per-channel (n, C) statistics and
    affine params (``bn_scale_shift``)."""
    n, c = y.shape[0], y.shape[2]
    view = (n, 1, c) + (1,) * (y.dim() - 3)
    scale, shift = bn_scale_shift(mean, var, w, bias)
    return torch.addcmul(shift.view(view), y, scale.view(view))


def masked_layer_norm(y: torch.Tensor, real: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GroupNorm(1, C) per example of y (n, B, C, *S) over member m's first ``real[m]`` channels (its real
    ones; ``real`` (n,) on the CPU) and every position; w, bias (n, C)."""
    n, bs, c = y.shape[:3]
    view = (n, 1, c) + (1,) * (y.dim() - 3)
    red = tuple(range(2, y.dim()))
    if bool((real == c).all()):  # no padded channels
        var, mean = torch.var_mean(y, dim=red, unbiased=False, keepdim=True)
    else:
        cm = (torch.arange(c)[None, :] < real[:, None]).to(y).view(view)  # (n, 1, C, 1..)
        per = (real * math.prod(y.shape[3:])).to(y).view((n, 1) + (1,) * (y.dim() - 2))
        mean = (y * cm).sum(red, keepdim=True) / per
        var = ((y - mean).square() * cm).sum(red, keepdim=True) / per
    normed = (y - mean) * torch.rsqrt(var + NORM_EPS)
    return torch.addcmul(bias.view(view), normed, w.view(view))


def _norm_act(pop: WildPopulation, i: int, y: torch.Tensor, p: Mapping[str, torch.Tensor],
              masks: Mapping[str, torch.Tensor], train: bool) -> torch.Tensor:
    subsets, order, inverse = pop.subsets(y.shape[0])
    ys = y if order is None else y.index_select(0, order)
    parts = ys.split([len(idx) for _, idx in subsets]) if len(subsets) > 1 else [ys]
    outs = []
    for part, ((norm, act), idx) in zip(parts, subsets):
        if norm != "none":
            w, bias = ((p[f"norms.{i}.{n}"] * masks[f"norms.{i}.{n}"]).index_select(0, idx) for n in ("weight", "bias"))
            part = (_batch_norm(pop, i, part, idx, w, bias, train) if norm == "batch"
                    else masked_layer_norm(part, pop.chans[idx.cpu(), i], w, bias))
        outs.append(_ACT[act](part))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if inverse is None else out.index_select(0, inverse)


def _forward(pop: WildPopulation, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    """x (k, B, C, *S) -> logits (k, B, K) of the first k members."""
    k = x.shape[0]
    masks = pop.masks(k)
    w = {name: p[name] * masks[name] for name in p if not name.startswith("norms.")}  # padded grads: 0
    bn = pop.batch_normed[:k]
    h = x
    for i in range(pop.depth):
        # A conv bias feeding BatchNorm has a true gradient of exactly 0 in training (the batch mean
        # removes it), but its computed gradient is rounding noise (~1e-10) that Adam/RMSprop normalize
        # into lr-sized random steps, different for every kernel: detach it, so it gets its true 0.
        bias = torch.where(bn, w[f"convs.{i}.bias"].detach(), w[f"convs.{i}.bias"])
        y = _grouped_conv(h, w[f"convs.{i}.weight"], bias, pop.strides[i])
        y = pop.wild_drop(_norm_act(pop, i, y, p, masks, train), i, train)
        skip = pop.skip[:k, i]
        if bool(skip.any()):  # members without a skip here add 0 * h (exactly y)
            c = y.shape[2]
            prev = h[:, :, :c] if h.shape[2] >= c else F.pad(h, (0, 0) * (h.dim() - 3) + (0, c - h.shape[2]))
            y = torch.addcmul(y, skip.view((k,) + (1,) * (y.dim() - 1)), prev)
        h = y
    logits = _linear(h.mean(dim=tuple(range(3, h.dim()))), w["head.weight"], w["head.bias"])
    if not any(kind[0] != "none" for kind in pop.kinds[:k]):
        # no stepping member has a norm: its (zero, masked) norm params join the graph with zero gradients
        unused = sum(p[n].flatten(1).sum(1) for n in p if n.startswith("norms."))
        logits = logits + 0.0 * unused[:, None, None] if torch.is_tensor(unused) else logits
    return logits


for _arch in WILD_ARCHS:
    POPULATIONS.register(_arch)(_forward)
# zoo.build reads these off the registered forward: how to group, order and build wild populations
_forward.group_key, _forward.order_key = group_key, order_key
_forward.padded_config, _forward.make_population = padded_config, make_population
_forward.plain_by_default = PLAIN_BY_DEFAULT
