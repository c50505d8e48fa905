"""The store (issue 2 §2): schema, atomic batches, idempotence, time travel, bit-exact weights, upserts."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import torch

import storage.writes as writes
from core.errors import BadWeights, LakeError
from storage.files import state_from_safetensors, state_to_safetensors
from storage.lake import Lake
from storage.schema import TABLES
from storage.writes import Label, Prediction, read_models, read_weights, write_labels, write_models, write_predictions, write_run

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def count(lake: Lake, table: str) -> int:
    return lake.fetch(f"SELECT count(*) FROM lake.main.{table}")[0][0]


def test_schema_created_with_every_column(lake):
    for name, table in TABLES.items():
        cols = [r[0] for r in lake.fetch(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = 'lake' AND table_name = ? "
            "ORDER BY column_index", [name])]
        assert cols == table.column_names, name


def test_init_is_idempotent(lake_dir):
    with Lake.open(lake_dir, create=True) as lk:
        first = len(lk.snapshots())
    with Lake.open(lake_dir, create=True) as lk:
        assert len(lk.snapshots()) == first


def test_batch_lands_in_one_snapshot_with_its_message(lake, make_models):
    before = lake.current_snapshot()
    new = write_models(lake, make_models(5), "unit test batch", {"who": "test"})
    assert len(new) == 5
    assert lake.current_snapshot() == before + 1
    snap = lake.snapshots()[-1]
    assert snap["message"] == "unit test batch" and json.loads(snap["extra"]) == {"who": "test"}
    assert count(lake, "models") == 5 and count(lake, "tensors") == 20


@pytest.mark.parametrize("fail_on", ["tensors", "models"])
def test_failure_mid_batch_lands_nothing(lake, make_models, monkeypatch, fail_on):
    write_models(lake, make_models(2, seed=1), "earlier")
    before = (lake.snapshots(), count(lake, "models"), count(lake, "tensors"))
    real = writes._insert

    def failing(lk, table, data):
        if table.name == fail_on:
            raise RuntimeError(f"disk full while writing {table.name}")
        real(lk, table, data)

    monkeypatch.setattr(writes, "_insert", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_models(lake, make_models(4, seed=2), "doomed")
    monkeypatch.undo()
    assert (lake.snapshots(), count(lake, "models"), count(lake, "tensors")) == before
    assert write_models(lake, make_models(4, seed=2), "retry") != []  # the lake still takes writes


def test_bad_tensor_after_good_ones_lands_nothing(lake, make_models):
    batch = make_models(4)
    rec, state = batch[3]
    state = dict(state, **{"1.bias": torch.tensor([1.0, float("nan")])})
    before = lake.snapshots()
    with pytest.raises(BadWeights, match=rf"{rec.model_id}.*1\.bias.*NaN"):
        write_models(lake, batch[:3] + [(rec, state)], "bad")
    assert lake.snapshots() == before and count(lake, "models") == 0 and count(lake, "tensors") == 0


def test_unsupported_dtype_refused_before_writing(lake, make_models):
    rec, state = make_models(1)[0]
    state = dict(state, **{"1.bias": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(BadWeights, match="1.bias.*complex64"):
        write_models(lake, [(rec, state)], "complex")
    assert count(lake, "models") == 0


def test_rewriting_is_idempotent(lake, make_models):
    batch = make_models(3)
    assert len(write_models(lake, batch, "first")) == 3
    snaps = len(lake.snapshots())
    assert write_models(lake, batch, "again") == []
    assert write_models(lake, batch + batch, "twice in one batch") == []
    assert len(lake.snapshots()) == snaps  # nothing new: no empty snapshot either
    more = make_models(5)  # 3 old + 2 new
    assert sorted(write_models(lake, more, "mixed")) == sorted(r.model_id for r, _ in more[3:])
    assert count(lake, "models") == 5 and count(lake, "tensors") == 20
    dup = lake.fetch("SELECT model_id, name, count(*) FROM lake.main.tensors GROUP BY ALL HAVING count(*) > 1")
    assert dup == []


def test_time_travel_at_snapshot_and_tag(lake_dir, make_models):
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, make_models(2, seed=1), "first")
        s1 = lk.current_snapshot()
        lk.tag("v1")
        write_models(lk, make_models(3, seed=2), "second")
        write_labels(lk, [Label("m1-00000", "test_accuracy", 0.5, "acc", 1)], "labels")
    for at in (s1, str(s1), "v1"):
        with Lake.open(lake_dir, at=at) as old:
            assert old.read_only and old.snapshot == s1
            assert sorted(r.model_id for r in read_models(old)) == ["m1-00000", "m1-00001"]
            assert old.fetch("SELECT count(*) FROM labels")[0][0] == 0
            with pytest.raises(LakeError, match="read-only"):
                write_labels(old, [Label("m1-00000", "x", 1.0, "acc", 1)], "into the past")
    with Lake.open(lake_dir, read_only=True) as now:
        assert len(read_models(now)) == 5
        assert [s["tags"] for s in now.snapshots() if s["snapshot_id"] == s1] == [["v1"]]


def test_viewing_a_past_snapshot_then_writing_through_the_same_handle(lake_dir, make_models):
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, make_models(2, seed=1), "first")
        s1 = lk.current_snapshot()
        write_models(lk, make_models(3, seed=2), "second")
        with lk.viewing(s1) as old:
            assert old is lk and lk.snapshot == s1 and lk.read_only
            assert len(read_models(old)) == 2
            with pytest.raises(LakeError, match="read-only"):
                write_labels(old, [Label("m1-00000", "x", 1.0, "acc", 1)], "into the past")
        assert (lk.snapshot, lk.read_only) == (None, False)  # restored: latest, writable
        assert len(read_models(lk)) == 5
        with lk.viewing(lk.current_snapshot()) as same:  # already showing it: no re-attach
            assert same.snapshot is None
        write_labels(lk, [Label("m1-00000", "test_accuracy", 0.5, "acc", 1)], "labels")
        assert count(lk, "labels") == 1


def test_retag_moves_the_name(lake, make_models):
    write_models(lake, make_models(1, seed=1), "a")
    first = lake.tag("latest")
    write_models(lake, make_models(1, seed=2), "b")
    second = lake.tag("latest")
    assert second > first and lake.resolve("latest") == second
    assert lake.fetch("SELECT count(*) FROM lake.main.tags WHERE name = 'latest'")[0][0] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_dict_round_trips_bit_exactly(lake, make_models, dtype):
    batch = make_models(3, dtype=dtype)
    # values whose bits a lossy path would change: subnormals, -0.0, the largest finite value
    rec, state = batch[0]
    special = torch.tensor([-0.0, torch.finfo(dtype).tiny / 2, torch.finfo(dtype).max], dtype=dtype)
    batch[0] = (rec, dict(state, **{"0.bias": special}))
    write_models(lake, batch, "dtypes")
    got = read_weights(lake, [r.model_id for r, _ in batch])
    for rec, state in batch:
        assert_bit_exact(got[rec.model_id], state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_safetensors_file_round_trips_bit_exactly(lake, make_models, tmp_path, dtype):
    rec, state = make_models(1, dtype=dtype)[0]
    path = tmp_path / "model.safetensors"
    state_to_safetensors(state, path)
    loaded = state_from_safetensors(path)
    assert_bit_exact({k: loaded[k] for k in state}, state)
    write_models(lake, [(rec, loaded)], "from file")
    back = read_weights(lake, [rec.model_id])[rec.model_id]
    out = tmp_path / "again.safetensors"
    state_to_safetensors(back, out)
    assert out.read_bytes() == path.read_bytes()


def test_read_weights_unknown_model(lake, make_models):
    write_models(lake, make_models(1), "one")
    with pytest.raises(LakeError, match="nope"):
        read_weights(lake, ["m0-00000", "nope"])


def test_model_record_round_trips(lake, make_models):
    batch = make_models(2)
    write_models(lake, batch, "records")
    got = {r.model_id: r for r in read_models(lake)}
    for rec, _ in batch:
        assert got[rec.model_id] == rec
    assert [r.model_id for r in read_models(lake, "model_id = ?", ["m0-00001"])] == ["m0-00001"]


def test_labels_upsert(lake, make_models):
    write_models(lake, make_models(2), "models")
    write_labels(lake, [Label("m0-00000", "test_accuracy", 0.5, "acc", 1),
                        Label("m0-00001", "test_accuracy", 0.6, "acc", 1)], "v1")
    write_labels(lake, [Label("m0-00000", "test_accuracy", 0.7, "acc", 2, {"n": 3})], "v2")
    rows = lake.fetch("SELECT model_id, value, labeler_version, params FROM labels ORDER BY model_id")
    assert rows == [("m0-00000", 0.7, 2, '{"n": 3}'), ("m0-00001", 0.6, 1, "{}")]
    with pytest.raises(BadWeights, match="test_loss.*m0-00000.*NaN"):
        write_labels(lake, [Label("m0-00000", "test_loss", float("nan"), "loss", 1)], "nan")


def test_predictions_upsert_per_run(lake):
    write_predictions(lake, [Prediction("a", "acc", 0.1, 0.0, 0.2, "r1"), Prediction("a", "acc", 0.3, None, None, "r2")], "p")
    write_predictions(lake, [Prediction("a", "acc", 0.5, 0.4, 0.6, "r1")], "p again")
    assert lake.fetch("SELECT run_id, value, lower FROM predictions ORDER BY run_id") == [("r1", 0.5, 0.4), ("r2", 0.3, None)]


def test_runs_upsert_keeps_started_at(lake):
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    write_run(lake, "run1", "build", {"n": 1}, "running", started_at=t0)
    write_run(lake, "run1", "build", {"n": 1}, "completed", {"models": 3}, finished_at=t0 + dt.timedelta(hours=1))
    write_run(lake, "run2", "label", {}, "running")
    rows = lake.fetch("SELECT run_id, status, metrics, started_at, finished_at FROM runs ORDER BY run_id")
    assert [r[:3] for r in rows] == [("run1", "completed", '{"models": 3}'), ("run2", "running", "{}")]
    assert rows[0][3] == t0 and rows[0][4] == t0 + dt.timedelta(hours=1)
    assert rows[1][3] is not None  # a new run without started_at gets now


def test_progress_callback_reaches_total(lake, make_models):
    calls = []
    write_models(lake, make_models(4), "progress", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_pin_names_the_snapshot_a_stage_reads(lake) -> None:
    first = lake.current_snapshot()
    lake.tag("t")
    lake.tag("later")
    assert lake.pin(None) == lake.current_snapshot() > first
    assert lake.pin("t") == lake.resolve("t") and lake.pin(str(first)) == first
    with lake.viewing(first) as old:
        assert old.pin(None) == first  # a handle showing a past snapshot pins that one, not the latest


def test_outcomes_land_with_their_labels_bit_exact_and_upsert(lake, make_models):
    import numpy as np

    from storage.writes import Outcome, read_outcomes

    write_models(lake, make_models(2, seed=1), "models")
    rng = np.random.default_rng(0)
    a, b = rng.random(20_001) < 0.3, rng.random(7) < 0.5  # lengths that are not whole bytes
    before = lake.current_snapshot()
    write_labels(lake, [Label("m1-00000", "test_accuracy", float(a.mean()), "performance", 1)], "with outcomes",
                 outcomes=[Outcome("m1-00000", "test_correct", a, "performance", 1),
                           Outcome("m1-00001", "test_correct", b, "performance", 1)])
    assert lake.current_snapshot() == before + 1  # labels and outcomes in one snapshot
    got = read_outcomes(lake, ["m1-00000", "m1-00001", "nope"], "test_correct")
    assert sorted(got) == ["m1-00000", "m1-00001"]
    assert got["m1-00000"].dtype == bool and np.array_equal(got["m1-00000"], a) and np.array_equal(got["m1-00001"], b)
    assert read_outcomes(lake, ["m1-00000"], "train_correct") == {}
    write_labels(lake, [], "again", outcomes=[Outcome("m1-00000", "test_correct", ~a, "performance", 2)])
    assert count(lake, "outcomes") == 2  # MERGE on (model_id, outcome): replaced, not duplicated
    assert np.array_equal(read_outcomes(lake, ["m1-00000"], "test_correct")["m1-00000"], ~a)
    # not a bool vector: refused before anything is written, the stored rows stay
    snap = lake.current_snapshot()
    with pytest.raises(LakeError, match="m1-00001"):
        write_labels(lake, [Label("m1-00001", "test_accuracy", 0.5, "performance", 1)], "bad",
                     outcomes=[Outcome("m1-00001", "test_correct", np.ones(5), "performance", 1)])
    assert lake.current_snapshot() == snap and count(lake, "labels") == 1
