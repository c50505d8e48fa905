"""``zoo build``: train a zoo family into the lake, with a progress bar."""
from __future__ import annotations

import time
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from storage.lake import Lake
from cli.common import LakeOption

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("build")(build_cmd)
    app.command("families")(families_cmd)


def parse_checkpoints(text: Optional[str]) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        from zoo.sampling import BadConfig  # torch-heavy: imported only when needed

        raise BadConfig(f"--checkpoints must be comma-separated epochs such as 5,10,20 (got {text!r})") from None


def build_cmd(family: Optional[str] = typer.Option(None, "--family", "-f", help="Zoo family (see `zoo families`); "
                                                  "with --suite: only this family of the suite"),
              n: Optional[int] = typer.Option(None, "--n", help="Number of members (0..n-1; stored ones are skipped)"),
              suite: Optional[str] = typer.Option(None, "--suite", help="Build, label and tag a whole suite "
                                                  "(benchmark); --n then overrides its sizes"),
              seed: int = typer.Option(0, "--seed", help="Build seed: member i is a pure function of (family, i, seed)"),
              checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="Epochs to store, e.g. 5,10,20"),
              device: str = typer.Option("cpu", "--device", help="torch device"),
              threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)"),
              population_size: str = typer.Option("auto", "--population-size",
                                                  help="Members per population, or 'auto' (a memory budget)"),
              memory_mb: float = typer.Option(1024, "--memory-mb", help="Memory budget of one population step (auto)"),
              shards: int = typer.Option(1, "--shards", help="Split the build into this many tasks (runs the build_zoo flow)"),
              runner: str = typer.Option("threads", "--runner", help="Task runner for shards: threads | dask"),
              dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Existing Dask scheduler"),
              workers: Optional[int] = typer.Option(None, "--workers", help="Shards: threads or Dask LocalCluster "
                                                    "workers (default 2). --suite: worker processes (default 1; "
                                                    "> 1 needs a sqlite: or postgres: lake)"),
              lake: Optional[str] = LakeOption) -> None:
    """Train members of a zoo family and store every checkpoint (re-running resumes, never duplicates)."""
    import torch

    from zoo.build import build_zoo
    from zoo.families import FAMILIES

    if suite is not None or family is None:
        from cli.suite import build_suite_cmd  # a suite: its own module (labeling.suite)

        return build_suite_cmd(suite, family, n, device, threads, lake, workers or 1)
    if n is None:
        raise typer.BadParameter("--n is required with --family", param_hint="--n")
    FAMILIES.get(family)  # unknown family: one clear line before the lake is touched
    cps = parse_checkpoints(checkpoints)
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    if shards > 1:  # the flow deals whole populations to tasks on the runner, each its own snapshots
        from core import settings
        from flows.build import build_zoo as build_flow

        location = settings.lake_location(lake)
        Lake.open(location, create=True).close()
        out = build_flow(family=family, n=n, seed=seed, checkpoints=list(cps) if cps else None,
                         lake=location, device=device, population_size=population_size, memory_mb=memory_mb,
                         shards=shards, runner=runner, dask_address=dask_address, workers=workers or 2)
        console.print(f"build {out['run_id']}: {len(out['new_ids'])} new models in {len(out['shards'])} shards, "
                      f"snapshot {out['snapshot_id']}, {time.time() - started:.1f} s")
        return
    with Lake.open(lake, create=True) as lk, Progress(
            TextColumn(f"building {family}"), BarColumn(), MofNCompleteColumn(), TextColumn("member-epochs"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("build", total=None)
        result = build_zoo(lk, family, n, seed=seed, checkpoints=cps, device=device,
                           progress=lambda done, total: bar.update(task, completed=done, total=total),
                           population_size=population_size, memory_budget_mb=memory_mb)
    console.print(f"build {result.run_id}: {len(result.new_ids)} new models, "
                  f"{len(result.model_ids) - len(result.new_ids)} already stored, snapshot {result.snapshot_id}, "
                  f"{time.time() - started:.1f} s")


def families_cmd(reliability: bool = typer.Option(False, "--reliability", help="Print each family's stored label "
                                                 "reliability (split-half / bootstrap tau) from the lake"),
                 lake: Optional[str] = LakeOption) -> None:
    """List the zoo families: dataset, architecture, default checkpoints."""
    from zoo.families import FAMILIES

    if reliability:
        from cli.suite import reliability_cmd

        return reliability_cmd(lake)
    for name, fam in FAMILIES.items():
        typer.echo(f"{name}\t{fam.dataset}\t{fam.arch}\tcheckpoints={list(fam.checkpoints)}\tepochs={fam.space.epochs}")
