"""``zoo ingest hf|timm|file``: bring outside models into the lake (see ``zoo.ingest``)."""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import typer
from rich.console import Console

from core.errors import ZooError
from storage.lake import Lake
from cli.common import LakeOption

console = Console(stderr=True)
ingest_app = typer.Typer(no_args_is_help=True, help="Ingest models from the Hugging Face Hub, timm, torchvision, or a file.")

DatasetOption = typer.Option("none", "--dataset", "-d", help="Dataset the model is labeled on (registry name)")


def register(app: typer.Typer) -> None:
    app.add_typer(ingest_app, name="ingest")


def _report(result) -> None:
    state = "stored" if result.new else "already stored"
    console.print(f"{state}: {result.model_id} ({result.arch}, {result.n_params} parameters, source {result.source}), "
                  f"snapshot {result.snapshot_id}")
    typer.echo(result.model_id)


@ingest_app.command("hf")
def hf_cmd(repo_id: str = typer.Argument(..., help="Hub repo, e.g. org/name"),
           revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default main)"),
           seq_len: int = typer.Option(64, "--seq-len", help="Token sequence length recorded for BERT-style models"),
           dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """A hub repo with config.json + model.safetensors: any transformers model type (token or pixel input) or a
    timm model. Honours HF_HUB_OFFLINE."""
    from zoo.ingest import ingest_hf

    with Lake.open(lake, create=True) as lk:
        with console.status(f"ingesting {repo_id}"):
            _report(ingest_hf(lk, repo_id, revision=revision, dataset=dataset, seq_len=seq_len))


@ingest_app.command("timm")
def timm_cmd(name: str = typer.Argument(..., help="timm model name with pretrained weights (also hf-hub:org/name)"),
             dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """timm.create_model(NAME, pretrained=True): any timm model (ResNets/ViTs map onto the hand-written specs,
    others get a spec inferred from the traced graph)."""
    from zoo.ingest import ingest_timm

    with Lake.open(lake, create=True) as lk:
        with console.status(f"ingesting {name}"):
            _report(ingest_timm(lk, name, dataset=dataset))


@ingest_app.command("file")
def file_cmd(paths: list[str] = typer.Argument(..., help="Weight files (.safetensors, torch checkpoints loaded "
                                               "weights-only, or torch.export programs .pt2), folders, globs, or "
                                               "manifests (.csv/.jsonl: path, arch, config, dataset)"),
             arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Registered architecture (see zoo.archs); "
                                                "manifest rows may name their own"),
             config: Optional[str] = typer.Option(None, "--config", help='Arch config JSON, e.g. {"width": 32}'),
             max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Refuse larger files"),
             module: Optional[str] = typer.Option(None, "--module", help="pkg.mod:Factory building the nn.Module the "
                                                  "weights belong to (its spec is inferred); --config gives "
                                                  '{"input_shape": [...], "kwargs": {...}}'),
             batch_size: int = typer.Option(32, "--batch-size", help="Models per snapshot when ingesting many"),
             strict: bool = typer.Option(False, "--strict", help="Check every file first; write nothing if any fails"),
             dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """Weights of a registered architecture (--arch) or of your own module (--module) from files, or a .pt2
    program. safetensors are parsed without pickle; torch checkpoints go through torch's weights-only
    restricted unpickler, after the size limits are checked. Many files run in one process,
    ``--batch-size`` models per snapshot; a bad file is reported by name and the others still land
    (``--strict``: nothing is written unless every file is good)."""
    from zoo.ingest import IngestLimits, ingest_file
    from zoo.ingest_batch import MANIFEST_SUFFIXES

    try:
        cfg = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise ZooError(f"--config is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ZooError("--config must be a JSON object")
    limits = IngestLimits(max_file_bytes=max_bytes) if max_bytes else IngestLimits()
    single = len(paths) == 1 and pathlib.Path(paths[0]).suffix not in MANIFEST_SUFFIXES and (
        pathlib.Path(paths[0]).is_file() or not pathlib.Path(paths[0]).exists() and not set("*?[") & set(paths[0]))
    if single and (paths[0].endswith(".pt2") or module):
        return _outside_file(paths[0], module, cfg, dataset, lake, limits)
    if module:
        raise ZooError("--module takes one weights file")
    if single:
        if not arch:
            raise ZooError("give --arch (a registered architecture) or --module pkg.mod:Factory, or a .pt2 program")
        with Lake.open(lake, create=True) as lk:
            _report(ingest_file(lk, paths[0], arch, cfg, dataset=dataset, limits=limits))
        return
    _ingest_many(paths, arch, cfg, dataset, lake, limits, batch_size, strict)


def _ingest_many(paths: list[str], arch: Optional[str], cfg: dict, dataset: str, lake: Optional[str], limits,
                 batch_size: int, strict: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from zoo.ingest_batch import collect, ingest_many

    items = collect(paths, arch, cfg, dataset)
    with Lake.open(lake, create=True) as lk:
        with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.description}"), console=console, transient=True) as bar:
            task = bar.add_task("", total=len(items))
            report = ingest_many(lk, items, batch_size=batch_size, strict=strict, limits=limits,
                                 progress=lambda done, total, path: bar.update(
                                     task, completed=done, description=pathlib.Path(path).name))
    for mid in report.stored + report.already:
        typer.echo(mid)
    console.print(f"{len(report.stored)} stored, {len(report.already)} already stored, {len(report.failed)} failed "
                  f"of {len(items)} files; snapshots {', '.join(map(str, report.snapshots)) or 'none'}")
    if report.failed:
        names = "; ".join(f"{p}: {r}" for p, r in report.failed)
        raise ZooError(f"{len(report.failed)} of {len(items)} files were not ingested (the others landed): {names}")


def _outside_file(path: str, module: Optional[str], cfg: dict, dataset: str, lake: Optional[str], limits) -> None:
    from zoo.ingest_outside import ingest_program, ingest_with_module

    with Lake.open(lake, create=True) as lk, console.status(f"ingesting {path} (inferring its spec)"):
        if path.endswith(".pt2"):
            _report(ingest_program(lk, path, dataset=dataset))
        else:
            _report(ingest_with_module(lk, path, module, cfg, dataset=dataset, limits=limits))


@ingest_app.command("torchvision")
def torchvision_cmd(name: str = typer.Argument(..., help="torchvision model name, e.g. mobilenet_v3_small"),
                    weights: str = typer.Option("DEFAULT", "--weights", "-w", help="DEFAULT, a weights enum name "
                                                "(read from $TORCH_HOME when offline), or a weights file"),
                    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="One example, e.g. 3,32,32 "
                                                              "(default: the dataset's, else 3,224,224)"),
                    dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """A torchvision model as it is; its weight-space spec is inferred from the traced graph."""
    from zoo.ingest_outside import ingest_torchvision, parse_shape

    with Lake.open(lake, create=True) as lk, console.status(f"ingesting torchvision {name}"):
        _report(ingest_torchvision(lk, name, weights, dataset=dataset, input_shape=parse_shape(input_shape)))
