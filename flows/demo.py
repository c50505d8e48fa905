"""`make demo`: the ``pipeline`` flow end to end, offline, on the embedded digits data.

Builds a small digits-cnn zoo (default 50 members x 2 checkpoints = 100 models), labels it (accuracy/loss/F1,
FLOPs/params, weight statistics, PGD; AutoAttack is skipped unless ``--autoattack K`` labels K models),
tags the snapshot ``demo``, trains WeightNet, writes predictions, runs the small evaluation suite and
prints the headline table. Prefect runs with a temporary local API and keeps its state under
``.prefect/`` in the repository; no server is needed. Re-running on the same lake is idempotent.

    python -m flows.demo --lake demo-lake [--n 100] [--fresh] [--autoattack 20]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_PROPERTIES = ["performance", "efficiency", "weight_stats", "pgd"]
DEMO_TARGETS = ["test_accuracy", "gen_gap_accuracy", "pgd_linf_2_255"]


def _prefect_home(home: pathlib.Path) -> None:
    """Prefect reads its settings once, at import: set them before anything imports prefect."""
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # the temporary API server migrates its database on first use: slow on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", default="demo-lake")
    ap.add_argument("--family", default="digits-cnn")
    ap.add_argument("--n", type=int, default=50, help="zoo members (each stored with its 2 checkpoints)")
    ap.add_argument("--properties", default=",".join(DEMO_PROPERTIES))
    ap.add_argument("--targets", default=",".join(DEMO_TARGETS))
    ap.add_argument("--autoattack", type=int, default=0, help="also run AutoAttack on this many models (slow)")
    ap.add_argument("--suite", default="small", help="evaluation suite ('none' to skip)")
    ap.add_argument("--seeds", default="0,1,2", help="evaluation seeds (fewer: faster)")
    ap.add_argument("--runner", default="threads", choices=["threads", "dask"])
    ap.add_argument("--fresh", action="store_true", help="delete the lake first")
    ap.add_argument("--home", default=str(ROOT / ".prefect"), help="Prefect home (state, cached results)")
    args = ap.parse_args(argv)
    _prefect_home(pathlib.Path(args.home).absolute())

    from flows.label import label_zoo
    from flows.pipeline import pipeline

    lake = args.lake if ":" in args.lake.split("/")[0] else str(pathlib.Path(args.lake).absolute())
    if args.fresh and pathlib.Path(lake).is_dir():
        shutil.rmtree(lake)
    from storage.lake import Lake

    Lake.open(lake, create=True).close()
    t0 = time.monotonic()
    targets = [t for t in args.targets.split(",") if t]
    result = pipeline(family=args.family, n=args.n, lake=lake, properties=args.properties.split(","),
                      runner=args.runner, tag="demo", targets=targets,
                      suite=None if args.suite == "none" else args.suite, out_dir=str(ROOT / "reports"),
                      seeds=[int(x) for x in args.seeds.split(",") if x])
    if args.autoattack:
        where = f"model_id IN (SELECT model_id FROM models ORDER BY model_id LIMIT {int(args.autoattack)})"
        label_zoo(properties=["autoattack"], where=where, lake=lake, runner=args.runner)
    print_summary(result, lake, time.monotonic() - t0)
    return 0


def print_summary(result: dict, lake: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b, lab, tr = result["build"], result["label"], result["train"]
    console.rule("WeightNet Zoo demo")
    print(f"lake {lake}: {len(b['model_ids'])} models, {lab['n_labels']} new labels, tag 'demo', "
          f"WeightNet run {tr['run_id']} ({tr['predictions']} predictions) in {seconds / 60:.1f} min")
    ev = (result.get("report") or {}).get("evaluation")
    if ev and ev.get("headline"):
        console.rule("Headline (evaluation suite)")
        print(ev["text"])  # the evaluation's own plain-text table: readable at any terminal width
        if ev.get("report_path"):
            print(f"report: {ev['report_path']}")
    else:
        table = Table(title="WeightNet metrics")
        table.add_column("metric")
        table.add_column("value")
        from flows.train import _metric_rows

        for row in _metric_rows(tr["metrics"]):
            v = row["value"]
            table.add_row(row["metric"], f"{v:.4f}" if isinstance(v, float) else str(v))
        console.print(table)
    print(f'query it: zoo sql "SELECT property, avg(value) FROM labels GROUP BY ALL" --lake {lake}')


if __name__ == "__main__":
    sys.exit(main())
