"""The weight space as a typed object (in the spirit of nfn's ``NetworkSpec``).

A ``WeightSpec`` lists every entry of a model's state dict with its layer kind, its depth, and, for
each tensor axis, the permutation group that acts on it (or ``None`` when the axis is fixed: input
pixels, classes, kernel taps, token positions). Two axes naming the same group permute together;
that coupling is exactly the symmetry that leaves the network's function unchanged.

An axis may be acted on in blocks: a flattened conv output feeding a linear layer (block = H*W), or
attention heads (block = head_dim). Index ``i`` of a group moves the block
``[i*block, (i+1)*block)`` on that axis.

Specs are plain data: JSON round-trips them (``to_json`` / ``from_json``), so the store keeps the
spec beside the weights and WeightNet never needs the architecture's code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from core.errors import BadWeights

# Layer kinds WeightNet knows how to embed. Anything else is refused with a clear error.
LAYER_KINDS = (
    "linear",
    "conv",
    "norm",
    "embedding",
    "pos_embedding",
    "cls_token",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "attn_qkv",
    "buffer",
)
ROLES = ("weight", "bias", "buffer")


@dataclass(frozen=True)
class ParamSpec:
    name: str  # state-dict key, e.g. "features.0.weight"
    shape: tuple[int, ...]
    kind: str  # one of LAYER_KINDS
    role: str  # "weight" | "bias" | "buffer"
    layer: int  # depth of the layer this tensor belongs to, 0-based
    axes: tuple[str | None, ...]  # per axis: permutation group name, or None (fixed axis)
    blocks: tuple[int, ...] = ()  # per axis: block size of the group's action (default 1)

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise BadWeights(f"{self.name}: unknown layer kind {self.kind!r} (known: {', '.join(LAYER_KINDS)})")
        if self.role not in ROLES:
            raise BadWeights(f"{self.name}: unknown role {self.role!r}")
        if len(self.axes) != len(self.shape):
            raise BadWeights(f"{self.name}: {len(self.axes)} axis groups for a {len(self.shape)}-d shape {self.shape}")
        if not self.blocks:
            object.__setattr__(self, "blocks", tuple(1 for _ in self.shape))
        if len(self.blocks) != len(self.shape):
            raise BadWeights(f"{self.name}: blocks {self.blocks} do not match shape {self.shape}")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class PermGroup:
    name: str  # e.g. "conv0.out", "blocks.1.heads", "residual"
    size: int  # number of permutable units


@dataclass(frozen=True)
class WeightSpec:
    params: tuple[ParamSpec, ...]
    groups: tuple[PermGroup, ...] = field(default=())

    def __post_init__(self) -> None:
        sizes = {g.name: g.size for g in self.groups}
        seen: set[str] = set()
        for p in self.params:
            if p.name in seen:
                raise BadWeights(f"spec lists {p.name!r} twice")
            seen.add(p.name)
            for ax, (g, b) in enumerate(zip(p.axes, p.blocks)):
                if g is None:
                    continue
                if g not in sizes:
                    raise BadWeights(f"{p.name}: axis {ax} names unknown permutation group {g!r}")
                if sizes[g] * b != p.shape[ax]:
                    raise BadWeights(
                        f"{p.name}: axis {ax} has size {p.shape[ax]} but group {g!r} of size {sizes[g]} "
                        f"in blocks of {b} covers {sizes[g] * b}"
                    )

    # --- lookups -------------------------------------------------------------------------------
    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def group_size(self, name: str) -> int:
        for g in self.groups:
            if g.name == name:
                return g.size
        raise KeyError(name)

    @property
    def n_params(self) -> int:
        """Trainable entries only (buffers such as BatchNorm running stats excluded)."""
        return sum(p.numel for p in self.params if p.role != "buffer")

    @property
    def n_layers(self) -> int:
        return 1 + max((p.layer for p in self.params), default=-1)

    # --- validation ----------------------------------------------------------------------------
    def validate(self, state: Mapping[str, torch.Tensor], check_finite: bool = True) -> None:
        """Raise ``BadWeights`` naming the first tensor that is missing, extra, misshapen or non-finite."""
        names = {p.name for p in self.params}
        extra = sorted(set(state) - names)
        if extra:
            raise BadWeights(f"tensor {extra[0]!r} is not in the architecture's spec")
        for p in self.params:
            if p.name not in state:
                raise BadWeights(f"tensor {p.name!r} is missing (expected shape {p.shape})")
            t = state[p.name]
            if tuple(t.shape) != p.shape:
                raise BadWeights(f"tensor {p.name!r} has shape {tuple(t.shape)}, the architecture expects {p.shape}")
            if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise BadWeights(f"tensor {p.name!r} holds NaN or Inf values")

    # --- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "params": [
                {"name": p.name, "shape": list(p.shape), "kind": p.kind, "role": p.role, "layer": p.layer,
                 "axes": list(p.axes), "blocks": list(p.blocks)}
                for p in self.params
            ],
            "groups": [{"name": g.name, "size": g.size} for g in self.groups],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping) -> "WeightSpec":
        params = tuple(
            ParamSpec(name=p["name"], shape=tuple(p["shape"]), kind=p["kind"], role=p["role"], layer=int(p["layer"]),
                      axes=tuple(p["axes"]), blocks=tuple(p.get("blocks") or ()))
            for p in d["params"]
        )
        return cls(params=params, groups=tuple(PermGroup(g["name"], int(g["size"])) for g in d.get("groups", ())))

    @classmethod
    def from_json(cls, s: str) -> "WeightSpec":
        return cls.from_dict(json.loads(s))


# --- building specs from modules ---------------------------------------------------------------
def spec_from_module(module: torch.nn.Module, annotate: Mapping[str, tuple[str, int, tuple, tuple]]) -> WeightSpec:
    """Helper for architectures: ``annotate[name] = (kind, layer, axes, blocks)`` for every state entry.

    Buffers not listed (e.g. ``num_batches_tracked``) are added as fixed ``buffer`` entries. Group
    sizes are inferred from the first axis that names them.
    """
    params: list[ParamSpec] = []
    sizes: dict[str, int] = {}
    state = module.state_dict()
    for name, t in state.items():
        shape = tuple(t.shape)
        if name in annotate:
            kind, layer, axes, blocks = annotate[name]
            blocks = tuple(blocks) or tuple(1 for _ in shape)
            role = "bias" if name.endswith("bias") else ("buffer" if kind == "buffer" else "weight")
            if name.endswith(("running_mean", "running_var")):
                role = "buffer"
        else:
            kind, layer, axes, blocks, role = "buffer", 0, tuple(None for _ in shape), tuple(1 for _ in shape), "buffer"
            if not isinstance(dict(module.named_buffers()).get(name), torch.Tensor):
                raise BadWeights(f"parameter {name!r} has no entry in the architecture's spec")
        for ax, g in enumerate(axes):
            if g is not None:
                sizes.setdefault(g, shape[ax] // blocks[ax])
        params.append(ParamSpec(name, shape, kind, role, layer, tuple(axes), tuple(blocks)))
    return WeightSpec(tuple(params), tuple(PermGroup(g, n) for g, n in sizes.items()))


# --- permutations ------------------------------------------------------------------------------
def _expand(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Unit permutation -> index permutation on an axis acted on in blocks of ``block``."""
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def permute(state: Mapping[str, torch.Tensor], spec: WeightSpec, perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply group permutations to every axis that names the group. Function-preserving by construction."""
    out: dict[str, torch.Tensor] = {}
    for p in spec.params:
        t = state[p.name]
        for ax, (g, b) in enumerate(zip(p.axes, p.blocks)):
            if g is not None and g in perms:
                t = t.index_select(ax, _expand(perms[g].to(t.device), b))
        out[p.name] = t
    for k, v in state.items():  # entries the spec does not cover pass through untouched
        out.setdefault(k, v)
    return out


def random_perms(spec: WeightSpec, generator: torch.Generator, groups: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """A uniformly random permutation for each group (or the named ones); never the identity for size > 1."""
    chosen = set(groups) if groups is not None else None
    perms = {}
    for g in spec.groups:
        if chosen is not None and g.name not in chosen:
            continue
        perm = torch.randperm(g.size, generator=generator)
        if g.size > 1 and bool((perm == torch.arange(g.size)).all()):
            perm = perm.roll(1)
        perms[g.name] = perm
    return perms
