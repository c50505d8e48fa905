"""Rules of layers and elementwise ops: linear/addmm/matmul, conv (grouped, depthwise), embedding,
batch/layer/group norms, attention, softmax, reductions, pooling, unary and broadcasting binary ops."""
from __future__ import annotations

from typing import Any

from core.infer.graph import Ctx, fix_everything, op_name, out_shapes


def broadcast(c: Ctx, operands: list[int]) -> list[int]:
    out_shape = out_shapes(c.node)
    out = c.ax.news(out_shape)
    for i in operands:
        xs, shp = c.a(i), c.s(i)
        if xs is None or shp is None:
            continue
        for k in range(1, len(shp) + 1):
            if k > len(out_shape) or shp[-k] != out_shape[-k]:
                c.ax.fix(xs[-k])  # a size-1 (broadcast) axis
            else:
                c.ax.union(xs[-k], out[-k])
    return out


def r_linear(c: Ctx) -> list[int]:
    x, w, out = c.a(0), c.a(1), c.out()
    c.same(x[:-1], out[:-1])
    c.ax.union(x[-1], w[1])
    c.ax.union(out[-1], w[0])
    if c.a(2):
        c.ax.union(c.a(2)[0], w[0])
    return out


def r_addmm(c: Ctx) -> list[int]:  # bias + x @ w, w: (in, out) (GPT-2's Conv1D)
    b, x, w, out = c.a(0), c.a(1), c.a(2), c.out()
    c.ax.union(out[0], x[0])
    c.ax.union(x[1], w[0])
    c.ax.union(out[1], w[1])
    if b is not None:
        c.ax.union(b[-1], out[1])
        if len(b) == 2:
            c.ax.union(b[0], out[0]) if c.s(0)[0] == out_shapes(c.node)[0] else c.ax.fix(b[0])
    return out


def r_matmul(c: Ctx, offset: int = 0) -> list[int]:
    a, b, out = c.a(offset), c.a(offset + 1), c.out()
    if len(a) < 2 or len(b) < 2:
        c.ax.fix(*a, *b, *out)
        return out
    c.ax.union(a[-1], b[-2])
    c.ax.union(out[-2], a[-2])
    c.ax.union(out[-1], b[-1])
    for xs, shp in ((a, c.s(offset)), (b, c.s(offset + 1))):  # broadcast batch dims
        for k in range(3, len(shp) + 1):
            if k <= len(out) and shp[-k] == out_shapes(c.node)[-k]:
                c.ax.union(xs[-k], out[-k])
            else:
                c.ax.fix(xs[-k])
    return out


def r_baddbmm(c: Ctx) -> list[int]:
    out = r_matmul(c, 1)
    if c.a(0):
        c.same(c.a(0), out)
    return out


def r_conv(c: Ctx) -> list[int]:
    x, w, out = c.a(0), c.a(1), c.out()
    name = op_name(c.node)
    if name == "convolution":
        transposed, groups = bool(c.args[6]), int(c.args[8])
    elif name.startswith("conv_transpose"):
        transposed, groups = True, int(c.args[6])
    else:
        transposed, groups = False, int(c.args[6])
    batched = len(x) == len(w)
    lead = 1 if batched else 0
    if batched:
        c.ax.union(x[0], out[0])
    c.ax.fix(*x[lead + 1:], *out[lead + 1:], *w[2:])  # spatial positions and kernel taps
    cin, cout = x[lead], out[lead]
    w_in, w_out = (w[0], w[1]) if transposed else (w[1], w[0])
    if groups == 1:
        c.ax.union(cin, w_in)
        c.ax.union(cout, w_out)
    elif transposed:
        c.ax.fix(cin, cout, w_in, w_out)
    else:  # grouped / depthwise: whole groups move together, channels inside a group stay put
        g = c.ax.new(groups)
        c.ax.refine(cin, g, c.ax.size[cin] // groups)
        c.ax.refine(w_out, g, c.ax.size[w_out] // groups)
        c.ax.union(cout, w_out)
        c.ax.fix(w_in)
    if c.a(2):
        c.ax.union(c.a(2)[0], cout)
    return out


def r_embedding(c: Ctx) -> list[int]:
    w, idx, out = c.a(0), c.a(1), c.out()
    c.ax.fix(w[0])  # vocabulary rows are addressed by the input's values
    c.ax.union(w[1], out[-1])
    c.same(idx, out[:-1])
    return out


def r_layer_norm(c: Ctx) -> Any:
    x = c.a(0)
    k = len(c.args[1])
    for i in (2, 3):
        if c.a(i):
            c.same(x[len(x) - k:], c.a(i))
    shapes = out_shapes(c.node)
    if isinstance(shapes[0], tuple):  # native_layer_norm: (out, mean, rstd)
        return (list(x),) + tuple(c.ax.news(s, True) for s in shapes[1:])
    return list(x)


def r_batch_norm(c: Ctx) -> Any:
    x = c.a(0)
    for i in (1, 2, 3, 4):
        if c.a(i):
            c.ax.union(c.a(i)[0], x[1])
    shapes = out_shapes(c.node)
    if isinstance(shapes[0], tuple):
        return (list(x),) + tuple(c.ax.news(s, True) if s is not None else None for s in shapes[1:])
    return list(x)


def r_group_norm(c: Ctx) -> Any:
    x = c.a(0)
    native = op_name(c.node) == "native_group_norm"
    groups = int(c.args[6] if native else c.args[1])
    w, b = (c.a(1), c.a(2)) if native else (c.a(2), c.a(3))
    ch = c.ax.size[x[1]]
    if groups not in (1, ch):  # statistics per group of channels: only whole groups may move
        c.ax.refine(x[1], c.ax.new(groups), ch // groups)
    for t in (w, b):
        if t:
            c.ax.union(t[0], x[1])
    if native:
        return (list(x),) + tuple(c.ax.news(s, True) for s in out_shapes(c.node)[1:])
    return list(x)


def r_sdpa(c: Ctx) -> list[int]:
    q, k, v, out = c.a(0), c.a(1), c.a(2), c.out()
    c.ax.union(q[-1], k[-1])
    c.ax.union(k[-2], v[-2])
    c.ax.union(out[-2], q[-2])
    c.ax.union(out[-1], v[-1])
    oshape = out_shapes(c.node)
    for xs, shp in ((q, c.s(0)), (k, c.s(1)), (v, c.s(2))):
        for j in range(3, len(shp) + 1):
            if j <= len(oshape) and shp[-j] == oshape[-j]:
                c.ax.union(xs[-j], out[-j])
            else:
                c.ax.fix(xs[-j])
    m, ms = c.a(3), c.s(3)
    if m is not None:  # mask broadcasts to (..., L, S)
        target = list(out[:-1]) + [k[-2]]
        tshape = list(oshape[:-1]) + [c.s(1)[-2]]
        for j in range(1, len(ms) + 1):
            if j <= len(target) and ms[-j] == tshape[-j]:
                c.ax.union(m[-j], target[-j])
            else:
                c.ax.fix(m[-j])
    return out


def r_softmax(c: Ctx) -> list[int]:
    return list(c.a(0))


def r_reduce(c: Ctx) -> Any:
    x, shp = c.a(0), c.s(0)
    dims = c.args[1] if len(c.args) > 1 else None
    keep = next((a for a in c.args[2:] if isinstance(a, bool)), False)
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not dims:
        dims = list(range(len(shp)))
    dims = {d % len(shp) for d in dims} if shp else set()
    out = [x[i] if i not in dims else (c.ax.new(1, True) if keep else None) for i in range(len(x))]
    out = [a for a in out if a is not None]
    shapes = out_shapes(c.node)
    if shapes and isinstance(shapes[0], tuple):  # max.dim -> (values, indices)
        if len(shapes[0]) != len(out):
            return fix_everything(c.node, c.ax, c.vals)
        return (out,) + tuple(c.ax.news(s, True) for s in shapes[1:])
    if shapes is None or len(shapes) != len(out):
        return fix_everything(c.node, c.ax, c.vals)
    return out


def r_pool(c: Ctx) -> Any:
    name = op_name(c.node)
    sp = 3 if "3d" in name else (1 if "1d" in name else 2)
    x = c.a(0)
    lead = len(x) - sp
    shapes = out_shapes(c.node)
    first = shapes[0] if shapes and isinstance(shapes[0], tuple) else shapes
    out = list(x[:lead]) + c.ax.news(first[lead:], True)
    c.ax.fix(*x[lead:])
    if first is not shapes:  # (values, indices)
        return (out,) + tuple(c.ax.news(s, True) for s in shapes[1:])
    return out


def r_unary(c: Ctx) -> list[int]:
    x, shp, oshape = c.a(0), c.s(0), out_shapes(c.node)
    if shp != oshape:
        return broadcast(c, [i for i in range(len(c.args)) if c.a(i) is not None])
    return list(x)


def r_binary(c: Ctx) -> list[int]:
    return broadcast(c, [i for i in range(len(c.args)) if c.a(i) is not None])
