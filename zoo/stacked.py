"""Eval-mode forwards of many trained members at once, members of differing configs included.

``weightnet.probes`` runs its learned probe inputs through every model of a training batch, many
times per WeightNet fit. Models of one config stack into one ``vmap``; but in a heterogeneous (wild)
zoo nearly every member has its own config (800 mnist1d-wild members: 713 configs), so the probes ran
one tiny forward per model. A ``StackedForward`` registered here for an architecture runs every
member of one ``key`` (for the 1-D wild CNNs: depth, strides, input and classes) in one padded layout,
the one ``zoo.population_wild`` trains in: per layer the widest channel count and largest kernel of
the stacked members, each member's tensors zero-padded into it (kernels centred). Padded weights are
zero, so padded channels never reach a real one, and the result equals each member's own forward up
to float rounding (the padded sums add exact zeros). Per-member differences that are not shapes
(norm kind, activation, residual) are applied per member. Eval mode only: BatchNorm reads running
statistics, dropout is off. Gradients flow to the shared input (the probes), not to the members.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from core.registry import Registry
from zoo.population_wild import (_ACT, _grouped_conv, _kernels, _linear, _region, _skips, _strides, bn_affine,
                                 group_key, masked_layer_norm, padded_config)


@dataclass(frozen=True)
class StackedForward:
    """How to run members of one architecture together: ``key(config)`` names the members that may
    share one call; ``logits(configs, states, x)`` maps a shared input x (P, *input_shape) to (G, P, K)."""

    key: Callable[[Mapping], str]
    logits: Callable[[Sequence[Mapping], Sequence[Mapping[str, torch.Tensor]], torch.Tensor], torch.Tensor]


STACKED: Registry[StackedForward] = Registry("stacked forward")


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


def _norm(kind: str, y: torch.Tensor, p: Mapping[str, torch.Tensor], i: int, idx: torch.Tensor,
          chans: torch.Tensor) -> torch.Tensor:
    """Member rows ``idx`` of y (n, P, C, *S) through their norm of layer i, eval mode; chans (G,) CPU."""
    if kind == "none":
        return y
    w, b = p[f"norms.{i}.weight"].index_select(0, idx), p[f"norms.{i}.bias"].index_select(0, idx)
    if kind == "batch":  # running statistics
        return bn_affine(y, p[f"norms.{i}.running_mean"].index_select(0, idx),
                         p[f"norms.{i}.running_var"].index_select(0, idx), w, b)
    return masked_layer_norm(y, chans[idx.cpu()], w, b)


def wild_logits(configs: Sequence[Mapping], states: Sequence[Mapping[str, torch.Tensor]],
                x: torch.Tensor) -> torch.Tensor:
    """Members of one ``group_key`` (their own configs and state dicts), shared input x (P, C, *S)
    -> logits (G, P, K), as each member's own module in eval mode would give them."""
    G = len(configs)
    padded = padded_config(configs)
    p = _stack_padded(padded, states, x.device, x.dtype)
    strides, depth = _strides(padded), len(padded["channels"])
    chans = torch.tensor([[int(c) for c in cfg["channels"]] for cfg in configs])  # (G, depth)
    skip = torch.tensor([[float(s) for s in _skips(c)] for c in configs], dtype=x.dtype, device=x.device)
    kinds = [(c.get("norm", "none"), c.get("activation", "relu")) for c in configs]
    subsets = {kind: torch.tensor([m for m in range(G) if kinds[m] == kind]) for kind in dict.fromkeys(kinds)}
    order = torch.cat(list(subsets.values()))
    inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(G))
    h = x.unsqueeze(0).expand(G, *x.shape)
    for i in range(depth):
        y = _grouped_conv(h, p[f"convs.{i}.weight"], p[f"convs.{i}.bias"], strides[i])  # (G, P, C_i, *S_i)
        parts = []
        for (norm, act), idx in subsets.items():  # each (norm, activation) on its own members' rows
            parts.append(_ACT[act](_norm(norm, y.index_select(0, idx), p, i, idx, chans[:, i])))
        y = (torch.cat(parts) if len(parts) > 1 else parts[0]).index_select(0, inverse.to(y.device))
        if bool(skip[:, i].any()):  # a member without this skip adds 0 * h
            c = y.shape[2]
            prev = h[:, :, :c] if h.shape[2] >= c else F.pad(h, (0, 0) * (h.dim() - 3) + (0, c - h.shape[2]))
            y = torch.addcmul(y, skip[:, i].view((G,) + (1,) * (y.dim() - 1)), prev)
        h = y
    return _linear(h.mean(dim=tuple(range(3, h.dim()))), p["head.weight"], p["head.bias"])


# Registered where it measured faster than one vmap per config (WeightNet fits on 482 members of the
# benchmark zoos, 250 steps, one thread): wildcnn1d 50 -> 38 s, tiny 1-D members whose probe runs are
# call-overhead bound. Not wildcnn: on bench-digits-wild the fit went 41 -> 45 s (grouped conv2d over
# padded members is slower than one plain conv2d per member; cutting calls to <= 1.5x padding waste
# did not help), so its members keep the per-config vmap. wild_logits itself runs both.
STACKED.register("wildcnn1d")(StackedForward(group_key, wild_logits))
