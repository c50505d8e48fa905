"""Comparing specs up to the names of their groups (names are labels; the partition of axes is the symmetry)."""
from __future__ import annotations

from core.spec import ParamSpec, PermGroup, WeightSpec


def canonical(spec: WeightSpec) -> WeightSpec:
    """The same spec with groups renamed g0, g1, ... in order of first appearance."""
    rename: dict[str, str] = {}
    for p in spec.params:
        for g in p.axes:
            if g is not None and g not in rename:
                rename[g] = f"g{len(rename)}"
    params = tuple(ParamSpec(p.name, p.shape, p.kind, p.role, p.layer, tuple(rename.get(g) if g else None for g in p.axes),
                             tuple(b if g else 1 for g, b in zip(p.axes, p.blocks))) for p in spec.params)
    groups = tuple(sorted((PermGroup(rename[g.name], g.size) for g in spec.groups if g.name in rename),
                          key=lambda g: int(g.name[1:])))
    return WeightSpec(params, groups)


def differences(a: WeightSpec, b: WeightSpec, limit: int = 10) -> list[str]:
    """Human-readable differences between two specs, group names ignored; empty when they agree."""
    ca, cb = canonical(a), canonical(b)
    out: list[str] = []
    na, nb = [p.name for p in ca.params], [p.name for p in cb.params]
    if na != nb:
        out.append(f"entries differ: only in first {sorted(set(na) - set(nb))[:5]}, only in second "
                   f"{sorted(set(nb) - set(na))[:5]}" if set(na) != set(nb) else "entries in a different order")
        return out
    for p, q in zip(ca.params, cb.params):
        for field in ("shape", "kind", "role", "layer", "axes", "blocks"):
            if getattr(p, field) != getattr(q, field):
                out.append(f"{p.name}: {field} {getattr(p, field)} != {getattr(q, field)}")
        if len(out) >= limit:
            break
    return out
