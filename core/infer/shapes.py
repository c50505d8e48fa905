"""Rules of shape ops: reshape/view/flatten (kept, split and merged axes), permute/transpose, expand,
select/slice (fix the indexed axis), cat/stack/split (fix the concatenated or split axis), squeeze, pad."""
from __future__ import annotations

import math

from core.infer.axes import Axes
from core.infer.graph import Ctx, op_name, out_shapes


def reshape(axes: Axes, xs: list[int], ishape: tuple, oshape: tuple) -> list[int]:
    """Axes of ``x.reshape(oshape)``: a kept axis keeps its variable, a split axis is refined by its first
    part (the rest fixed), merged axes refine the result by their first axis (the rest fixed)."""
    if 0 in ishape or 0 in oshape or math.prod(ishape) != math.prod(oshape):
        axes.fix(*xs)
        return axes.news(oshape, True)
    out: list[int | None] = [axes.new(1, True) if s == 1 else None for s in oshape]
    ii = [i for i, s in enumerate(ishape) if s != 1]
    oo = [j for j, s in enumerate(oshape) if s != 1]
    a = b = 0
    while a < len(ii) and b < len(oo):
        ia, ob = [ii[a]], [oo[b]]
        pi, po = ishape[ii[a]], oshape[oo[b]]
        a, b = a + 1, b + 1
        while pi != po:
            if pi < po:
                ia.append(ii[a])
                pi, a = pi * ishape[ii[a]], a + 1
            else:
                ob.append(oo[b])
                po, b = po * oshape[oo[b]], b + 1
        if len(ia) == 1 and len(ob) == 1:
            out[ob[0]] = xs[ia[0]]
        elif len(ia) == 1:
            parts = [axes.new(oshape[j]) for j in ob]
            axes.fix(*parts[1:])
            axes.refine(xs[ia[0]], parts[0], math.prod(oshape[j] for j in ob[1:]))
            for j, p in zip(ob, parts):
                out[j] = p
        elif len(ob) == 1:
            merged = axes.new(oshape[ob[0]])
            axes.fix(*(xs[i] for i in ia[1:]))
            axes.refine(merged, xs[ia[0]], math.prod(ishape[i] for i in ia[1:]))
            out[ob[0]] = merged
        else:
            axes.fix(*(xs[i] for i in ia))
            for j in ob:
                out[j] = axes.new(oshape[j], True)
    return [o if o is not None else axes.new(oshape[j], True) for j, o in enumerate(out)]


def r_reshape(c: Ctx) -> list[int]:
    return reshape(c.ax, c.a(0), c.s(0), out_shapes(c.node))


def r_permute(c: Ctx) -> list[int]:
    x = c.a(0)
    name = op_name(c.node)
    n = len(x)
    if name == "permute":
        order = [d % n for d in c.args[1]]
    elif name in ("transpose", "swapaxes"):
        i, j = int(c.args[1]) % n, int(c.args[2]) % n
        order = list(range(n))
        order[i], order[j] = order[j], order[i]
    else:  # t
        order = list(reversed(range(n)))
    return [x[d] for d in order]


def r_expand(c: Ctx) -> list[int]:
    x, shp, oshape = c.a(0), c.s(0), out_shapes(c.node)
    out = c.ax.news(oshape, True)
    for k in range(1, len(shp) + 1):
        if shp[-k] == oshape[-k]:
            out[-k] = x[-k]
        else:
            c.ax.fix(x[-k])
    return out


def r_select(c: Ctx) -> list[int]:  # picks one index along dim: that axis must stay put
    x = c.a(0)
    d = int(c.args[1]) % len(x)
    c.ax.fix(x[d])
    return x[:d] + x[d + 1:]


def r_slice(c: Ctx) -> list[int]:
    x, shp, oshape = c.a(0), c.s(0), out_shapes(c.node)
    d = int(c.args[1]) % len(x) if len(c.args) > 1 and c.args[1] is not None else 0
    if shp == oshape:
        return list(x)
    c.ax.fix(x[d])
    return x[:d] + [c.ax.new(oshape[d], True)] + x[d + 1:]


def r_cat(c: Ctx) -> list[int]:
    parts = [c.vals[t] for t in c.args[0]]
    oshape = out_shapes(c.node)
    d = int(c.args[1] if len(c.args) > 1 and c.args[1] is not None else 0) % len(oshape)
    out = c.ax.news(oshape)
    for p in parts:
        if len(p) != len(out):  # legacy empty-tensor cat
            c.ax.fix(*p)
            continue
        for i, (x, o) in enumerate(zip(p, out)):
            c.ax.fix(x) if i == d else c.ax.union(x, o)
    c.ax.fix(out[d])
    return out


def r_stack(c: Ctx) -> list[int]:
    parts = [c.vals[t] for t in c.args[0]]
    oshape = out_shapes(c.node)
    d = int(c.args[1] if len(c.args) > 1 and c.args[1] is not None else 0) % len(oshape)
    for p in parts[1:]:
        c.same(parts[0], p)
    return parts[0][:d] + [c.ax.new(oshape[d], True)] + parts[0][d:]


def r_split(c: Ctx) -> tuple:
    x = c.a(0)
    name = op_name(c.node)
    d = int(c.args[1] if name == "unbind" else (c.args[2] if len(c.args) > 2 and c.args[2] is not None else 0))
    d %= len(x)
    shapes = out_shapes(c.node)
    if name != "unbind" and len(shapes) == 1:
        return (list(x),)
    c.ax.fix(x[d])
    outs = []
    for s in shapes:
        if name == "unbind":
            outs.append(x[:d] + x[d + 1:])
        else:
            outs.append(x[:d] + [c.ax.new(s[d], True)] + x[d + 1:])
    return tuple(outs)


def r_squeeze(c: Ctx) -> list[int]:
    x, oshape = c.a(0), out_shapes(c.node)
    kept = [a for a in x if c.ax.size[a] != 1]
    if len(kept) != sum(1 for s in oshape if s != 1):
        return reshape(c.ax, x, c.s(0), oshape)
    it = iter(kept)
    return [next(it) if s != 1 else c.ax.new(1, True) for s in oshape]


def r_pad(c: Ctx) -> list[int]:
    x, pads = c.a(0), list(c.args[1])
    n = len(pads) // 2
    c.ax.fix(*x[len(x) - n:])
    return x[:len(x) - n] + c.ax.news(out_shapes(c.node)[len(x) - n:], True)
