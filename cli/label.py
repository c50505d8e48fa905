"""``zoo label``: label every model lacking a property at its current version (see labeling.run)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from cli.common import LakeOption

console = Console()


def register(app: typer.Typer) -> None:
    app.command("label")(label)


def label(properties: Optional[str] = typer.Option(None, "--properties", "-p",
                                                   help="Comma-separated property names (default: all that apply)"),
          where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL predicate over the models table"),
          device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA when present) | cpu | cuda"),
          batch_size: int = typer.Option(32, "--batch-size", help="Models of one architecture labeled together"),
          seed: int = typer.Option(0, "--seed", help="Seed of the attacks' random starts"),
          threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default; 1 is best "
                                                            "for tiny models on a busy machine)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be labeled"),
          lake: Optional[str] = LakeOption) -> None:
    """Label the zoo incrementally: only models lacking a property at its current version; one snapshot per batch."""
    from labeling.registry import resolve
    from labeling.run import label_zoo, plan
    from storage.lake import Lake

    props = resolve(properties)  # unknown names fail before the lake is opened
    if threads > 0:
        import torch

        torch.set_num_threads(threads)  # the CLI process's own setting, chosen by its user
    with Lake.open(lake) as lk:
        batches = plan(lk, [p.name for p in props], where, batch_size)
        total = sum(len(ids) for ids, _ in batches)
        if dry_run or not batches:
            _summary(batches, "to label" if dry_run else "nothing to label: every model is up to date")
            return
        with Progress(TextColumn("labeling"), BarColumn(), MofNCompleteColumn(), TextColumn("models"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("label", total=total)
            res = label_zoo(lk, [p.name for p in props], where, device, batch_size,
                            progress=lambda done, n: bar.update(task, completed=done), seed=seed)
        _summary(batches, "labeled")
        console.print(f"{res.n_labels} labels for {res.n_models} models written; lake at snapshot {res.snapshot_id}")


def _summary(batches, title: str) -> None:
    counts: dict[str, int] = {}
    for ids, props in batches:
        for p in props:
            counts[f"{p.name} v{p.version}"] = counts.get(f"{p.name} v{p.version}", 0) + len(ids)
    if not counts:
        console.print(title)
        return
    table = RichTable(title=f"{sum(len(i) for i, _ in batches)} models {title}")
    table.add_column("property")
    table.add_column("models", justify="right")
    for k in sorted(counts):
        table.add_row(k, str(counts[k]))
    console.print(table)
