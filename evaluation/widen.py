"""Function-preserving widening (Net2WiderNet without noise, Chen et al. 2016), driven by the spec.

Every hidden unit of every permutation group is duplicated ``factor`` times. A tensor that carries a
group on its *output* axis (axis 0 of a weight, the only axis of a bias, norm parameter or buffer)
gets the copies verbatim, so the copies compute identical activations; a tensor that reads the group
on an *input* axis (axis >= 1 of a weight) gets the copies divided by ``factor``, so the next layer
sums ``factor`` equal halves back to the original pre-activation. The function, hence every
function-defined label (accuracies, losses, robustness), is unchanged; weight statistics are not.
"""
from __future__ import annotations

import dataclasses

import torch

from core.errors import ZooError
from weightnet.data import ZooSample
from zoo.archs import build

WIDTH_KEYS = ("width", "channels", "hidden_size", "embed_dim")
SUPPORTED_KINDS = ("linear", "conv", "norm", "buffer")


def _unit_index(n_units: int, block: int, factor: int) -> torch.Tensor:
    """Index list that repeats every unit (a block of ``block`` entries) ``factor`` times in place."""
    units = torch.arange(n_units).repeat_interleave(factor)  # (n_units * factor,)
    return (units[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def widen_state(state: dict[str, torch.Tensor], spec, factor: int) -> dict[str, torch.Tensor]:
    """The widened state dict (every group ``factor`` times larger)."""
    if factor < 1:
        raise ZooError(f"widening factor must be >= 1, got {factor}")
    sizes = {g.name: g.size for g in spec.groups}
    out = {}
    for p in spec.params:
        if p.kind not in SUPPORTED_KINDS:
            raise ZooError(f"cannot widen tensor {p.name!r} of kind {p.kind!r} (linear/conv/norm only)")
        t = state[p.name]
        for ax, (g, b) in enumerate(zip(p.axes, p.blocks)):
            if g is None:
                continue
            t = t.index_select(ax, _unit_index(sizes[g], b, factor))
            if ax >= 1 and p.role == "weight":
                t = t / factor
        out[p.name] = t.contiguous()
    return out


def widen_config(arch_config: dict, factor: int) -> dict:
    cfg = dict(arch_config)
    keys = [k for k in WIDTH_KEYS if k in cfg]
    if not keys:
        raise ZooError(f"arch_config has none of the width keys {', '.join(WIDTH_KEYS)}: cannot widen")
    for k in keys:
        v = cfg[k]
        cfg[k] = [int(x) * factor for x in v] if isinstance(v, (list, tuple)) else int(v) * factor
    return cfg


def widen(sample: ZooSample, factor: int) -> ZooSample:
    """A widened copy of ``sample``: new config, spec (rebuilt from the architecture) and weights; same labels.

    Buffers outside the spec's groups (e.g. ``num_batches_tracked``) are copied unchanged.
    """
    cfg = widen_config(sample.arch_config, factor)
    spec = build(sample.arch, cfg).spec
    state = widen_state(sample.state, sample.spec, factor)
    spec.validate(state)
    return dataclasses.replace(sample, model_id=f"{sample.model_id}-x{factor}", arch_config=cfg, spec=spec,
                               state=state)
