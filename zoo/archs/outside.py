"""Architectures from outside, taken as they are; their specs are inferred from the traced graph
(``core.infer``), never hand-written.

- ``torchvision``: ``{"name": "mobilenet_v3_small", "kwargs": {"num_classes": 10}}`` ->
  ``torchvision.models.get_model(name, weights=None, **kwargs)``;
- ``timm_model``: ``{"name": "convnext_atto", "kwargs": {...}}`` -> ``timm.create_model(name, pretrained=False)``;
- ``hf_model``: ``{"hf_config": config.to_dict(), "class": "GPT2LMHeadModel"}`` -> that transformers class
  from its config; the module reads ``input_ids`` (token models) or ``pixel_values`` and returns the
  logits (or the last hidden state of a bare encoder);
- ``module``: ``{"factory": "pkg.mod:Factory", "kwargs": {...}}`` -> the user's own ``nn.Module``;
- ``exported``: ``{"path": "model.pt2", "sha256": ...}`` -> ``torch.export.load(path).module()``.

Every config also holds ``input_shape`` (one example, traced to infer the spec) and ``n_classes``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pathlib
from typing import Any, Mapping

import torch
from torch import nn

from core.errors import BadWeights, UnknownEntry, ZooError
from core.infer import infer, infer_program
from core.spec import WeightSpec
from zoo.archs import ARCHS, Built


def example_input(module_input: str, input_shape: list[int], n: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A fixed example batch: token ids for token models, uniform [0, 1) values otherwise."""
    g = torch.Generator().manual_seed(0)
    if module_input == "tokens":
        return torch.randint(0, 2, (n, *input_shape), generator=g)
    return torch.rand((n, *input_shape), generator=g, dtype=dtype)


_SPECS: dict[str, WeightSpec] = {}  # config -> inferred spec: a rebuild does not trace again


def inferred(module: nn.Module, config: Mapping, module_input: str = "values") -> Built:
    """``module`` with the spec inferred by tracing it on an example of ``config["input_shape"]``."""
    if "input_shape" not in config:
        raise ZooError("an outside architecture needs input_shape in its config (the example it is traced on)")
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _SPECS:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        _SPECS[key] = infer(module, (example_input(module_input, list(config["input_shape"]), dtype=dtype),)).spec
        if len(_SPECS) > 256:
            _SPECS.pop(next(iter(_SPECS)))
    return Built(module, _SPECS[key])


@ARCHS.register("torchvision")
def torchvision_model(config: dict) -> Built:
    import torchvision

    name = config.get("name")
    if name not in torchvision.models.list_models():
        raise UnknownEntry(f"torchvision: unknown model {name!r} (see torchvision.models.list_models())")
    m = torchvision.models.get_model(name, weights=None, **dict(config.get("kwargs", {})))
    return inferred(m, config)


@ARCHS.register("timm_model")
def timm_model(config: dict) -> Built:
    import timm

    name = config.get("name")
    try:
        m = timm.create_model(name, pretrained=False, **dict(config.get("kwargs", {})))
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise UnknownEntry(f"timm: {e}") from None
    return inferred(m, config)


class Adapter(nn.Module):
    """Wraps a model whose forward takes keywords or returns a ModelOutput: ``forward(x)`` returns one
    tensor. The wrapped model's children are registered here under their own names, so the state dict
    keys are exactly the wrapped model's (hub checkpoints load as they are)."""

    def __init__(self, inner: nn.Module, input_name: str | None = None) -> None:
        super().__init__()
        for name, child in inner.named_children():
            self.add_module(name, child)
        for name, p in inner.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in inner.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in inner._non_persistent_buffers_set)
        object.__setattr__(self, "inner", inner)  # not a child: its modules are ours already
        self.input_name = input_name

    def train(self, mode: bool = True) -> "Adapter":
        super().train(mode)
        try:
            self.inner.train(mode)
        except NotImplementedError:  # an exported program: its mode was fixed when it was exported
            pass
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_name is None:
            return self.inner(x)
        if self.input_name == "input_ids":
            out = self.inner(input_ids=x.long().flatten(1), use_cache=False) if _takes_cache(self.inner) else \
                self.inner(input_ids=x.long().flatten(1))
        else:
            out = self.inner(**{self.input_name: x})
        if isinstance(out, torch.Tensor):
            return out
        for key in ("logits", "last_hidden_state"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        return out[0]


def _takes_cache(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "use_cache")


def hf_config(config: Mapping):
    from transformers import AutoConfig

    d = dict(config.get("hf_config") or {})
    if "model_type" not in d:
        raise UnknownEntry("hf_model: hf_config lacks model_type")
    d = {k: v for k, v in d.items() if k not in ("transformers_version",)}
    try:
        return AutoConfig.for_model(d.pop("model_type"), **d)
    except (ValueError, KeyError) as e:
        raise UnknownEntry(f"hf_model: {e}") from None


def hf_class(config: Mapping, cfg) -> type:
    import transformers

    name = config.get("class") or (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        from transformers import AutoModel

        return AutoModel._model_mapping[type(cfg)]  # the bare model of that type
    return cls


@ARCHS.register("hf_model")
def hf_model(config: dict) -> Built:
    cfg = hf_config(config)
    cfg._attn_implementation = "sdpa"
    inner = hf_class(config, cfg)(cfg)
    m = Adapter(inner.eval(), inner.main_input_name)
    return inferred(m, config, "tokens" if inner.main_input_name == "input_ids" else "values")


def import_factory(path: str) -> Any:
    """``pkg.mod:Factory`` -> the object (a class or function returning an ``nn.Module``)."""
    mod_name, _, attr = str(path).partition(":")
    if not mod_name or not attr:
        raise ZooError(f"--module must look like pkg.mod:Factory, got {path!r}")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ZooError(f"cannot import {path!r}: {e}") from None
    return obj


@ARCHS.register("module")
def user_module(config: dict) -> Built:
    m = import_factory(config.get("factory", ""))(**dict(config.get("kwargs", {})))
    if not isinstance(m, nn.Module):
        raise ZooError(f"{config.get('factory')} returned {type(m).__name__}, not an nn.Module")
    return inferred(m, config, config.get("input", "values"))


def file_sha256(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_program(path: str | pathlib.Path):
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadWeights(f"{p}: no such file")
    try:
        return torch.export.load(str(p))
    except Exception as e:  # noqa: BLE001  a corrupt archive raises anything
        raise BadWeights(f"{p}: not a torch.export program: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


@ARCHS.register("exported")
def exported(config: dict) -> Built:
    path = config.get("path", "")
    if config.get("sha256") and file_sha256(path) != config["sha256"]:
        raise BadWeights(f"{path}: the program changed since it was ingested (sha256 differs)")
    ep = load_program(path)
    module = Adapter(ep.module())  # same state-dict keys; eval()/train() are no-ops on a program
    names = list(module.state_dict())
    spec: WeightSpec = infer_program(ep, names, module).spec
    return Built(module, spec)
