"""Concurrent-writer scenarios for the store, shared by tests/test_concurrency.py and bench/faults.py.

Run as ``python -m bench.loadgen.stress writer LOCATION WRITER_ID N_BATCHES BATCH_SIZE [SECONDS]`` (one writer
process; with SECONDS it stops after the batch that passes that time and prints ``batches=K``) or
``python -m bench.loadgen.stress reader LOCATION SECONDS SIZE`` (checks snapshots while writers run).
A writer stores ``N_BATCHES`` batches of tiny models (one snapshot each) and a label per model (one
more snapshot per batch), like a build and a labeling run interleaved. Model ids are deterministic,
so ``audit`` knows exactly which rows must exist.

With a DuckDB-file catalog (one process at a time) each writer opens the lake per batch and closes it,
so writers take turns through ``Lake.open``'s lock wait; SQLite and PostgreSQL writers stay open.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from core.spec import ParamSpec, PermGroup, WeightSpec
from storage.lake import Lake, LakeConfig
from storage.writes import Label, ModelRecord, write_labels, write_models

SPEC = WeightSpec(
    (ParamSpec("0.weight", (3, 4), "linear", "weight", 0, ("h", None)),
     ParamSpec("0.bias", (3,), "linear", "bias", 0, ("h",)),
     ParamSpec("1.weight", (2, 3), "linear", "weight", 1, (None, "h")),
     ParamSpec("1.bias", (2,), "linear", "bias", 1, (None,))),
    (PermGroup("h", 3),))
TENSORS_PER_MODEL = len(SPEC.params)


def model_id(writer: int, batch: int, i: int) -> str:
    return f"w{writer:02d}-b{batch:04d}-{i:04d}"


def make_batch(writer: int, batch: int, size: int) -> list[tuple[ModelRecord, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(writer * 1_000_003 + batch)
    out = []
    for i in range(size):
        state = {p.name: torch.randn(p.shape, generator=g) for p in SPEC.params}
        rec = ModelRecord(model_id(writer, batch, i), "stress", "mlp", {"input_shape": [4], "n_classes": 2},
                          "none", SPEC, seed=writer, run_id=f"w{writer}", step=batch)
        out.append((rec, state))
    return out


def run_writer(location: str, writer: int, n_batches: int, size: int, seconds: float | None = None) -> int:
    """Write up to ``n_batches`` batches (fewer when ``seconds`` runs out, but at least one); returns how
    many landed."""
    keep_open = LakeConfig.parse(location).catalog != "duckdb"
    deadline = None if seconds is None else time.monotonic() + seconds
    lake = Lake.open(location) if keep_open else None
    done = 0
    try:
        for b in range(n_batches):
            if deadline is not None and done and time.monotonic() >= deadline:
                break  # at least one batch, however slow the start
            lk = lake or Lake.open(location)
            try:
                batch = make_batch(writer, b, size)
                write_models(lk, batch, f"stress writer {writer} batch {b}")
                write_labels(lk, [Label(r.model_id, "stress_value", float(b), "stress", 1) for r, _ in batch],
                             f"stress labels {writer} batch {b}")
            finally:
                if lake is None:
                    lk.close()
            done += 1
    finally:
        if lake is not None:
            lake.close()
    return done


@dataclass(frozen=True)
class Audit:
    expected: int  # models that must exist
    landed: int  # distinct expected models found
    lost: int  # expected models missing (must be 0)
    duplicates: int  # extra rows over distinct keys in models, tensors, labels (must be 0)
    unexpected: int  # models nobody wrote
    tensors_ok: bool  # every model has all its tensors
    labels_ok: bool  # every model has its label


def audit(location: str, writers: int, n_batches: int, size: int) -> Audit:
    return audit_counts(location, [n_batches] * writers, size)


def audit_counts(location: str, batches: list[int], size: int) -> Audit:
    """The audit when writer ``w`` reported ``batches[w]`` batches written."""
    want = {model_id(w, b, i) for w, n in enumerate(batches) for b in range(n) for i in range(size)}
    with Lake.open(location, read_only=True) as lk:
        got = [r[0] for r in lk.fetch("SELECT model_id FROM models")]
        dup = sum(lk.fetch(q)[0][0] or 0 for q in (
            "SELECT count(*) - count(DISTINCT model_id) FROM models",
            "SELECT count(*) - count(DISTINCT (model_id, name)) FROM tensors",
            "SELECT count(*) - count(DISTINCT (model_id, property)) FROM labels"))
        per_model = lk.fetch("SELECT count(*) FROM (SELECT model_id, count(*) AS n FROM tensors GROUP BY ALL) "
                             f"WHERE n <> {TENSORS_PER_MODEL}")[0][0]
        n_tensor_models = lk.fetch("SELECT count(DISTINCT model_id) FROM tensors")[0][0]
        n_labelled = lk.fetch("SELECT count(DISTINCT model_id) FROM labels WHERE property = 'stress_value'")[0][0]
    found = set(got)
    return Audit(len(want), len(want & found), len(want - found), dup, len(found - want),
                 per_model == 0 and n_tensor_models == len(found), n_labelled == len(found))


def consistency_sql(size: int) -> str:
    """ONE statement (so one snapshot) measuring what a consistent snapshot must satisfy; runs through
    `zoo sql` unchanged. Columns: snap, n_models, n_distinct, n_tensors, partial, orphans."""
    return ("SELECT (SELECT id FROM lake.current_snapshot()) AS snap, (SELECT count(*) FROM models) AS n_models, "
            "(SELECT count(DISTINCT model_id) FROM models) AS n_distinct, (SELECT count(*) FROM tensors) AS n_tensors, "
            "(SELECT count(*) FROM (SELECT run_id, step, count(*) AS n FROM models GROUP BY ALL) "
            f"WHERE n <> {int(size)}) AS partial, "
            "(SELECT count(*) FROM labels WHERE model_id NOT IN (SELECT model_id FROM models)) AS orphans")


def assert_consistent_counts(row: dict) -> int:
    """AssertionError unless a ``consistency_sql`` row shows whole batches only, every model with all its
    tensors, labels only for stored models. Returns the number of models."""
    n_models = row["n_models"]
    assert n_models == row["n_distinct"], f"duplicate models ({n_models} rows, {row['n_distinct']} distinct)"
    assert row["n_tensors"] == n_models * TENSORS_PER_MODEL, f"{row['n_tensors']} tensors for {n_models} models"
    assert row["partial"] == 0, f"{row['partial']} half-written batches"
    assert row["orphans"] == 0, f"{row['orphans']} labels without a model"
    return n_models


def consistent_snapshot(lake: Lake, size: int) -> dict:
    """The ``consistency_sql`` row of the snapshot ``lake`` shows (retried on a busy catalog), checked."""
    cols, rows = lake.fetch_with_columns(consistency_sql(size))
    row = dict(zip(cols, rows[0]))
    assert_consistent_counts(row)
    return row


def check_consistent(lake: Lake, size: int) -> int:
    """Raise AssertionError unless the snapshot ``lake`` shows is consistent; returns the models seen."""
    return consistent_snapshot(lake, size)["n_models"]


def run_reader(location: str, seconds: float, size: int) -> tuple[int, int]:
    """Open the latest snapshot repeatedly for ``seconds``; each must be consistent and never go back.
    Returns (reads, snapshots seen)."""
    deadline, last, reads, seen = time.monotonic() + seconds, -1, 0, set()
    while time.monotonic() < deadline:
        with Lake.open(location, read_only=True) as lk:
            snap = lk.current_snapshot()
            assert snap >= last, f"snapshot went back from {last} to {snap}"
            check_consistent(lk, size)
            last = snap
            seen.add(snap)
        reads += 1
        time.sleep(0.05)
    return reads, len(seen)


def main(argv: list[str]) -> None:
    if argv[0] == "writer":
        done = run_writer(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), float(argv[5]) if len(argv) > 5 else None)
        print(f"batches={done}", flush=True)
    elif argv[0] == "reader":
        reads, seen = run_reader(argv[1], float(argv[2]), int(argv[3]))
        print(f"reads={reads} snapshots={seen}")
    else:
        raise SystemExit(f"unknown role {argv[0]!r} (writer | reader)")


if __name__ == "__main__":
    main(sys.argv[1:])
