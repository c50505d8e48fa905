"""Idempotent writes and typed reads of the zoo tables.

- ``write_models``: a batch of models with all their tensors lands in one transaction (one snapshot)
  or not at all; models already stored (same ``model_id``) are skipped, so re-writing is a no-op.
- ``write_labels`` / ``write_predictions`` / ``write_run``: MERGE on the table's key. ``write_labels``
  also takes the labelers' per-example ``Outcome``s, stored in the same snapshot as the labels.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.errors import BadWeights, LakeError
from core.hashing import code_version
from core.spec import WeightSpec
from storage.lake import Lake
from storage.schema import LABELS, MODELS, OUTCOMES, PREDICTIONS, RUNS, TENSORS, Table
from storage.tensors import DTYPE_SIZES, DTYPES, all_finite, dtype_name, fill, pack


CHUNK_BYTES = 4 * 2**20  # tensor bytes per INSERT (= per Parquet file): bounds the memory a write needs
READ_CHUNK_BYTES = 8 * 2**20  # tensor bytes per read query


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    family: str
    arch: str
    arch_config: dict
    dataset: str
    spec: WeightSpec
    train_config: dict = field(default_factory=dict)
    seed: int = 0
    run_id: str = ""
    epoch: int = 0
    step: int = 0
    source: str = "trained"  # trained | hf | timm | file

    @property
    def n_params(self) -> int:
        return self.spec.n_params


@dataclass(frozen=True)
class Label:
    model_id: str
    property: str
    value: float
    labeler: str
    labeler_version: int
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Outcome:
    """A labeler's per-example outcome for one model, e.g. ``test_correct``: (N,) bool, example n right."""
    model_id: str
    outcome: str
    values: np.ndarray  # (N,) bool
    labeler: str
    labeler_version: int
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    model_id: str
    property: str
    value: float
    lower: float | None
    upper: float | None
    run_id: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _arrow(table: Table, rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in table.columns]
    return pa.table({name: list(col) for (name, _), col in zip(table.columns, cols)})


def _insert(lake: Lake, table: Table, data: pa.Table) -> None:
    # A relation, not con.register(): a registered (then dropped) view keeps its Arrow data alive until
    # the transaction commits, so a many-chunk write would hold every chunk in memory at once.
    casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in table.columns)
    lake.con.from_arrow(data).select(casts).insert_into(f"lake.main.{table.name}")


def _merge(lake: Lake, table: Table, data: pa.Table, keep: tuple[str, ...] = ()) -> None:
    """Upsert on the table's key: one row per key afterwards. A NULL incoming value of a ``keep`` column
    leaves the stored value as it was (e.g. a run's started_at on its final update)."""
    lake.con.register("_incoming", data)
    try:
        casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in table.columns)
        on = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
        sets = ", ".join(f"{c} = " + (f"COALESCE(s.{c}, t.{c})" if c in keep else f"s.{c}")
                         for c in table.column_names if c not in table.keys)
        cols = ", ".join(table.column_names)
        vals = ", ".join(f"s.{c}" for c in table.column_names)
        lake.con.execute(
            f"MERGE INTO lake.main.{table.name} AS t USING (SELECT DISTINCT ON ({', '.join(table.keys)}) {casts} "
            f"FROM _incoming) AS s ON {on} WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})")
    finally:
        lake.con.unregister("_incoming")


# --- models ------------------------------------------------------------------------------------
def write_models(lake: Lake, batch: Sequence[tuple[ModelRecord, Mapping[str, torch.Tensor]]], message: str,
                 extra: dict | None = None, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Store models and their tensors in one snapshot; returns the ids that were new.

    Every state dict is validated against its spec first (shape, NaN/Inf, unknown tensors, dtype), so a
    bad model aborts the batch before anything is written; any later failure rolls the whole batch back.
    ``progress(done, total)`` is called as models are encoded.
    """
    seen: set[str] = set()
    unique = []
    for rec, state in batch:
        try:
            rec.spec.validate(state, check_finite=False)
        except BadWeights as e:
            raise BadWeights(f"model {rec.model_id}: {e}") from None
        for name, t in state.items():
            if t.dtype not in DTYPES.values():
                raise BadWeights(f"model {rec.model_id}: tensor {name!r} has unsupported dtype {t.dtype}")
            if not all_finite(t):
                raise BadWeights(f"model {rec.model_id}: tensor {name!r} holds NaN or Inf values")
        if rec.model_id not in seen:
            seen.add(rec.model_id)
            unique.append((rec, state))
    if not unique:
        return []
    now, version = _now(), code_version()

    def body() -> list[str]:
        ids = [r.model_id for r, _ in unique]
        existing = {r[0] for r in lake.con.execute(
            "SELECT model_id FROM lake.main.models WHERE model_id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()}
        new = [(r, s) for r, s in unique if r.model_id not in existing]
        if not new:
            return []
        model_rows = [(rec.model_id, rec.family, rec.arch, json.dumps(rec.arch_config, sort_keys=True),
                       rec.dataset, json.dumps(rec.train_config, sort_keys=True), rec.seed, rec.run_id,
                       rec.epoch, rec.step, rec.source, rec.n_params, rec.spec.to_json(), now, version)
                      for rec, _ in new]
        _insert(lake, MODELS, _arrow(MODELS, model_rows))
        chunk: list[tuple[str, int, str, str, torch.Tensor]] = []
        size = 0
        for i, (rec, state) in enumerate(new):
            if progress is not None:
                progress(i, len(new))
            kinds = {p.name: p.kind for p in rec.spec.params}
            for ordinal, (name, t) in enumerate(state.items()):
                chunk.append((rec.model_id, ordinal, name, kinds[name], t))
                size += t.numel() * t.element_size()
                if size >= CHUNK_BYTES:
                    _insert_tensors(lake, chunk)
                    chunk, size = [], 0
        if chunk:
            _insert_tensors(lake, chunk)
        if progress is not None:
            progress(len(new), len(new))
        return [r.model_id for r, _ in new]

    return lake.commit(body, message, extra)


def _insert_tensors(lake: Lake, rows: list[tuple[str, int, str, str, torch.Tensor]]) -> None:
    """One INSERT (one Parquet file) of tensor rows; their bytes go through a single Arrow buffer."""
    tens = pa.table({
        "model_id": [r[0] for r in rows], "ordinal": pa.array([r[1] for r in rows], pa.int32()),
        "name": [r[2] for r in rows], "kind": [r[3] for r in rows],
        "shape": pa.array([list(r[4].shape) for r in rows], pa.list_(pa.int64())),
        "dtype": [dtype_name(r[4].dtype) for r in rows], "data": pack([r[4] for r in rows])})
    _insert(lake, TENSORS, tens)


def _nbytes(dtype: str, shape: Sequence[int]) -> int:
    n = DTYPE_SIZES.get(dtype, 8)
    for d in shape:
        n *= int(d)
    return n


def _read_groups(by_model: Mapping[str, list[tuple]]) -> Iterator[list[tuple]]:
    """Tensor metadata rows grouped so each group's bytes stay near READ_CHUNK_BYTES."""
    group, size = [], 0
    for rows in by_model.values():
        for row in sorted(rows, key=lambda r: r[1]):
            n = _nbytes(row[3], row[4])
            if group and size + n > READ_CHUNK_BYTES:
                yield group
                group, size = [], 0
            group.append(row)
            size += n
    if group:
        yield group


def _read_group(lake: Lake, group: list[tuple], dests: Mapping[tuple[str, int], torch.Tensor]) -> None:
    """Stream one group's bytes (record batches of a few rows) straight into their destination tensors."""
    keys = {(r[0], r[1]): r for r in group}
    mids = sorted({r[0] for r in group})
    lo, hi = min(r[1] for r in group), max(r[1] for r in group)

    def once() -> int:
        filled = 0
        reader = lake.con.execute(
            "SELECT model_id, ordinal, data FROM lake.main.tensors WHERE model_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND ordinal BETWEEN ? AND ?", [mids, lo, hi]).to_arrow_reader(16)
        for batch in reader:
            found = zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())
            wanted = [(i, k) for i, k in enumerate(found) if k in keys]
            if not wanted:
                continue
            column = batch.column(2)
            for i, k in wanted:  # slices share the batch's buffers: no copy before the destination
                fill([dests[k]], column.slice(i, 1), [f"{k[0]}/{keys[k][2]}"])
            filled += len(wanted)
        return filled

    try:
        filled = lake.retry(once, f"read tensors of {mids[0]!r}")
    except duckdb.Error as e:
        raise LakeError(f"SQL error: {str(e).splitlines()[0]}") from None
    if filled != len(keys):
        raise LakeError(f"tensors of {mids[0]!r} changed while being read; read again")


def _record(row: Mapping) -> ModelRecord:
    return ModelRecord(
        model_id=row["model_id"], family=row["family"], arch=row["arch"], arch_config=json.loads(row["arch_config"]),
        dataset=row["dataset"], spec=WeightSpec.from_json(row["spec"]), train_config=json.loads(row["train_config"]),
        seed=int(row["seed"]), run_id=row["run_id"], epoch=int(row["epoch"]), step=int(row["step"]),
        source=row["source"])


def read_models(lake: Lake, where: str | None = None, params: list | None = None) -> list[ModelRecord]:
    """Model records (with specs), optionally filtered by a SQL predicate over ``models``."""
    q = "SELECT * FROM lake.main.models" + (f" WHERE {where}" if where else "") + " ORDER BY model_id"
    cols, rows = lake.fetch_with_columns(q, params)
    return [_record(dict(zip(cols, r))) for r in rows]


def read_weights(lake: Lake, model_ids: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts by model id, in stored tensor order. Unknown ids raise ``LakeError``."""
    ids = list(dict.fromkeys(model_ids))
    if not ids:
        return {}
    # Metadata first (narrow, fast), then the bytes in groups of about READ_CHUNK_BYTES: DuckDB never
    # holds more than one group, so reading a big model needs little beyond the tensors themselves.
    meta = lake.fetch("SELECT model_id, ordinal, name, dtype, shape FROM lake.main.tensors "
                      "WHERE model_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    by_model: dict[str, list[tuple]] = {i: [] for i in ids}
    for row in meta:
        by_model[row[0]].append(row)
    # Every destination tensor is allocated before any bytes arrive, so the transient read buffers reuse
    # one region instead of interleaving with (and fragmenting around) the tensors being filled.
    dests: dict[tuple[str, int], torch.Tensor] = {}
    for mid, o, name, dtype, shape in meta:
        if dtype not in DTYPES:
            raise BadWeights(f"{mid}/{name}: unknown dtype {dtype!r}")
        dests[(mid, o)] = torch.empty(tuple(int(d) for d in shape), dtype=DTYPES[dtype])
    for group in _read_groups(by_model):
        _read_group(lake, group, dests)
    out = {i: {r[2]: dests[(i, r[1])] for r in sorted(by_model[i], key=lambda r: r[1])} for i in ids}
    missing = [i for i in ids if not out[i]]
    if missing:
        raise LakeError(f"unknown model {missing[0]!r}")
    return out


# --- labels, predictions, runs -----------------------------------------------------------------
def write_labels(lake: Lake, labels: Sequence[Label], message: str, extra: dict | None = None,
                 outcomes: Sequence[Outcome] = ()) -> int:
    """Upsert labels on (model_id, property) and ``outcomes`` on (model_id, outcome), all in one
    snapshot; returns how many label rows were written."""
    for lab in labels:
        if lab.value is None or lab.value != lab.value:
            raise BadWeights(f"label {lab.property} of {lab.model_id} is NaN: refusing to store it")
    for o in outcomes:
        if o.values.ndim != 1 or o.values.dtype != np.bool_:
            raise LakeError(f"outcome {o.outcome} of {o.model_id} must be a 1-D bool vector, got "
                            f"{o.values.dtype} of shape {tuple(o.values.shape)}")
    if not labels and not outcomes:
        return 0
    now = _now()
    rows = [(l.model_id, l.property, float(l.value), l.labeler, int(l.labeler_version),
             json.dumps(l.params, sort_keys=True), now) for l in labels]
    packed = [(o.model_id, o.outcome, len(o.values), np.packbits(o.values).tobytes(), o.labeler,
               int(o.labeler_version), json.dumps(o.params, sort_keys=True), now) for o in outcomes]

    def body() -> None:
        if rows:
            _merge(lake, LABELS, _arrow(LABELS, rows))
        if packed:
            _merge(lake, OUTCOMES, _arrow(OUTCOMES, packed))

    lake.commit(body, message, extra)
    return len(rows)


def read_outcomes(lake: Lake, model_ids: Iterable[str], outcome: str) -> dict[str, np.ndarray]:
    """model id -> its stored ``outcome`` as an (N,) bool vector, for the ids that have one."""
    ids = list(dict.fromkeys(model_ids))
    if not ids:
        return {}
    rows = lake.fetch("SELECT model_id, n, bits FROM lake.main.outcomes WHERE outcome = ? "
                      "AND model_id IN (SELECT unnest(?::VARCHAR[]))", [outcome, ids])
    return {m: np.unpackbits(np.frombuffer(bytes(b), dtype=np.uint8), count=int(n)).astype(bool)
            for m, n, b in rows}


def write_predictions(lake: Lake, preds: Sequence[Prediction], message: str, extra: dict | None = None) -> int:
    if not preds:
        return 0
    now = _now()
    rows = [(p.model_id, p.property, float(p.value), None if p.lower is None else float(p.lower),
             None if p.upper is None else float(p.upper), p.run_id, now) for p in preds]
    lake.commit(lambda: _merge(lake, PREDICTIONS, _arrow(PREDICTIONS, rows)), message, extra)
    return len(rows)


def write_run(lake: Lake, run_id: str, kind: str, config: dict, status: str, metrics: dict | None = None,
              snapshot_id: int | None = None, started_at: dt.datetime | None = None,
              finished_at: dt.datetime | None = None) -> None:
    """Upsert one row of ``runs`` (call at start with status=running, again when done).

    An update that passes no ``started_at`` keeps the stored one (a new run gets now)."""
    row = (run_id, kind, json.dumps(config, sort_keys=True, default=str), status,
           json.dumps(metrics or {}, sort_keys=True, default=str), snapshot_id, started_at, finished_at,
           code_version())
    now = _now()

    def body() -> None:
        _merge(lake, RUNS, _arrow(RUNS, [row]), keep=("started_at",))
        lake.con.execute("UPDATE lake.main.runs SET started_at = ? WHERE run_id = ? AND started_at IS NULL",
                         [now, run_id])

    lake.commit(body, f"{kind} run {run_id}: {status}", {"run_id": run_id, "status": status})
