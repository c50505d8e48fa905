"""How each ATen op constrains the axes of its inputs and outputs (see ``core.infer.axes``).

``propagate(graph, axes, vals)`` walks a ``torch.export`` graph in order; ``vals[node]`` is a list of
axis variables per tensor dimension (a tuple of such lists for ops with several outputs). An op with
no rule here fixes every axis it touches, so an unknown op can only hide symmetries, never invent one.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
from torch import fx

from core.infer.axes import Axes
from core.infer.graph import Ctx, Vals, bind, fix_everything, op_name, out_shapes, shape_of, tensor_inputs  # noqa: F401
from core.infer.layers import (r_addmm, r_baddbmm, r_batch_norm, r_binary, r_conv, r_embedding, r_group_norm,
                               r_layer_norm, r_linear, r_matmul, r_pool, r_reduce, r_sdpa, r_softmax, r_unary)
from core.infer.shapes import (r_cat, r_expand, r_pad, r_permute, r_reshape, r_select, r_slice, r_split,
                               r_squeeze, r_stack)

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
