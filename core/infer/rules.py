"""How each ATen op constrains the axes of its inputs and outputs (see ``core.infer.axes``).

``propagate(graph, axes, vals)`` walks a ``torch.export`` graph in order; ``vals[node]`` is a list of
axis variables per tensor dimension (a tuple of such lists for ops with several outputs). An op with
no rule here fixes every axis it touches, so an unknown op can only hide symmetries, never invent one.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
from torch import fx

from core.infer.axes import Axes

Vals = dict[fx.Node, Any]

UNARY = {
    "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "elu", "selu", "celu",
    "leaky_relu", "hardtanh", "softplus", "mish", "erf", "exp", "log", "sqrt", "rsqrt", "abs", "neg",
    "reciprocal", "square", "sin", "cos", "dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous",
    "alias", "detach", "to", "_to_copy", "type_as", "lift_fresh_copy", "clamp_min", "clamp_max",
    "logical_not", "bitwise_not", "sign", "floor", "ceil", "round", "log_sigmoid", "hardshrink",
    "softsign", "tanhshrink", "threshold", "expm1", "log1p", "logit", "fill", "zeros_like", "ones_like",
    "full_like", "empty_like",
}
BINARY = {
    "add", "sub", "mul", "div", "rsub", "maximum", "minimum", "pow", "where", "masked_fill", "eq", "ne", "ge",
    "gt", "le", "lt", "logical_and", "logical_or", "logical_xor", "__and__", "__or__", "__xor__", "bitwise_and",
    "bitwise_or", "atan2", "fmod", "remainder", "floor_divide", "lerp", "addcmul", "addcdiv", "clamp",
    "copysign", "hypot", "xlogy", "true_divide",
}
SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "logsumexp", "norm", "prod", "max", "min", "var_mean",
          "std_mean", "linalg_vector_norm"}
CREATE = {"arange", "zeros", "ones", "full", "empty", "scalar_tensor", "new_ones", "new_zeros", "new_full",
          "new_empty", "rand", "randn", "randint", "tensor", "linspace", "eye", "_assert_tensor_metadata",
          "_assert_scalar", "sym_size", "sym_constrain_range_for_size"}


def op_name(node: fx.Node) -> str:
    """'linear' for aten.linear.default, 'add' for aten.add_.Tensor (in-place ops act like their functional form)."""
    t = node.target
    name = getattr(getattr(t, "_overloadpacket", None), "__name__", None) or getattr(t, "__name__", str(t))
    if name.endswith("_") and not name.endswith("__") and name != "_":
        name = name[:-1]
    return name


def bind(node: fx.Node) -> list[Any]:
    """The op's arguments in schema order (export puts some of them in kwargs)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return list(node.args)
    out = []
    for i, a in enumerate(schema.arguments):
        if i < len(node.args):
            out.append(node.args[i])
        elif a.name in node.kwargs:
            out.append(node.kwargs[a.name])
        else:
            out.append(a.default_value if a.has_default_value() else None)
    return out


def shape_of(x: Any) -> tuple[int, ...] | None:
    v = x.meta.get("val") if isinstance(x, fx.Node) else None
    if isinstance(v, torch.Tensor):
        return tuple(int(s) for s in v.shape)
    return None


def out_shapes(node: fx.Node) -> Any:
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        return tuple(int(s) for s in v.shape)
    if isinstance(v, (tuple, list)):
        return tuple(tuple(int(s) for s in t.shape) if isinstance(t, torch.Tensor) else None for t in v)
    return None


class Ctx:
    """One op application: its bound arguments, their axes, and helpers that write constraints."""

    def __init__(self, node: fx.Node, axes: Axes, vals: Vals) -> None:
        self.node, self.ax, self.vals = node, axes, vals
        self.args = bind(node)

    def a(self, i: int) -> list[int] | None:  # axes of tensor argument i
        x = self.args[i] if i < len(self.args) else None
        return self.vals.get(x) if isinstance(x, fx.Node) else None

    def s(self, i: int) -> tuple[int, ...] | None:
        x = self.args[i] if i < len(self.args) else None
        return shape_of(x)

    def out(self, fixed: bool = False) -> list[int]:
        return self.ax.news(out_shapes(self.node), fixed)

    def same(self, xs: list[int], ys: list[int]) -> None:
        for x, y in zip(xs, ys):
            self.ax.union(x, y)


def tensor_inputs(node: fx.Node, vals: Vals) -> list[list[int]]:
    found: list[list[int]] = []

    def visit(x: Any) -> None:
        if isinstance(x, fx.Node) and isinstance(vals.get(x), list):
            found.append(vals[x])
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(vals.get(x) if isinstance(x, fx.Node) else None, tuple):
            for y in vals[x]:
                if isinstance(y, list):
                    found.append(y)

    for x in list(node.args) + list(node.kwargs.values()):
        visit(x)
    return found


def fix_everything(node: fx.Node, axes: Axes, vals: Vals) -> Any:
    for t in tensor_inputs(node, vals):
        axes.fix(*t)
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        return axes.news(v.shape, True)
    if isinstance(v, (tuple, list)):
        return tuple(axes.news(t.shape, True) if isinstance(t, torch.Tensor) else None for t in v)
    return None


# --- rules -------------------------------------------------------------------------------------
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
    x, shp = c.a(0), c.s(0)
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


def r_interp(c: Ctx) -> list[int]:
    return r_pool(c)


RULES: dict[str, Callable[[Ctx], Any]] = {
    "linear": r_linear, "addmm": r_addmm, "mm": r_matmul, "bmm": r_matmul, "matmul": r_matmul,
    "baddbmm": r_baddbmm, "conv1d": r_conv, "conv2d": r_conv, "conv3d": r_conv, "convolution": r_conv,
    "conv_transpose1d": r_conv, "conv_transpose2d": r_conv, "conv_transpose3d": r_conv,
    "embedding": r_embedding, "layer_norm": r_layer_norm, "native_layer_norm": r_layer_norm,
    "batch_norm": r_batch_norm, "_native_batch_norm_legit_no_training": r_batch_norm,
    "_native_batch_norm_legit": r_batch_norm, "native_batch_norm": r_batch_norm, "instance_norm": r_batch_norm,
    "group_norm": r_group_norm, "native_group_norm": r_group_norm, "scaled_dot_product_attention": r_sdpa,
    "view": r_reshape, "reshape": r_reshape, "_unsafe_view": r_reshape, "flatten": r_reshape,
    "unflatten": r_reshape, "unsqueeze": r_reshape, "permute": r_permute, "transpose": r_permute,
    "swapaxes": r_permute, "t": r_permute, "expand": r_expand, "select": r_select, "slice": r_slice,
    "narrow": r_slice, "cat": r_cat, "concat": r_cat, "stack": r_stack, "split": r_split,
    "split_with_sizes": r_split, "chunk": r_split, "unbind": r_split, "tensor_split": r_split,
    "squeeze": r_squeeze, "constant_pad_nd": r_pad, "pad": r_pad,
}
for _n in SOFTMAX:
    RULES[_n] = r_softmax
for _n in REDUCE:
    RULES[_n] = r_reduce
for _n in UNARY:
    RULES.setdefault(_n, r_unary)
for _n in BINARY:
    RULES.setdefault(_n, r_binary)
for _n in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d", "avg_pool2d",
           "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
           "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "upsample_nearest2d",
           "upsample_bilinear2d", "upsample_nearest1d", "upsample_linear1d", "_upsample_bilinear2d_aa",
           "_adaptive_avg_pool2d", "lp_pool2d"):
    RULES[_n] = r_pool


def propagate(graph: fx.Graph, axes: Axes, vals: Vals) -> list[str]:
    """Apply every op's rule in graph order. Placeholders must already be in ``vals``. Returns the names
    of ops that had no rule (their axes were fixed)."""
    unknown: list[str] = []
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            for t in tensor_inputs(node, vals):
                axes.fix(*t)
            continue
        if node.op != "call_function":
            vals[node] = fix_everything(node, axes, vals)
            unknown.append(str(node.target))
            continue
        if node.target is operator.getitem:
            src, i = node.args
            got = vals.get(src)
            vals[node] = got[i] if isinstance(got, tuple) else fix_everything(node, axes, vals)
            continue
        name = op_name(node)
        rule = RULES.get(name)
        if name in CREATE:  # new constants: their axes are fixed, their inputs only lend dtype/shape
            v = node.meta.get("val")
            vals[node] = axes.news(v.shape, True) if isinstance(v, torch.Tensor) else None
            continue
        if rule is None:
            unknown.append(name)
            vals[node] = fix_everything(node, axes, vals)
            continue
        try:
            vals[node] = rule(Ctx(node, axes, vals))
        except (TypeError, IndexError, KeyError, ValueError, AttributeError):  # unusual arity: be safe
            unknown.append(name)
            vals[node] = fix_everything(node, axes, vals)
    return unknown
