"""Ingesting any model as it is: torchvision, any timm model, any transformers model type, a
``torch.export`` program (.pt2), or a safetensors file plus the user's own module factory.

Each becomes an ``outside`` architecture (``zoo.archs.outside``) whose spec is inferred from the traced
graph. Before anything is written, the rebuilt module must load the weights strictly, compute what the
source computed, and its inferred symmetries are checked numerically (every group permuted at once
leaves the outputs unchanged), so a stored spec is never a guess.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import torch

from core.errors import BadWeights, ZooError
from core.spec import WeightSpec, permute, random_perms
from storage.lake import Lake
from zoo.archs import build
from zoo.ingest import IngestLimits, IngestResult, _with_dataset, ingest_state, read_weights_file

DEFAULT_IMAGE = [3, 224, 224]


def parse_shape(text: str | Sequence[int] | None) -> list[int] | None:
    """'3,32,32' -> [3, 32, 32]."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            return [int(s) for s in text.replace("x", ",").split(",") if s.strip()]
        except ValueError:
            raise ZooError(f"--input-shape must look like 3,32,32, got {text!r}") from None
    return [int(s) for s in text]


def check_symmetry(module: torch.nn.Module, spec: WeightSpec, x: torch.Tensor, rel: float = 1e-4) -> None:
    """Permuting every group at once must leave the outputs unchanged (up to ``rel`` of their scale)."""
    if not spec.groups:
        return
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        ref = module.eval()(x)
        module.load_state_dict(permute(state, spec, random_perms(spec, torch.Generator().manual_seed(0))))
        got = module(x)
        module.load_state_dict(state)
    err, scale = float((got - ref).abs().max()), float(ref.abs().max())
    if not err <= rel * max(scale, 1e-12):
        raise BadWeights(f"the inferred weight-space spec is not a symmetry of this model (max error {err:.3g} at "
                         f"output scale {scale:.3g}); not ingested")


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Load strictly (checkpoints without BatchNorm's num_batches_tracked are accepted); return the full state."""
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:  # size mismatches
        lines = [ln.strip() for ln in str(e).splitlines()[1:3]]
        raise BadWeights(f"{what}: the weights do not fit the architecture ({' '.join(lines)[:300]})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BadWeights(f"{what}: the weights do not fit the architecture ({detail})")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _store(lake: Lake, arch: str, cfg: dict, state: Mapping[str, torch.Tensor], source: str, name: str,
           dataset: str, provenance: Mapping) -> IngestResult:
    from zoo.archs.outside import example_input

    built = build(arch, cfg)
    full = _load_into(built.module, state, name)
    mode = "tokens" if arch == "hf_model" and len(cfg["input_shape"]) == 1 else cfg.get("input", "values")
    x = example_input(mode, list(cfg["input_shape"]))
    check_symmetry(built.module, built.spec, x)
    return ingest_state(lake, full, arch, cfg, source, name, dataset, provenance)


def _n_outputs(module: torch.nn.Module, cfg: Mapping, mode: str = "values") -> int:
    from zoo.archs.outside import example_input

    with torch.no_grad():
        out = module.eval()(example_input(mode, list(cfg["input_shape"])))
    return int(out.shape[-1]) if out.dim() == 2 else 0


# --- torchvision -------------------------------------------------------------------------------
def ingest_torchvision(lake: Lake, name: str, weights: str = "DEFAULT", dataset: str = "none",
                       input_shape: Sequence[int] | None = None, kwargs: Mapping | None = None,
                       limits: IngestLimits = IngestLimits()) -> IngestResult:
    """``weights``: DEFAULT or a weights enum name (fetched by torchvision into $TORCH_HOME, read from there
    offline), or a path to a .safetensors / torch checkpoint file."""
    import torchvision

    if name not in torchvision.models.list_models():
        raise ZooError(f"torchvision has no model {name!r} (see torchvision.models.list_models())")
    kw = dict(kwargs or {})
    if os.path.exists(weights) or os.sep in weights or weights.endswith((".safetensors", ".pt", ".pth")):
        state = read_weights_file(weights, limits)
        provenance = {"weights_file": str(pathlib.Path(weights).resolve())}
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ZooError(f"{name}: no weights {weights!r} (known: DEFAULT, {', '.join(e.name for e in enum)})") from None
        try:
            state = w.get_state_dict(progress=False, map_location="cpu", weights_only=True)  # never unpickle code
        except Exception as e:  # offline without a cached file, or a corrupt one
            raise ZooError(f"{name}: weights {w} are not available: {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
                           f"Put {os.path.basename(w.url)} under $TORCH_HOME/hub/checkpoints") from None
        kw.setdefault("num_classes", len(w.meta.get("categories") or []) or 1000)
        provenance = {"weights": str(w), "url": w.url}
    if "num_classes" not in kw:  # the classifier's rows: the module's last 2-d+ weight, as the checkpoint has it
        with torch.device("meta"):  # shapes only: no initialization cost
            ref = torchvision.models.get_model(name, weights=None)
        last = [k for k, v in ref.state_dict().items() if v.is_floating_point() and v.dim() >= 2]
        if last and last[-1] in state:
            kw["num_classes"] = int(state[last[-1]].shape[0])
    shape = list(input_shape or [])
    cfg = {"name": name, "kwargs": kw, "n_classes": int(kw.get("num_classes", 1000)),
           **({"input_shape": shape} if shape else {})}
    cfg = _with_dataset(cfg, dataset)
    cfg.setdefault("input_shape", DEFAULT_IMAGE)
    return _store(lake, "torchvision", cfg, state, "torchvision", name, dataset, {"torchvision_name": name, **provenance})


# --- timm (any model) --------------------------------------------------------------------------
def timm_source_config(name: str) -> tuple[str, dict, list[int] | None]:
    """(architecture, model_args, input_size) of a timm name, hf-hub:org/repo or local-dir:/path."""
    from timm.models import _factory, _hub

    source, model_id = _factory.parse_model_name(name)
    if source is None:
        return model_id, {}, None
    loader = _hub.load_model_config_from_hf if source == "hf-hub" else _hub.load_model_config_from_path
    pretrained_cfg, arch, args = loader(model_id)
    size = (pretrained_cfg or {}).get("input_size")
    return arch, dict(args or {}), list(size) if size else None


def timm_outside(model: torch.nn.Module, name: str, input_shape: list[int] | None) -> tuple[dict, dict]:
    """(arch_config, state) of any timm model as ``timm_model``."""
    arch, args, size = timm_source_config(name)
    kw = {**args, "num_classes": int(getattr(model, "num_classes", 0))}
    first = next((m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
    if first is not None:
        kw.setdefault("in_chans", int(first.in_channels))
    shape = input_shape or size or list(getattr(model, "pretrained_cfg", {}).get("input_size") or DEFAULT_IMAGE)
    cfg = {"name": arch, "kwargs": kw, "input_shape": [int(s) for s in shape], "n_classes": kw["num_classes"]}
    return cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- Hugging Face transformers (any model type) ------------------------------------------------
def hf_outside(folder: pathlib.Path, cfg_dict: dict, seq_len: int, repo_id: str) -> tuple[dict, dict]:
    """(arch_config, state) of a transformers checkpoint folder: its architecture class from config.json,
    weights read by ``from_pretrained`` (safetensors only, no pickles)."""
    import transformers

    cls_name = (cfg_dict.get("architectures") or [None])[0]
    cls = getattr(transformers, cls_name, None) if cls_name else None
    if cls is None:
        raise BadWeights(f"{repo_id}: transformers has no class {cls_name!r} for model_type {cfg_dict.get('model_type')!r}")
    try:
        model = cls.from_pretrained(str(folder), use_safetensors=True, attn_implementation="sdpa")
    except Exception as e:  # noqa: BLE001  transformers raises anything on a bad checkpoint
        raise BadWeights(f"{repo_id}: {cls_name}.from_pretrained failed: {str(e).splitlines()[0][:200]}") from None
    c = model.config
    if model.main_input_name == "input_ids":
        limit = int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or seq_len)
        shape = [min(seq_len, limit)]
    elif model.main_input_name == "pixel_values":
        size = getattr(c, "image_size", 224)
        size = size if isinstance(size, (list, tuple)) else [size, size]
        shape = [int(getattr(c, "num_channels", 3)), *map(int, size)]
    else:
        raise BadWeights(f"{repo_id}: input {model.main_input_name!r} is not supported (token ids or pixel values)")
    from zoo.archs.outside import Adapter

    arch_cfg = {"class": cls_name, "hf_config": c.to_dict(), "input_shape": shape}
    mode = "tokens" if len(shape) == 1 else "values"
    arch_cfg["n_classes"] = _n_outputs(Adapter(model, model.main_input_name), arch_cfg, mode)
    return arch_cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- files ---------------------------------------------------------------------------------------
def ingest_program(lake: Lake, path: str | os.PathLike, dataset: str = "none") -> IngestResult:
    """A ``torch.export`` program (.pt2): its graph is traced already; weights are the program's own."""
    from zoo.archs.outside import file_sha256, load_program

    p = pathlib.Path(path).resolve()
    ep = load_program(p)
    inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    first = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name), None) if inputs else None
    val = first.meta.get("val") if first is not None else None
    if len(inputs) != 1 or not isinstance(val, torch.Tensor):
        raise BadWeights(f"{p}: a program with exactly one tensor input is supported (found {len(inputs)})")
    if val.dim() == 0 or not isinstance(val.shape[0], torch.SymInt):
        raise BadWeights(f"{p}: the program's batch size is fixed at export; export with a dynamic batch dimension "
                         "(dynamic_shapes={0: torch.export.Dim('batch')}) so it can be labeled on any batch")
    cfg = {"path": str(p), "sha256": file_sha256(p), "input_shape": [int(s) for s in val.shape[1:]],
           "input": "values" if val.dtype.is_floating_point else "tokens"}
    module = build("exported", {**cfg, "n_classes": 0}).module
    cfg["n_classes"] = _n_outputs(module, cfg, cfg["input"])
    cfg = _with_dataset(cfg, dataset)
    return _store(lake, "exported", cfg, module.state_dict(), "file", p.name, dataset, {"path": str(p)})


def ingest_with_module(lake: Lake, path: str | os.PathLike, factory: str, config: Mapping | None = None,
                       dataset: str = "none", limits: IngestLimits = IngestLimits()) -> IngestResult:
    """A weights file (safetensors or a weights-only torch checkpoint) for the user's module
    ``pkg.mod:Factory`` (called with ``config["kwargs"]``); ``input_shape`` comes from the config or dataset."""
    state = read_weights_file(path, limits)
    cfg = _with_dataset({"factory": factory, **dict(config or {})}, dataset)
    if "input_shape" not in cfg:
        raise ZooError(f"{pathlib.Path(path).name}: give input_shape in --config (or --dataset) to trace {factory}")
    if "n_classes" not in cfg:
        cfg["n_classes"] = _n_outputs(build("module", {**cfg, "n_classes": 0}).module, cfg, cfg.get("input", "values"))
    return _store(lake, "module", cfg, state, "file", pathlib.Path(path).name, dataset,
                  {"path": str(pathlib.Path(path).resolve()), "factory": factory})


def ingest_timm_any(lake: Lake, model: torch.nn.Module, name: str, dataset: str = "none") -> IngestResult:
    cfg, state = timm_outside(model, name, None)
    return _store(lake, "timm_model", _with_dataset(cfg, dataset), state, "timm", name, dataset, {"timm_name": name})


def ingest_hf_any(lake: Lake, folder: pathlib.Path, cfg_dict: dict, repo_id: str, seq_len: int, dataset: str,
                  provenance: Mapping) -> IngestResult:
    cfg, state = hf_outside(folder, cfg_dict, seq_len, repo_id)
    return _store(lake, "hf_model", _with_dataset(cfg, dataset), state, "hf", repo_id, dataset, provenance)
