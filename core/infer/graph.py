"""Graph helpers for the op rules: arguments in schema order, static shapes, and the per-op context."""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

from core.infer.axes import Axes

Vals = dict[fx.Node, Any]

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
