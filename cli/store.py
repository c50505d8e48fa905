"""Store commands: init, sql, snapshots, tag, show, export."""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable

from core.errors import LakeError
from storage.lake import Lake
from cli.common import AtOption, LakeOption

console = Console()
FORMATS = ("table", "csv", "json", "parquet")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("sql")(sql)
    app.command("snapshots")(snapshots)
    app.command("tag")(tag)
    app.command("show")(show)
    app.command("export")(export)


def init(location: Optional[str] = typer.Argument(None, help="Lake location (default: --lake, $ZOO_LAKE or ./lake)"),
         lake: Optional[str] = LakeOption) -> None:
    """Create a lake (idempotent) with every table of the schema."""
    with Lake.open(location or lake, create=True) as lk:
        console.print(f"lake ready at {lk.config.display} (snapshot {lk.current_snapshot()})")
        console.print(data_path_line(lk), soft_wrap=True)


def data_path_line(lk: Lake) -> str:
    """Which data path this lake uses, and the recorded one when the lake folder was moved."""
    moved = f" (the lake was moved: its catalog records {lk.moved_from})" if lk.moved_from else ""
    return f"data path {lk.data_path}{moved}"


def sql(query: str = typer.Argument(..., help="SQL over models, tensors, labels, predictions, runs, tags"),
        at: Optional[str] = AtOption, fmt: str = typer.Option("table", "--format", "-f", help="table|csv|json|parquet"),
        out: Optional[pathlib.Path] = typer.Option(None, "--out", "-o", help="Write to this file"),
        write: bool = typer.Option(False, "--write", help="Allow statements that change the lake"),
        lake: Optional[str] = LakeOption) -> None:
    """Run SQL against the lake (read-only unless --write), at the latest snapshot or --at SNAPSHOT|TAG."""
    if fmt not in FORMATS:
        raise LakeError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "parquet" and out is None:
        raise LakeError("--format parquet needs --out FILE")
    if write and at is not None:
        raise LakeError("--write cannot be combined with --at (past snapshots are read-only)")
    with Lake.open(lake, read_only=not write, at=at) as lk:
        if write:
            lk.commit(lambda: lk.con.execute(query), f"zoo sql --write: {query[:120]}")
            console.print("ok")
            return
        lk.lock_down()
        table = lk.query_table(query)  # retried whole while writers hold the catalog
        if table is None:
            return
        _emit(table, fmt, out)


def _emit(table, fmt: str, out: Optional[pathlib.Path]) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, str(out))
        return
    if fmt == "csv":
        import pyarrow.csv as pcsv

        sink = pathlib.Path(out) if out else None
        if sink:
            pcsv.write_csv(table, str(sink))
        else:
            buf = __import__("io").BytesIO()
            pcsv.write_csv(table, buf)
            sys.stdout.write(buf.getvalue().decode())
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), default=str, indent=1)
        (pathlib.Path(out).write_text(text) if out else print(text))
        return
    rich_table = RichTable(*table.column_names)
    for row in table.to_pylist():
        rich_table.add_row(*[_cell(v) for v in row.values()])
    if out:
        with open(out, "w") as fh:
            Console(file=fh, width=200).print(rich_table)
    else:
        console.print(rich_table)


def _cell(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def snapshots(lake: Optional[str] = LakeOption) -> None:
    """List snapshots with their commit messages and tags."""
    with Lake.open(lake, read_only=True) as lk:
        t = RichTable("snapshot", "time", "message", "tags")
        for s in lk.snapshots():
            t.add_row(str(s["snapshot_id"]), str(s["time"])[:19], s["message"] or "", ",".join(s["tags"]))
        console.print(t)
        console.print(f"{lk.config.display}: {data_path_line(lk)}", soft_wrap=True)


def tag(name: str = typer.Argument(...), at: Optional[str] = AtOption, lake: Optional[str] = LakeOption) -> None:
    """Name the current snapshot (or --at SNAPSHOT) so datasets can refer to it."""
    with Lake.open(lake) as lk:
        sid = lk.tag(name, at)
        console.print(f"tag {name} -> snapshot {sid}")


def show(model_id: str = typer.Argument(...), at: Optional[str] = AtOption, lake: Optional[str] = LakeOption) -> None:
    """A model's record, its tensors and its labels."""
    with Lake.open(lake, read_only=True, at=at) as lk:
        columns, rec = lk.fetch_with_columns("SELECT * EXCLUDE (spec) FROM models WHERE model_id = ?", [model_id])
        if not rec:
            raise LakeError(f"unknown model {model_id!r}")
        for k, v in zip(columns, rec[0]):
            console.print(f"[bold]{k}[/]: {v}")
        t = RichTable("tensor", "kind", "shape", "dtype")
        for name, kind, shape, dtype in lk.fetch(
                "SELECT name, kind, shape, dtype FROM tensors WHERE model_id = ? ORDER BY ordinal", [model_id]):
            t.add_row(name, kind, "x".join(map(str, shape)), dtype)
        console.print(t)
        _print_groups(lk.fetch("SELECT spec FROM models WHERE model_id = ?", [model_id])[0][0])
        t = RichTable("property", "value", "labeler", "version")
        for prop, value, labeler, ver in lk.fetch(
                "SELECT property, value, labeler, labeler_version FROM labels WHERE model_id = ? ORDER BY property",
                [model_id]):
            t.add_row(prop, f"{value:.6g}", labeler, str(ver))
        console.print(t)


def _print_groups(spec_json: str) -> None:
    """The weight-space permutation groups: size and the tensor axes each one moves (with its block)."""
    from core.spec import WeightSpec

    spec = WeightSpec.from_json(spec_json)
    t = RichTable("group", "size", "axes (tensor:axis/block)", title=f"{len(spec.groups)} permutation groups")
    for g in spec.groups:
        uses = [f"{p.name}:{ax}" + (f"/{b}" if b > 1 else "") for p in spec.params
                for ax, (name, b) in enumerate(zip(p.axes, p.blocks)) if name == g.name]
        t.add_row(g.name, str(g.size), ", ".join(uses[:4]) + (f" (+{len(uses) - 4})" if len(uses) > 4 else ""))
    console.print(t)


def export(directory: pathlib.Path = typer.Argument(..., help="Output folder: one sub-folder per model"),
           at: Optional[str] = AtOption, where: Optional[str] = typer.Option(None, "--where", help="SQL filter on models"),
           lake: Optional[str] = LakeOption) -> None:
    """Export models as model.safetensors + config.json (arch, configs, spec, labels)."""
    from rich.progress import track

    from storage import files
    from storage.writes import read_models, read_weights

    with Lake.open(lake, read_only=True, at=at) as lk:
        records = read_models(lk, where)
        directory.mkdir(parents=True, exist_ok=True)
        for rec in track(records, description="exporting", console=console, disable=not records):
            state = read_weights(lk, [rec.model_id])[rec.model_id]
            d = directory / rec.model_id
            d.mkdir(exist_ok=True)
            files.state_to_safetensors(state, d / "model.safetensors", {"model_id": rec.model_id})
            labels = {p: v for p, v in lk.fetch("SELECT property, value FROM labels WHERE model_id = ?", [rec.model_id])}
            cfg = {"model_id": rec.model_id, "family": rec.family, "arch": rec.arch, "arch_config": rec.arch_config,
                   "dataset": rec.dataset, "train_config": rec.train_config, "seed": rec.seed, "run_id": rec.run_id,
                   "epoch": rec.epoch, "step": rec.step, "source": rec.source, "spec": rec.spec.to_dict(),
                   "labels": labels, "snapshot_id": lk.snapshot if lk.snapshot is not None else lk.current_snapshot()}
            (d / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
        console.print(f"exported {len(records)} models to {directory}")
