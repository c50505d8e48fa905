"""``zoo build --suite NAME`` and ``zoo families --reliability`` (the work lives in labeling.suite)."""
from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from core.errors import ZooError
from storage.lake import Lake

console = Console(stderr=True)


def build_suite_cmd(suite: Optional[str], family: Optional[str], n: Optional[int], device: str,
                    threads: Optional[int], lake: Optional[str], workers: int = 1) -> None:
    import torch

    from labeling.suite import SUITES, build_suite

    if suite is None:
        raise ZooError("zoo build needs --family (with --n) or --suite")
    SUITES.get(suite)  # unknown suite: one clear line before the lake is touched
    if threads and workers == 1:
        torch.set_num_threads(threads)
    started = time.time()
    with Lake.open(lake, create=True) as lk, Progress(
            TextColumn("{task.description:<32}"), BarColumn(), TaskProgressColumn(), TextColumn("work units"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"suite {suite}", total=None)
        result = build_suite(lk, suite, n, device=device, only=family, workers=workers, threads=threads,
                             progress=lambda desc, done, total: bar.update(task, description=desc, completed=done,
                                                                           total=total),
                             log=lambda msg: bar.console.print(msg, markup=False, highlight=False))
    console.print(f"suite {suite}: {sum(f.models for f in result.families)} models in {len(result.families)} "
                  f"families, tagged {result.tag} (snapshot {result.snapshot_id}), {time.time() - started:.0f} s")


def reliability_cmd(lake: Optional[str]) -> None:
    from labeling.suite import stored_reliability

    with Lake.open(lake) as lk:
        rows = stored_reliability(lk)
    if not rows:
        console.print("no label reliability stored yet (zoo build --suite benchmark measures it)")
        return
    table = Table(title="label reliability of test accuracy (latest measurement per family)")
    for col in ("family", "runs", "models", "n_test", "split-half tau", "bootstrap tau", "acc q1/med/q3",
                "< 20%", "build s", "label s"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for fam, r in sorted(rows.items()):
        f = lambda k, fmt="{:.3f}": fmt.format(r[k]) if k in r else "-"
        quart = f"{r['acc_q1']:.2f}/{r['acc_median']:.2f}/{r['acc_q3']:.2f}" if "acc_q1" in r else "-"
        table.add_row(fam, f("n_runs", "{}"), f("n_models", "{}"), f("n_test", "{}"), f("split_half_tau"),
                      f("bootstrap_tau"), quart, f("frac_under_20", "{:.0%}"), f("build_s", "{:.0f}"),
                      f("label_s", "{:.0f}"))
    Console(width=max(160, Console().width)).print(table)  # never truncate the numbers
