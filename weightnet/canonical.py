"""Canonical forms of a weight vector under its spec's permutation groups, applied before tokenizing.

Each method picks one permutation per group and applies it with ``core.spec.permute``, so a group is
reordered consistently on every axis that names it (the next layer's inputs, residual streams shared by
many tensors, attention heads in blocks). Permuted copies of one network map to the same canonical
weights (up to ties), which is what makes position-aware tokenizers invariant.

- ``weight_sort``: units sorted by the squared norm of everything they touch (incoming and outgoing);
- ``activation_sort``: units sorted by mean |activation| on a fixed probe batch (needs a forward);
- ``align``: weight matching to a reference model of the same spec (coordinate descent over groups
  with ``scipy.optimize.linear_sum_assignment``), started from the weight-sorted form so the result
  does not depend on the input's order.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from core.hashing import stable_hash
from core.registry import Registry
from core.spec import WeightSpec, permute

State = Mapping[str, torch.Tensor]
# forward(state) -> {group name: (units,) score}; groups it omits fall back to weight norms
ActivationFn = Callable[[State], dict[str, torch.Tensor]]


def _users(spec: WeightSpec, state: State, group: str) -> list[tuple[str, int, int]]:
    """(tensor name, axis, block) for every float axis acted on by ``group``."""
    return [(p.name, ax, b) for p in spec.params for ax, (g, b) in enumerate(zip(p.axes, p.blocks))
            if g == group and state[p.name].is_floating_point()]


def _slices(t: torch.Tensor, ax: int, block: int) -> torch.Tensor:
    t = t.movedim(ax, 0)
    return t.reshape(t.shape[0] // block, -1)


def weight_scores(state: State, spec: WeightSpec) -> dict[str, torch.Tensor]:
    """Per group: (units,) total squared norm of the unit's slices; unchanged by other groups' permutations."""
    out = {}
    for g in spec.groups:
        score = torch.zeros(g.size, dtype=torch.float64)
        for name, ax, b in _users(spec, state, g.name):
            score += _slices(state[name].double(), ax, b).pow(2).sum(1)
        out[g.name] = score
    return out


def _sort_perms(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {g: torch.argsort(s, descending=True, stable=True) for g, s in scores.items()}


def weight_sort(state: State, spec: WeightSpec) -> dict[str, torch.Tensor]:
    return permute(state, spec, _sort_perms(weight_scores(state, spec)))


def activation_sort(state: State, spec: WeightSpec, forward: ActivationFn | None) -> dict[str, torch.Tensor]:
    scores = weight_scores(state, spec)
    if forward is not None:
        scores.update({g: s.double() for g, s in forward(state).items() if g in scores and s.numel() == scores[g].numel()})
    return permute(state, spec, _sort_perms(scores))


def align(state: State, spec: WeightSpec, reference: State, rounds: int = 3) -> dict[str, torch.Tensor]:
    """Weight matching of ``state`` to ``reference`` (same spec); both first weight-sorted."""
    base = weight_sort(state, spec)
    ref = weight_sort(reference, spec)
    perms = {g.name: torch.arange(g.size) for g in spec.groups}
    for _ in range(rounds):
        changed = False
        for g in spec.groups:
            if g.size < 2:
                continue
            others = {k: v for k, v in perms.items() if k != g.name}
            cur = permute(base, spec, others)
            cost = torch.zeros(g.size, g.size, dtype=torch.float64)
            for name, ax, b in _users(spec, base, g.name):
                cost += _slices(ref[name].double(), ax, b) @ _slices(cur[name].double(), ax, b).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(np.asarray(cols), dtype=torch.long)
            if not torch.equal(new, perms[g.name]):
                perms[g.name], changed = new, True
        if not changed:
            break
    return permute(base, spec, perms)


def spec_key(spec: WeightSpec) -> str:
    """Models with equal keys can be aligned to each other."""
    return stable_hash(spec.to_dict())


# method -> fn(state, spec, forward, reference): the permutation handlings a TokenizerConfig may name
Canonicalizer = Callable[[State, WeightSpec, "ActivationFn | None", "State | None"], dict[str, torch.Tensor]]
CANONICALIZERS: Registry[Canonicalizer] = Registry("permutation handling")


@CANONICALIZERS.register("invariant")  # unchanged: the encoder sees each group's units as a set
@CANONICALIZERS.register("none")  # unchanged, with positions: the ablation
def _unchanged(state: State, spec: WeightSpec, forward: ActivationFn | None, reference: State | None) -> dict:
    return dict(state)


@CANONICALIZERS.register("weight_sort")
def _weight_sort(state: State, spec: WeightSpec, forward: ActivationFn | None, reference: State | None) -> dict:
    return weight_sort(state, spec)


@CANONICALIZERS.register("activation_sort")
def _activation_sort(state: State, spec: WeightSpec, forward: ActivationFn | None, reference: State | None) -> dict:
    return activation_sort(state, spec, forward)


@CANONICALIZERS.register("align")
def _align(state: State, spec: WeightSpec, forward: ActivationFn | None, reference: State | None) -> dict:
    """Weight matching to ``reference``; weight_sort without a reference of the same spec."""
    return weight_sort(state, spec) if reference is None else align(state, spec, reference)


def canonicalize(state: State, spec: WeightSpec, method: str, forward: ActivationFn | None = None,
                 reference: State | None = None) -> dict[str, torch.Tensor]:
    """``state`` in the canonical order of ``method`` (a CANONICALIZERS entry)."""
    return CANONICALIZERS.get(method)(state, spec, forward, reference)


# --- activations from the architecture's own module ---------------------------------------------
def module_activations(arch: str, arch_config: Mapping, spec: WeightSpec, probe_size: int = 32,
                       seed: int = 0) -> ActivationFn | None:
    """A forward that scores each group's units by mean |output| of the module that produces them, on a
    fixed Gaussian probe batch. None when the architecture cannot be rebuilt here (then weight norms)."""
    try:
        from zoo.archs import build

        module = build(arch, arch_config).module.eval()
    except Exception:  # unknown or external architecture: the caller falls back to weight norms
        return None
    shape = arch_config.get("input_shape")
    if not shape:
        return None
    g = torch.Generator().manual_seed(seed)
    if arch_config.get("input_dtype") == "long" or arch_config.get("vocab_size"):
        probe = torch.randint(0, int(arch_config.get("vocab_size", 2)), (probe_size, *shape), generator=g)
    else:
        probe = torch.randn(probe_size, *shape, generator=g)
    producers: dict[str, tuple[str, int, bool]] = {}
    for p in spec.params:
        if p.role == "weight" and p.kind in ("linear", "conv", "attn_q", "attn_k", "attn_v", "attn_o") \
                and p.axes and p.axes[0] is not None and p.axes[0] not in producers and "." in p.name:
            producers[p.axes[0]] = (p.name.rsplit(".", 1)[0], p.blocks[0], len(p.shape) > 2)
    modules = dict(module.named_modules())

    def forward(state: State) -> dict[str, torch.Tensor]:
        module.load_state_dict(dict(state), strict=False)
        seen: dict[str, torch.Tensor] = {}
        hooks = []
        for group, (mname, block, channel_first) in producers.items():
            if mname not in modules:
                continue

            def hook(_m, _inp, out, group=group, block=block, channel_first=channel_first):
                if isinstance(out, torch.Tensor):
                    a = out.detach().abs().movedim(1 if channel_first else -1, 0)
                    seen[group] = a.reshape(a.shape[0] // block, -1).double().mean(1)

            hooks.append(modules[mname].register_forward_hook(hook))
        try:
            with torch.no_grad():
                module(probe)
        except Exception:
            pass  # partial scores are fine: missing groups use weight norms
        finally:
            for h in hooks:
                h.remove()
        return seen

    return forward
