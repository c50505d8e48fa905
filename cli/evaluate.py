"""``zoo evaluate``: WeightNet vs the baselines on the zoo at a snapshot/tag; writes reports/<run>/report.md."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import AtOption, LakeOption

console = Console()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)


def evaluate_cmd(suite: str = typer.Option("small", "--suite", "-s",
                                           help="small (minutes) | standard (everything) | cross (cross-architecture targets) "
                                           "| ablations (WeightNet's input and permutation ablations on one zoo)"),
                 at: Optional[str] = AtOption,
                 out: str = typer.Option("reports", "--out", "-o", help="Folder for reports/<run>/report.md and plots"),
                 seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (metrics: mean ± std)"),
                 where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL predicate over the models table"),
                 device: str = typer.Option("cpu", "--device", "-d", help="cpu | cuda"),
                 threads: int = typer.Option(1, "--threads", help="torch threads while fitting (small models: 1 is fastest)"),
                 workers: int = typer.Option(1, "--workers", help="processes fitting (experiment, seed) units "
                                             "in parallel, one thread each (Linux/macOS; same report as 1)"),
                 predictors: Optional[str] = typer.Option(None, "--predictors", "-p",
                                                          help="Comma-separated subset of the suite's predictors "
                                                          "(default: all), e.g. weightnet,statnn-gbt,statnn-mlp "
                                                          "leaves out the NFN (4-15 min a fit on a benchmark zoo)"),
                 lake: Optional[str] = LakeOption) -> None:
    """Evaluate WeightNet and the baselines (StatNN, NFN, flat MLP, calculators) on identical splits."""
    from core.errors import ZooError
    from storage.lake import Lake
    from evaluation.run import SUITES, evaluate, with_predictors

    if suite not in SUITES:
        raise ZooError(f"unknown evaluation suite {suite!r} (known: {', '.join(SUITES)})")
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise ZooError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise ZooError("--seeds is empty")
    chosen = None if predictors is None else tuple(p.strip() for p in predictors.split(",") if p.strip())
    if chosen is not None:
        with_predictors(SUITES[suite], chosen)  # a bad name fails here, before the lake is opened
    with Lake.open(lake) as lk:
        with Progress(TextColumn(f"evaluate ({suite})"), BarColumn(), MofNCompleteColumn(), TextColumn("fits"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("evaluate", total=None)
            res = evaluate(lk, suite, at, out, seed_list, where=where, device=device, threads=threads, workers=workers,
                           predictors=chosen, progress=lambda done, n: bar.update(task, completed=done, total=n))
    for failure in res.failures:
        console.print(f"FAILED: {failure}", style="red", markup=False, highlight=False, soft_wrap=True)
    console.print(res.format_headline(), markup=False, highlight=False, soft_wrap=True)
    for note in res.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {res.report_path}  (run {res.run_id}, {res.status})")
    if res.status != "completed":  # partial or failed: scripts and CI must not read it as a success
        console.print(f"evaluation {res.status}: {len(res.failures)} failure(s), listed first in the report",
                      style="red", markup=False)
        raise typer.Exit(1)
