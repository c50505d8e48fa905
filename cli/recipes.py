"""``zoo recipes``: train models with recipes outside a family's sampling space, as files to ingest."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("recipes")(recipes_cmd)


def recipes_cmd(family: Optional[str] = typer.Option(None, "--family", "-f", help="Family whose architectures to train"),
                n: int = typer.Option(40, "--n", help="Models to train (recipes taken in turn)"),
                out: str = typer.Option("outside-recipes", "--out", help="Folder for the weight files and manifest.jsonl"),
                seed: int = typer.Option(0, "--seed", help="Member i is a pure function of (family, i, seed)"),
                recipe: Optional[str] = typer.Option(None, "--recipe", help="Comma-separated recipes (default: all)"),
                threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
                list_: bool = typer.Option(False, "--list", help="List the recipes and what puts each outside the zoo")) -> None:
    """Train models with recipes outside the zoo's space (optimizers, schedules, augmentation, smoothing) as files.

    Writes <out>/manifest.jsonl for `zoo ingest file`; the evaluation scores them as "outside recipes"."""
    import torch

    from zoo.recipes import RECIPES, export_outside

    if list_:
        for name, r in RECIPES.items():
            typer.echo(f"{name}\t{'; '.join(r.outside_the_zoo())}")
        return
    if family is None:
        raise typer.BadParameter("--family is required (see `zoo families`)", param_hint="--family")
    if threads:
        torch.set_num_threads(threads)
    names = tuple(r.strip() for r in recipe.split(",") if r.strip()) if recipe else None
    with Progress(TextColumn(f"training {family} outside recipes"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("train", total=n)
        manifest = export_outside(family, n, out, seed, names, lambda done, _t: bar.update(task, completed=done))
    console.print(f"{n} models in {manifest.parent}; ingest them with: zoo ingest file {manifest}")
