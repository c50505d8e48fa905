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
def file_cmd(path: str = typer.Argument(..., help="A .safetensors file, a torch checkpoint (loaded weights-only), "
                                                  "or a torch.export program (.pt2)"),
             arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Registered architecture (see zoo.archs)"),
             config: Optional[str] = typer.Option(None, "--config", help='Arch config JSON, e.g. {"width": 32}'),
             max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Refuse larger files"),
             module: Optional[str] = typer.Option(None, "--module", help="pkg.mod:Factory building the nn.Module the "
                                                  "weights belong to (its spec is inferred); --config gives "
                                                  '{"input_shape": [...], "kwargs": {...}}'),
             dataset: str = DatasetOption, lake: Optional[str] = LakeOption) -> None:
    """Weights of a registered architecture (--arch) or of your own module (--module) from a file, or a .pt2
    program; nothing is ever unpickled."""
    from zoo.ingest import IngestLimits, ingest_file

    try:
        cfg = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise ZooError(f"--config is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ZooError("--config must be a JSON object")
    limits = IngestLimits(max_file_bytes=max_bytes) if max_bytes else IngestLimits()
    if path.endswith(".pt2") or module:
        return _outside_file(path, module, cfg, dataset, lake, limits)
    if not arch:
        raise ZooError("give --arch (a registered architecture) or --module pkg.mod:Factory, or a .pt2 program")
    with Lake.open(lake, create=True) as lk:
        _report(ingest_file(lk, path, arch, cfg, dataset=dataset, limits=limits))


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
