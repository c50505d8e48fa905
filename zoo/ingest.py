"""Ingestion: models from the Hugging Face Hub, timm, or a file become zoo members (source hf/timm/file).

Every ingested model is mapped onto a registered architecture (``transformer`` for BERT-style encoders,
``resnet``/``vit`` for timm ResNets and ViTs, anything for files with ``--arch``; any other model goes
through ``zoo.ingest_outside`` with a spec inferred from its traced graph), rebuilt with
``zoo.archs.build`` and checked to load strictly, so ``load_module`` rebuilds it like a trained one.
Weights go through ``storage.writes.write_models``: spec-validated (NaN/Inf, shapes, unknown tensors)
before anything is written; a refused model leaves the lake unchanged.

Untrusted files: safetensors headers are validated against the file size and the ``IngestLimits``
before any tensor is allocated (no pickle involved). Torch checkpoints are pickles: their archive's
declared sizes are checked against the same limits first (``storage.files.check_torch_checkpoint``;
legacy pre-zip files are refused), then they go through torch's weights-only restricted unpickler
(``weights_only=True``), which admits tensors and plain containers and refuses anything that would run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Mapping

import torch

from core.errors import BadWeights, ZooError
from core.hashing import stable_hash
from storage.files import DEFAULT_LIMITS, FileLimits, check_torch_checkpoint, state_from_safetensors
from storage.lake import Lake
from storage.writes import ModelRecord, write_models
from zoo.archs import build, load_module

# Ingest limits are the store's file limits: one place decides what a hostile file may declare.
IngestLimits = FileLimits


@dataclass(frozen=True)
class IngestResult:
    model_id: str
    arch: str
    source: str
    n_params: int
    new: bool  # False when the same weights were already stored
    snapshot_id: int


# --- reading files -----------------------------------------------------------------------------
def read_safetensors(path: pathlib.Path, limits: IngestLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Header validated against the file size and ``limits`` before any tensor is allocated."""
    return state_from_safetensors(path, limits)


def read_torch_checkpoint(path: pathlib.Path, limits: IngestLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """A torch checkpoint: sizes checked against ``limits`` before loading, then torch's weights-only
    restricted unpickler (``weights_only=True``); a pickle that asks for anything beyond tensors and plain
    containers is refused and runs nothing."""
    check_torch_checkpoint(path, limits)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # noqa: BLE001  untrusted bytes: the unpickler and zip reader raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadWeights(f"{path}: refused by the weights-only unpickler (not a plain tensor checkpoint): {first}") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model", obj))  # training checkpoints nest the weights
    if not isinstance(obj, dict) or not obj:
        raise BadWeights(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BadWeights(f"{path}: entry {bad[0]!r} is not a tensor")
    total = sum(v.numel() * v.element_size() for v in obj.values())
    if len(obj) > limits.max_tensors or total > limits.max_total_bytes:
        raise BadWeights(f"{path}: {len(obj)} tensors / {total} bytes exceed the limits")
    return dict(obj)


def read_weights_file(path: str | os.PathLike, limits: IngestLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """safetensors (by suffix or header) or a zip torch checkpoint (weights-only unpickler, after size checks)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadWeights(f"{p}: no such file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if p.suffix == ".safetensors" or not (head.startswith(b"PK") or head[:1] == b"\x80"):
        return read_safetensors(p, limits)
    return read_torch_checkpoint(p, limits)


# --- storing -----------------------------------------------------------------------------------
def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d: reshape first
    return h.hexdigest()


def ingest_state(lake: Lake, state: Mapping[str, torch.Tensor], arch: str, arch_config: Mapping, source: str,
                 name: str, dataset: str = "none", provenance: Mapping | None = None) -> IngestResult:
    """Store one model: rebuild ``arch`` from ``arch_config``, validate the weights against its spec, write.

    The id is a stable hash of (source, arch, arch_config, weights), so ingesting the same model twice
    is a no-op.
    """
    rec, state = prepare_state(state, arch, arch_config, source, name, dataset, provenance)
    new = write_models(lake, [(rec, state)], f"ingest {source} {name}")
    return IngestResult(rec.model_id, arch, source, rec.spec.n_params, bool(new), lake.current_snapshot())


def prepare_state(state: Mapping[str, torch.Tensor], arch: str, arch_config: Mapping, source: str, name: str,
                  dataset: str = "none", provenance: Mapping | None = None,
                  ) -> tuple[ModelRecord, dict[str, torch.Tensor]]:
    """(record, state) checked to rebuild ``arch`` strictly; nothing is written (batches write many)."""
    cfg = dict(arch_config)
    missing = [k for k in ("input_shape", "n_classes") if k not in cfg]
    if missing:
        raise ZooError(f"{name}: arch config lacks {', '.join(missing)} (give them in --config, or --dataset)")
    spec = build(arch, cfg).spec
    state = {k: v.detach().contiguous() for k, v in state.items()}
    model_id = stable_hash({"source": source, "arch": arch, "arch_config": cfg, "weights": weights_digest(state)})
    rec = ModelRecord(model_id=model_id, family=f"ingest-{source}", arch=arch, arch_config=cfg, dataset=dataset,
                      spec=spec, train_config={"name": name, **dict(provenance or {})}, source=source)
    spec.validate(state)  # clear error before building the module
    load_module(rec, state)  # the architecture really accepts these weights (strict)
    return rec, state


def _with_dataset(config: dict, dataset: str) -> dict:
    if dataset != "none" and ("input_shape" not in config or "n_classes" not in config):
        from zoo.datasets import load_dataset

        info = load_dataset(dataset).info
        config = {"input_shape": list(info.input_shape), "n_classes": int(info.n_classes), **config}
    return config


def ingest_file(lake: Lake, path: str | os.PathLike, arch: str, config: Mapping | None = None, dataset: str = "none",
                limits: IngestLimits = IngestLimits()) -> IngestResult:
    """A safetensors file or torch checkpoint holding a state dict of the registered ``arch``."""
    rec, state = prepare_file(path, arch, config, dataset, limits)
    new = write_models(lake, [(rec, state)], f"ingest file {rec.train_config['name']}")
    return IngestResult(rec.model_id, arch, "file", rec.spec.n_params, bool(new), lake.current_snapshot())


def prepare_file(path: str | os.PathLike, arch: str, config: Mapping | None = None, dataset: str = "none",
                 limits: IngestLimits = IngestLimits()) -> tuple[ModelRecord, dict[str, torch.Tensor]]:
    """``ingest_file`` without the write: read, rebuild and check one file (``zoo.ingest_batch`` batches these)."""
    state = read_weights_file(path, limits)
    cfg = _with_dataset(dict(config or {}), dataset)
    return prepare_state(state, arch, cfg, "file", pathlib.Path(path).name, dataset,
                         {"path": str(pathlib.Path(path).resolve())})


# --- timm --------------------------------------------------------------------------------------
def from_timm_module(model: torch.nn.Module, input_shape: list[int] | None = None) -> tuple[str, dict, dict]:
    """(arch, arch_config, state) for a timm ResNet or VisionTransformer; the rebuilt model is checked to
    compute the same logits as ``model``."""
    from timm.models.resnet import Bottleneck, ResNet
    from timm.models.vision_transformer import VisionTransformer

    from zoo.archs.timm_models import split_qkv

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(model, ResNet):
        first = model.conv1 if isinstance(model.conv1, torch.nn.Conv2d) else model.conv1[0]
        stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
        bottleneck = isinstance(stages[0][0], Bottleneck)
        cfg = {"block": "bottleneck" if bottleneck else "basic", "layers": [len(s) for s in stages],
               "channels": [(s[0].conv3.out_channels // 4) if bottleneck else s[0].conv2.out_channels for s in stages],
               "stem_type": "" if isinstance(model.conv1, torch.nn.Conv2d) else "deep",
               "stem_width": first.out_channels}
        arch, in_chans = "resnet", first.in_channels
    elif isinstance(model, VisionTransformer):
        blk = model.blocks[0]
        timm_kwargs = {"reg_tokens": int(model.num_reg_tokens), "no_embed_class": bool(model.no_embed_class),
                       "pre_norm": isinstance(model.norm_pre, torch.nn.LayerNorm),
                       "fc_norm": isinstance(model.fc_norm, torch.nn.LayerNorm)}
        if hasattr(blk.ls1, "gamma"):
            timm_kwargs["init_values"] = 1e-5
        cfg = {"patch_size": int(model.patch_embed.patch_size[0]), "embed_dim": int(model.embed_dim),
               "depth": len(model.blocks), "num_heads": int(blk.attn.num_heads),
               "mlp_ratio": blk.mlp.fc1.out_features / model.embed_dim, "qkv_bias": blk.attn.qkv.bias is not None,
               "class_token": model.cls_token is not None, "global_pool": model.global_pool, "timm_kwargs": timm_kwargs}
        arch, in_chans = "vit", model.patch_embed.proj.in_channels
        state = split_qkv(state)
        if input_shape is None:
            input_shape = [in_chans, *model.patch_embed.img_size]
    else:
        raise BadWeights(f"timm model class {type(model).__name__} has no weight-space spec here "
                         "(supported: ResNet, VisionTransformer)")
    if input_shape is None:
        input_shape = list(getattr(model, "pretrained_cfg", {}).get("input_size") or [in_chans, 32, 32])
    cfg.update(input_shape=[int(d) for d in input_shape], n_classes=int(model.num_classes))
    try:
        ours = build(arch, cfg).module
        ours.load_state_dict(state, strict=True)
    except (RuntimeError, ZooError, TypeError) as e:
        raise BadWeights(f"timm {type(model).__name__}: its options are not representable as {arch} ({str(e)[:200]})") from None
    x = torch.rand(2, *cfg["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(ours.eval()(x), model.eval()(x), atol=1e-4, rtol=1e-3)
    if not same:
        raise BadWeights(f"timm {type(model).__name__}: rebuilt as {arch} it computes different logits; not ingested")
    return arch, cfg, state


def ingest_timm(lake: Lake, name: str, dataset: str = "none") -> IngestResult:
    """``timm.create_model(name, pretrained=True)`` (hub names, ``hf-hub:org/repo``, ``local-dir:/path``)."""
    import timm

    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # unknown names, missing weights offline, corrupt files: one clear line
        raise ZooError(f"timm model {name!r} cannot be created with pretrained weights: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not _hand_written_timm(model):  # any other timm model: its spec is inferred from the traced graph
        from zoo.ingest_outside import ingest_timm_any

        return ingest_timm_any(lake, model, name, dataset)
    arch, cfg, state = from_timm_module(model)
    return ingest_state(lake, state, arch, cfg, "timm", name, dataset, {"timm_name": name})


def _hand_written_timm(model: torch.nn.Module) -> bool:
    """timm ResNets and ViTs map onto the registered ``resnet``/``vit`` (hand-written specs)."""
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, (ResNet, VisionTransformer))


# --- Hugging Face Hub --------------------------------------------------------------------------
BERT_ARCHITECTURES = ("BertForSequenceClassification", "BertModel")


def _bert(cfg: dict, state: dict[str, torch.Tensor], seq_len: int) -> tuple[str, dict, dict]:
    archs = cfg.get("architectures") or ["BertModel"]
    if archs[0] not in BERT_ARCHITECTURES:
        raise BadWeights(f"BERT head {archs[0]!r} is not supported (supported: {', '.join(BERT_ARCHITECTURES)})")
    if not any(k.startswith("bert.") for k in state):
        state = {f"bert.{k}": v for k, v in state.items()}  # a bare BertModel checkpoint
    classifier = archs[0].endswith("Classification")
    n_classes = (len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))) if classifier else 0
    keep = {k: v for k, v in state.items() if not k.endswith(("position_ids", "token_type_ids"))}
    return "transformer", {"input": "tokens", "hf_config": cfg, "n_classes": n_classes,
                           "input_shape": [min(seq_len, int(cfg.get("max_position_embeddings", seq_len)))]}, keep


def ingest_hf(lake: Lake, repo_id: str, revision: str | None = None, dataset: str = "none",
              cache_dir: str | None = None, local_files_only: bool | None = None, seq_len: int = 64,
              limits: IngestLimits = IngestLimits()) -> IngestResult:
    """A hub repo with ``config.json`` + ``model.safetensors``: BERT-style encoders -> ``transformer``,
    timm repos (config with ``architecture``) -> ``resnet``/``vit``. Honours HF_HUB_OFFLINE/HF_HUB_CACHE."""
    from huggingface_hub import snapshot_download

    try:
        folder = pathlib.Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                local_files_only=bool(local_files_only),
                                                allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # offline without a cached copy, unknown repo or revision
        raise ZooError(f"hub repo {repo_id!r}{f'@{revision}' if revision else ''} is not available: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ZooError(f"hub repo {repo_id!r} lacks config.json or model.safetensors (only safetensors are ingested)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadWeights(f"{repo_id}: config.json is not JSON ({e})") from None
    state = read_safetensors(weights, limits)
    commit = folder.name
    provenance = {"repo_id": repo_id, "revision": revision or "main", "commit": commit}
    if "architecture" not in cfg and not (cfg.get("model_type") == "bert" and
                                          (cfg.get("architectures") or ["BertModel"])[0] in BERT_ARCHITECTURES):
        from zoo.ingest_outside import ingest_hf_any  # any transformers model type: spec inferred

        return ingest_hf_any(lake, folder, cfg, repo_id, seq_len, dataset, provenance)
    if cfg.get("model_type") == "bert":
        arch, arch_cfg, state = _bert(cfg, state, seq_len)
    elif "architecture" in cfg:  # timm's hub format
        import timm

        pre = cfg.get("pretrained_cfg") or {}
        try:
            kw = {"num_classes": int(cfg.get("num_classes", 0)), "in_chans": int((pre.get("input_size") or [3])[0]),
                  **cfg.get("model_args", {})}
            model = timm.create_model(cfg["architecture"], pretrained=False, **kw)
            model.load_state_dict(state, strict=True)
        except Exception as e:
            raise BadWeights(f"{repo_id}: weights do not fit timm {cfg['architecture']!r}: {str(e)[:200]}") from None
        if not _hand_written_timm(model):
            from zoo.ingest_outside import ingest_timm_any

            return ingest_timm_any(lake, model, f"hf-hub:{repo_id}", dataset)
        arch, arch_cfg, state = from_timm_module(model, pre.get("input_size"))
    else:
        raise BadWeights(f"{repo_id}: config.json describes neither a BERT-style encoder (model_type 'bert') nor a "
                         f"timm model (found model_type={cfg.get('model_type')!r})")
    return ingest_state(lake, state, arch, arch_cfg, "hf", repo_id, dataset, provenance)
