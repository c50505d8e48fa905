"""Weight-space specs inferred from the traced graph: any ``nn.Module`` (or ``torch.export`` program) in.

    spec = infer_spec(module, (example_input,))

The module is traced with ``torch.export`` on the example input; every axis of every value becomes a
variable (``core.infer.axes``), each op constrains them (``core.infer.rules``: linear/conv incl. grouped
and depthwise, batch/layer/group norms, elementwise ops, residual adds, concatenation, pooling,
reshapes, attention with heads as blocks), and the variables that stay unfixed and reach a parameter
are its permutation groups. Axes no rule can prove permutable stay fixed: an unknown op only costs
symmetries, it never invents one. Layer kinds and depths come from ``core.infer.kinds``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from core.errors import BadWeights
from core.infer.axes import Axes
from core.infer.kinds import Depths
from core.infer.rules import propagate
from core.spec import ParamSpec, PermGroup, WeightSpec

__all__ = ["Inference", "infer", "infer_spec", "infer_program", "trace", "module_kind"]


@dataclass(frozen=True)
class Inference:
    spec: WeightSpec
    unknown_ops: tuple[str, ...]  # ops with no rule: every axis they touch was fixed
    unused: tuple[str, ...]  # parameters the traced graph never reads (all their axes fixed)


def trace(module: torch.nn.Module, example: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> ExportedProgram:
    """``torch.export`` of ``module`` in eval mode (training mode restored after)."""
    was = module.training
    module.eval()
    try:
        return torch.export.export(module, tuple(example), dict(kwargs or {}), strict=False)
    except Exception as e:  # noqa: BLE001  tracing raises anything; name the module and the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadWeights(f"cannot trace {type(module).__name__} with torch.export: {first[:300]}") from None
    finally:
        module.train(was)


MODULE_KINDS = (
    (torch.nn.Embedding, "embedding"), (torch.nn.modules.conv._ConvNd, "conv"), (torch.nn.Linear, "linear"),
    (torch.nn.modules.batchnorm._NormBase, "norm"), (torch.nn.LayerNorm, "norm"), (torch.nn.GroupNorm, "norm"),
)


def module_kind(module: torch.nn.Module | None, name: str) -> str:
    """Fallback kind of an entry the graph does not classify: from the type of the module owning it."""
    if module is None or "." not in name:
        return "linear"
    try:
        owner = module.get_submodule(name.rsplit(".", 1)[0])
    except AttributeError:
        return "linear"
    return next((k for t, k in MODULE_KINDS if isinstance(owner, t)), "linear")


def _values(ep: ExportedProgram, wanted: set[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """Run the graph once (random float inputs, zero integer inputs) recording the ``wanted`` nodes."""
    if not wanted:
        return {}
    consts = {**ep.state_dict, **ep.constants}
    flat = []
    for spec, node in zip(ep.graph_signature.input_specs, (n for n in ep.graph.nodes if n.op == "placeholder")):
        if spec.kind == InputKind.USER_INPUT:
            v = node.meta.get("val")
            if not isinstance(v, torch.Tensor):
                flat.append(v)
            elif v.dtype.is_floating_point:
                flat.append(torch.rand(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(0)))
            else:
                flat.append(torch.zeros(v.shape, dtype=v.dtype))
        else:
            flat.append(consts[spec.target])
    seen: dict[fx.Node, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n in wanted and isinstance(out, torch.Tensor):
                seen[n] = out.detach()
            return out

    try:
        with torch.no_grad():
            Recorder(ep.graph_module).run(*flat)
    except Exception:  # noqa: BLE001  values only refine kinds; without them embeddings stay 'embedding'
        pass
    return seen


def infer_program(ep: ExportedProgram, state_names: Sequence[str] | None = None,
                  module: torch.nn.Module | None = None,
                  aliases: Mapping[str, str] | None = None) -> Inference:
    """The spec of an exported program. ``state_names`` (default: its parameters and persistent buffers in
    signature order) lists the entries the spec must cover; ``aliases`` maps a tied entry the graph never
    names (GPT-2's ``lm_head.weight``) to the entry it shares storage with."""
    axes, vals = Axes(), {}
    params: dict[fx.Node, str] = {}
    buffers: set[str] = set()
    user: set[fx.Node] = set()
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for spec, node in zip(ep.graph_signature.input_specs, placeholders):
        v = node.meta.get("val")
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else None
        stateful = spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent)
        if stateful and isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
            params[node] = spec.target
            vals[node] = axes.news(shape)
        else:
            if stateful:
                params[node] = spec.target
            vals[node] = axes.news(shape, True) if shape is not None else None
        if spec.kind == InputKind.BUFFER:
            buffers.add(spec.target)
        if spec.kind == InputKind.USER_INPUT:
            user.add(node)
    unknown = propagate(ep.graph, axes, vals)
    axes.settle()
    embed_idx = {n.args[1] for n in ep.graph.nodes if n.op == "call_function"
                 and "embedding" in str(n.target) and len(n.args) > 1 and isinstance(n.args[1], fx.Node)}
    depths = Depths(ep.graph, params, user, _values(ep, embed_idx))
    by_name = {name: node for node, name in params.items()}
    names = list(state_names) if state_names is not None else list(by_name)
    aliases = dict(aliases or {})
    group_names: dict[int, str] = {}
    sizes: dict[str, int] = {}
    out: list[ParamSpec] = []
    unused: list[str] = []
    used = {n for n in by_name if by_name[n].users}
    for name in names:
        src = name if name in by_name else aliases.get(name)
        node = by_name.get(src) if src else None
        is_buffer = (src or name) in buffers or (module is not None and _is_buffer(module, name))
        shape = tuple(node.meta["val"].shape) if node is not None else _shape(module, name)
        if (node is None or not node.users) and not is_buffer:
            unused.append(name)
        kind = depths.kind.get(src or name) if src in used else None
        kind = kind or ("buffer" if is_buffer else module_kind(module, name))
        if is_buffer and kind != "norm":
            kind = "buffer"
        layer = depths.depth.get(src or name, 0) if src in used else 0
        role = "buffer" if is_buffer else ("bias" if name.endswith("bias") else "weight")
        ax_groups: list[str | None] = []
        blocks: list[int] = []
        for ax in range(len(shape)):
            got = axes.resolve(vals[node][ax]) if node is not None and src in used and vals.get(node) else None
            if got is None:
                ax_groups.append(None)
                blocks.append(1)
                continue
            root, block = got
            if root not in group_names:
                gname = _group_name(name, ax, block, kind, set(sizes))
                group_names[root] = gname
                sizes[gname] = shape[ax] // block
            ax_groups.append(group_names[root])
            blocks.append(block)
        out.append(ParamSpec(name, shape, kind, role, layer, tuple(ax_groups), tuple(blocks)))
    spec = WeightSpec(tuple(out), tuple(PermGroup(g, n) for g, n in sizes.items()))
    return Inference(spec, tuple(sorted(set(unknown))), tuple(unused))


def _is_buffer(module: torch.nn.Module, name: str) -> bool:
    return name in dict(module.named_buffers())


def _shape(module: torch.nn.Module | None, name: str) -> tuple[int, ...]:
    if module is None:
        raise BadWeights(f"state entry {name!r} is not in the traced program")
    return tuple(module.state_dict()[name].shape)


def _group_name(param: str, ax: int, block: int, kind: str, taken: set[str]) -> str:
    base = param.rsplit(".", 1)[0] if param.endswith((".weight", ".bias")) else param
    role = "heads" if block > 1 and kind.startswith("attn") else ("out" if ax == 0 else ("in" if ax == 1 else f"ax{ax}"))
    name, k = f"{base}.{role}", 1
    while name in taken:
        k += 1
        name = f"{base}.{role}{k}"
    return name


def _aliases(module: torch.nn.Module, names: Sequence[str], traced: set[str]) -> dict[str, str]:
    """Tied entries: a state name the program does not list, sharing storage with one it does."""
    state = module.state_dict(keep_vars=True)
    ptr = {(state[n].data_ptr(), tuple(state[n].shape)): n for n in traced if n in state}
    return {n: ptr[(state[n].data_ptr(), tuple(state[n].shape))] for n in names
            if n not in traced and (state[n].data_ptr(), tuple(state[n].shape)) in ptr}


def infer(module: torch.nn.Module, example: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> Inference:
    """Trace ``module`` on ``example`` and infer its spec; the spec lists ``module.state_dict()`` in order."""
    ep = trace(module, example, kwargs)
    names = list(module.state_dict())
    traced = {s.target for s in ep.graph_signature.input_specs if s.kind in (InputKind.PARAMETER, InputKind.BUFFER)}
    return infer_program(ep, names, module, _aliases(module, names, traced))


def infer_spec(module: torch.nn.Module, example: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> WeightSpec:
    return infer(module, example, kwargs).spec
