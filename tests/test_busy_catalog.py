"""Reads and writes wait out a busy catalog (issue 19 §1): every read path retries transient lock /
conflict errors within a bounded budget, then fails with one CatalogBusy error naming the catalog.

The lock errors are injected by a connection proxy that fails its next N statements the way a busy
SQLite catalog does; the real thing (writer processes beside readers) is bench/faults.py's load
scenarios, run by tests/test_faults_bench.py."""
from __future__ import annotations

import time

import duckdb
import pytest
import torch

from core.errors import LakeError
from storage.lake import CatalogBusy, Lake
from storage.writes import read_models, read_weights, write_models
from storage.samples import load_samples


class FlakyCon:
    """A DuckDB connection whose next ``fail`` execute/sql calls (whose SQL contains ``match``) raise a
    'database is locked' error."""

    def __init__(self, con: duckdb.DuckDBPyConnection, fail: int, error: Exception | None = None, match: str = ""):
        self._con, self.fail, self.calls, self.match = con, fail, 0, match
        self.error = error or duckdb.IOException("Failed to query most recent snapshot for DuckLake: database is locked")

    def _maybe_fail(self, query: object) -> None:
        self.calls += 1
        if self.fail > 0 and self.match in str(query):
            self.fail -= 1
            raise self.error

    def execute(self, query, *a, **kw):
        self._maybe_fail(query)
        return self._con.execute(query, *a, **kw)

    def sql(self, query, *a, **kw):
        self._maybe_fail(query)
        return self._con.sql(query, *a, **kw)

    def __getattr__(self, name: str):
        return getattr(self._con, name)


@pytest.fixture
def stored(lake_dir, make_models):
    batch = make_models(3)
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, batch, "three models")
    return lake_dir, batch


READS = {
    "current_snapshot": lambda lk, ids: lk.current_snapshot() >= 1,
    "snapshots": lambda lk, ids: len(lk.snapshots()) >= 2,
    "fetch": lambda lk, ids: lk.fetch("SELECT count(*) FROM models")[0][0] == 3,
    "pinned": lambda lk, ids: _pinned_count(lk) == 3,
    "read": lambda lk, ids: lk.read(lambda snap: lk.fetch("SELECT count(*) FROM models")[0][0]) == 3,
    "resolve": lambda lk, ids: lk.resolve(1) == 1,
    "read_models": lambda lk, ids: [r.model_id for r in read_models(lk)] == sorted(ids),
    "read_weights": lambda lk, ids: set(read_weights(lk, ids)) == set(ids),
    "load_samples": lambda lk, ids: sorted(s.model_id for s in load_samples(lk)) == sorted(ids),
    "query_table": lambda lk, ids: lk.query_table("SELECT count(*) AS n FROM models").to_pylist() == [{"n": 3}],
}


def _pinned_count(lk: Lake) -> int:
    with lk.pinned():
        return lk.con._con.execute("SELECT count(*) FROM models").fetchone()[0]


@pytest.mark.parametrize("path", sorted(READS))
def test_every_read_path_waits_out_a_locked_catalog(stored, path):
    lake_dir, batch = stored
    ids = [r.model_id for r, _ in batch]
    with Lake.open(lake_dir, read_only=True) as lk:
        flaky = FlakyCon(lk.con, fail=3)
        lk.con = flaky
        assert READS[path](lk, ids)
        assert flaky.fail == 0 and flaky.calls > 3  # the three failures happened and were retried


def test_read_weights_after_retries_is_bit_exact(stored):
    lake_dir, batch = stored
    with Lake.open(lake_dir, read_only=True) as lk:
        lk.con = FlakyCon(lk.con, fail=2)
        got = read_weights(lk, [r.model_id for r, _ in batch])
    for rec, state in batch:
        for k, v in state.items():
            assert torch.equal(got[rec.model_id][k].view(torch.uint8), v.view(torch.uint8))


@pytest.mark.parametrize("path", ["current_snapshot", "read_weights", "read", "query_table"])
def test_exhausted_budget_raises_one_error_naming_the_catalog(stored, path):
    lake_dir, batch = stored
    with Lake.open(lake_dir, read_only=True, lock_timeout=0.5) as lk:
        flaky = FlakyCon(lk.con, fail=10**9)
        lk.con = flaky
        t0 = time.monotonic()
        with pytest.raises(CatalogBusy) as err:
            READS[path](lk, [r.model_id for r, _ in batch])
        assert time.monotonic() - t0 < 5  # bounded: the budget, not forever
    msg = str(err.value)
    assert str(lake_dir) in msg and "database is locked" in msg and "still locked or in conflict" in msg
    assert flaky.calls > 2  # it did retry before giving up


def test_bad_sql_is_not_retried_even_if_its_text_says_conflict(stored):
    lake_dir, _ = stored
    with Lake.open(lake_dir, read_only=True, lock_timeout=30) as lk:
        t0 = time.monotonic()
        with pytest.raises(LakeError, match="SQL error") as err:
            lk.fetch("SELECT conflict FROM models")  # a Binder error mentioning 'conflict'
        assert not isinstance(err.value, CatalogBusy) and time.monotonic() - t0 < 5


def test_commit_retries_the_whole_transaction_when_a_statement_inside_hits_a_lock(lake_dir):
    with Lake.open(lake_dir, create=True) as lk:
        flaky = FlakyCon(lk.con, fail=0)
        lk.con = flaky
        attempts = []

        def body() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                flaky.fail = 1  # the next statement, inside the transaction, meets a lock
            lk.fetch("SELECT count(*) FROM tags")
            lk.con.execute("INSERT INTO lake.main.tags VALUES ('t', 1, now())")

        lk.commit(body, "probe")
        assert len(attempts) == 2  # the whole body ran again, not just the failed statement
        assert lk.fetch("SELECT count(*) FROM tags")[0][0] == 1
        assert sum(s["message"] == "probe" for s in lk.snapshots()) == 1


def test_zoo_sql_waits_out_a_locked_catalog(stored, zoo_cli, monkeypatch):
    import json

    lake_dir, _ = stored
    real = Lake._open_once.__func__

    def flaky_open(cls, cfg, read_only, at):
        lk = real(cls, cfg, read_only, at)
        lk.con = FlakyCon(lk.con, fail=4, match="models")  # the user's query, not the SET statements
        return lk

    monkeypatch.setattr(Lake, "_open_once", classmethod(flaky_open))
    res = zoo_cli("sql", "SELECT count(*) AS n FROM models", "--format", "json", lake=lake_dir)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"n": 3}]


def test_a_new_sqlite_catalog_is_in_wal_mode(tmp_path):
    """Rollback-journal SQLite deadlocked readers and a committing writer under load; WAL does not."""
    import sqlite3

    Lake.open("sqlite:" + str(tmp_path / "lake"), create=True).close()
    con = sqlite3.connect(tmp_path / "lake" / "zoo.sqlite")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()
