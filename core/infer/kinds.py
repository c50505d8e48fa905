"""Layer kind and depth of every parameter, read off the traced graph.

Depth counts weight layers on the longest path from the input (``level``): a conv/linear/embedding
reads its input's level as its layer and writes layer + 1. Conventions (those of the hand-written
specs in ``zoo.archs``):

- an attention unit (q/k/v projections, the attention core, the output projection) is ONE layer: the
  core's output steps one level back, so the output projection shares the q/k/v layer;
- a token-wise feed-forward sublayer (linears on (B, L, D) activations chained through elementwise
  functions only) is ONE layer;
- a norm directly after a weight op belongs to that op's layer; otherwise a norm whose output is added
  back into a residual stream (post-norm) belongs to the layer before it, and a norm that only feeds a
  branch (pre-norm) to the layer it feeds;
- parameters used by elementwise ops (layer scale, position embeddings, class tokens) belong to the
  layer that produced the activation they act on.

Kinds: conv, linear, embedding / pos_embedding (position indices are 0..L-1 and do not depend on the
input), attn_q/k/v/o (attn_qkv for a fused projection), norm, cls_token (concatenated), buffer.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import fx

from core.infer.rules import bind, op_name, shape_of

TRANSPARENT = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze", "permute", "transpose",
    "t", "swapaxes", "contiguous", "clone", "alias", "detach", "to", "_to_copy", "dropout", "expand", "split",
    "split_with_sizes", "chunk", "unbind", "type_as", "getitem", "feature_dropout", "lift_fresh_copy",
}
ACTIVATION = {
    "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "elu", "selu", "celu",
    "leaky_relu", "hardtanh", "softplus", "mish", "mul", "div", "pow", "erf",
}
WEIGHT_OPS = {"linear", "addmm", "mm", "bmm", "matmul", "conv1d", "conv2d", "conv3d", "convolution",
              "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "embedding"}
NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
         "instance_norm", "layer_norm", "native_layer_norm", "group_norm", "native_group_norm"}
ATTN_MASKING = {"add", "sub", "mul", "div", "masked_fill", "where", "to", "_to_copy", "dropout", "view", "reshape",
                "_unsafe_view", "expand", "clone", "contiguous"}


def name_of(node: Any) -> str:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return ""
    import operator

    return "getitem" if node.target is operator.getitem else op_name(node)


def tensor_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for x in bind(node) if node.op == "call_function" else node.args:
        if isinstance(x, fx.Node):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(y for y in x if isinstance(y, fx.Node))
    return out


def back(node: Any, through: set[str]) -> Any:
    """Walk producers through ops named in ``through`` (following the first tensor argument)."""
    for _ in range(256):
        if name_of(node) not in through:
            return node
        args = tensor_args(node)
        if not args:
            return node
        node = args[0]
    return node


class Depths:
    def __init__(self, graph: fx.Graph, params: Mapping[fx.Node, str], user_inputs: set[fx.Node],
                 values: Mapping[fx.Node, torch.Tensor]) -> None:
        self.params = params  # placeholder -> state-dict name (parameters and persistent buffers)
        self.user_inputs = user_inputs
        self.values = values  # concrete embedding indices, recorded by running the graph once
        self.level: dict[fx.Node, int] = {}
        self.layer: dict[fx.Node, int] = {}  # weight op -> its layer
        self.attention: set[fx.Node] = set()  # attention cores
        self.kind: dict[str, str] = {}
        self.depth: dict[str, int] = {}
        # post-norm graphs (BERT): a norm right after a residual add closes the sublayer before it
        self.post_norm = any(name_of(n) in NORMS and self.residual_add(back(n.args[0], TRANSPARENT))
                             and self.feeds_residual(n) for n in graph.nodes)
        for node in graph.nodes:
            self.visit(node)

    # --- helpers ---------------------------------------------------------------------------------
    def param_of(self, x: Any) -> str | None:
        p = back(x, TRANSPARENT)
        return self.params.get(p) if isinstance(p, fx.Node) else None

    def assign(self, name: str | None, kind: str, layer: int, force: bool = False) -> None:
        if name is not None and (force or name not in self.kind):
            self.kind[name], self.depth[name] = kind, max(0, int(layer))

    def lv(self, x: Any) -> int:
        return self.level.get(x, 0) if isinstance(x, fx.Node) else 0

    def feeds_residual(self, node: fx.Node) -> bool:
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                nm = name_of(u)
                if nm in TRANSPARENT:
                    todo.append(u)
                elif nm in ("add", "sub"):
                    others = [a for a in tensor_args(u) if a is not n and self.param_of(a) is None]
                    if others:
                        return True
        return False

    def residual_add(self, node: Any) -> bool:
        """An add of two activations (not a parameter added to an activation)."""
        if name_of(node) != "add":
            return False
        return sum(1 for a in tensor_args(node) if self.param_of(a) is None) >= 2

    def depends_on_input(self, node: fx.Node) -> bool:
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            if n in self.user_inputs:
                return True
            for a in tensor_args(n) if n.op == "call_function" else ():
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        return False

    def is_positions(self, idx: fx.Node) -> bool:
        if self.depends_on_input(idx):
            return False
        v = self.values.get(idx)
        if v is None or v.dim() == 0 or v.shape[-1] < 2:
            return False
        steps = v[..., 1:] - v[..., :-1]
        return bool((steps == 1).all())

    # --- one node ----------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op != "call_function":
            self.level[node] = 0
            return
        nm = name_of(node)
        args = bind(node)
        ins = tensor_args(node)
        base = max((self.lv(a) for a in ins), default=0)
        if nm in WEIGHT_OPS and any(self.param_of(a) for a in ins):
            self.weight_op(node, nm, args, ins)
        elif nm == "scaled_dot_product_attention":
            self.attention_core(node, args[:3])
        elif nm in ("matmul", "bmm") and self.matmul_attention(node, args):
            pass
        elif nm in NORMS:
            x = args[0]
            p = back(x, TRANSPARENT)
            if p in self.layer:
                layer = self.layer[p]
            elif self.feeds_residual(node) or (self.post_norm and self.residual_add(p)):
                layer = self.lv(x) - 1
            else:
                layer = self.lv(x)
            for a in ins[1:]:
                self.assign(self.param_of(a), "norm", layer)
            self.level[node] = self.lv(x)
        elif nm in TRANSPARENT:
            self.level[node] = base
        else:
            acts = [a for a in ins if self.param_of(a) is None]
            top = max((self.lv(a) for a in acts), default=0)
            for a in ins:
                name = self.param_of(a)
                if name is None:
                    continue
                shp = shape_of(a) or ()
                if nm in ("cat", "concat", "stack"):
                    kind = "cls_token"
                elif nm in ("add", "sub") and sum(s > 1 for s in shp) >= 2:
                    kind = "pos_embedding"
                elif nm in ("mul", "div", "add", "sub"):
                    kind = "norm"
                else:
                    kind = "linear"
                self.assign(name, kind, top - 1)
            self.level[node] = base

    def weight_op(self, node: fx.Node, nm: str, args: list, ins: list[fx.Node]) -> None:
        params = [(i, self.param_of(a)) for i, a in enumerate(args) if isinstance(a, fx.Node) and self.param_of(a)]
        acts = [a for a in ins if self.param_of(a) is None]
        x = acts[0] if acts else None
        layer = self.lv(x)
        if nm == "embedding":
            kind = "pos_embedding" if isinstance(x, fx.Node) and self.is_positions(x) else "embedding"
        elif nm.startswith("conv"):
            kind = "conv"
        else:
            kind = "linear"
            src = back(x, TRANSPARENT)
            if src in self.attention:
                kind = "attn_o"
            elif nm == "linear" and len(shape_of(x) or ()) >= 3:  # token-wise feed-forward sublayer
                prev = back(x, TRANSPARENT | ACTIVATION)
                if name_of(prev) == "linear" and prev in self.layer and len(shape_of(prev.args[0]) or ()) >= 3:
                    layer = self.layer[prev]
        for _, name in params:
            self.assign(name, kind, layer)
        self.layer[node] = layer
        self.level[node] = layer + 1

    def attention_core(self, node: fx.Node, qkv: list) -> None:
        producers = [back(t, TRANSPARENT) for t in qkv]
        fused = len({id(p) for p in producers}) == 1
        for p, kind in zip(producers, ("attn_q", "attn_k", "attn_v")):
            if p in self.layer and name_of(p) in ("linear", "addmm", "matmul", "mm"):
                for a in tensor_args(p):
                    self.assign(self.param_of(a), "attn_qkv" if fused else kind, self.layer[p], force=True)
        self.attention.add(node)
        self.level[node] = max(self.lv(t) for t in qkv) - 1

    def matmul_attention(self, node: fx.Node, args: list) -> bool:
        """softmax(q @ k^T ...) @ v written out with matmuls (eager attention)."""
        if any(self.param_of(a) for a in args[:2] if isinstance(a, fx.Node)):
            return False
        sm = back(args[0], ATTN_MASKING)
        if name_of(sm) not in ("softmax", "_softmax"):
            return False
        scores = back(tensor_args(sm)[0], ATTN_MASKING)
        if name_of(scores) not in ("matmul", "bmm"):
            return False
        self.attention_core(node, [tensor_args(scores)[0], tensor_args(scores)[1], args[1]])
        return True
