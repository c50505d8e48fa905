"""``zoo ingest hf|timm|file``: bring outside models into the lake (see ``zoo.ingest``)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from core.errors import ZooError
from storage.lake import Lake
from zoo.commands.common import LakeOption

console = Console(stderr=True)
ingest_app = typer.Typer(no_args_is_help=True, help="Ingest models from the Hugging Face Hub, timm, or a file.")

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
    """A hub repo with config.json + model.safetensors (BERT-style encoders, timm ResNet/ViT). Honours HF_HUB_OFFLINE."""
    from zoo.ingest import ingest_hf

    with Lake.open(lake, create=True) as lk:
        with console.status(f"ingesting {repo_id}"):
            _report(ingest_hf(lk, repo_id, revision=revision, dataset=dataset, seq_len=seq_len))


@ingest_app.command("timm")
def timm_cmd(name: str = typer.Argument(..., help="timm model name with pretrained weights (also hf-hub:org/name)"),
             dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """timm.create_model(NAME, pretrained=True); ResNets and ViTs are supported."""
    from zoo.ingest import ingest_timm

    with Lake.open(lake, create=True) as lk:
        with console.status(f"ingesting {name}"):
            _report(ingest_timm(lk, name, dataset=dataset))


@ingest_app.command("file")
def file_cmd(path: str = typer.Argument(..., help="A .safetensors file or a torch checkpoint (loaded weights-only)"),
             arch: str = typer.Option(..., "--arch", "-a", help="Registered architecture (see zoo.archs)"),
             config: Optional[str] = typer.Option(None, "--config", help='Arch config JSON, e.g. {"width": 32}'),
             max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Refuse larger files"),
             dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """Weights of a registered architecture from a file; nothing is ever unpickled."""
    from zoo.ingest import IngestLimits, ingest_file

    try:
        cfg = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise ZooError(f"--config is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ZooError("--config must be a JSON object")
    limits = IngestLimits(max_file_bytes=max_bytes) if max_bytes else IngestLimits()
    with Lake.open(lake, create=True) as lk:
        _report(ingest_file(lk, path, arch, cfg, dataset=dataset, limits=limits))
