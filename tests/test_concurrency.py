"""Real concurrent writer processes on each catalog (issue 2 §2, issue 8 §2): every row lands, no
duplicates, and a reader running meanwhile only ever sees whole batches."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from storage.lake import Lake
from bench.loadgen.stress import audit, check_consistent

ROOT = pathlib.Path(__file__).resolve().parent.parent


def start_writers(location: str, writers: int, batches: int, size: int, env: dict | None = None) -> list:
    return [subprocess.Popen([sys.executable, "-m", "bench.loadgen.stress", "writer", location, str(w), str(batches),
                              str(size)],
                             cwd=ROOT, env={**os.environ, "ZOO_LOCK_TIMEOUT": "120", **(env or {})},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for w in range(writers)]


def assert_all_land(location: str, writers: int, batches: int, size: int, env: dict | None = None) -> None:
    Lake.open(location, create=True).close()  # create the lake before the writers race for it
    procs = start_writers(location, writers, batches, size, env)
    reads, seen = 0, set()
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        with Lake.open(location, read_only=True) as lk:  # a reader meanwhile: consistent snapshots only
            seen.add(lk.current_snapshot())
            check_consistent(lk, size)
        reads += 1
        time.sleep(0.1)
    for p in procs:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err[-2000:]
    result = audit(location, writers, batches, size)
    assert (result.lost, result.duplicates, result.unexpected) == (0, 0, 0), result
    assert result.landed == writers * batches * size and result.tensors_ok and result.labels_ok, result
    with Lake.open(location, read_only=True) as lk:
        snaps = lk.snapshots()
        assert sum((s["message"] or "").startswith("stress writer") for s in snaps) == writers * batches
        for sid in sorted(seen)[:: max(1, len(seen) // 5)]:  # every snapshot a reader saw is readable again
            with Lake.open(location, at=sid) as old:
                check_consistent(old, size)
    assert reads > 0


@pytest.mark.slow
def test_duckdb_file_writers_take_turns(tmp_path):
    assert_all_land(str(tmp_path / "lake"), writers=3, batches=2, size=5)


@pytest.mark.slow
def test_sqlite_writers_concurrently(tmp_path):
    assert_all_land("sqlite:" + str(tmp_path / "lake"), writers=4, batches=2, size=5)


def test_duckdb_file_lock_wait_times_out_with_clear_error(lake_dir):
    from core.errors import LakeError

    Lake.open(lake_dir, create=True).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from storage.lake import Lake\n"
        f"lk = Lake.open({str(lake_dir)!r}); print('open', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LakeError, match="still locked by another process"):
            Lake.open(lake_dir, lock_timeout=1)
    finally:
        holder.kill()
        holder.wait()
    with Lake.open(lake_dir, lock_timeout=30) as lk:  # free again once the holder is gone
        assert lk.current_snapshot() >= 1


# --- PostgreSQL: a real server the test starts itself -----------------------------------------------
@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server (storage.pgserver: initdb + pg_ctl on a private socket, as the
    ``postgres`` user when run as root); yields ``new_database()`` -> DSN."""
    from storage.pgserver import find_pg_bin, local_postgres

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binaries (initdb) in PATH or /usr/lib/postgresql/*/bin")
    with local_postgres() as new_database:
        yield new_database


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """A fresh database (catalog) on the module's server."""
    return postgres_server()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_catalog_round_trip_and_time_travel(postgres_dsn, tmp_path, monkeypatch, make_models):
    from storage.writes import read_weights, write_models

    monkeypatch.setenv("ZOO_DATA_PATH", str(tmp_path / "pgdata"))
    loc = "postgres:" + postgres_dsn
    batch = make_models(3)
    with Lake.open(loc, create=True) as lk:
        write_models(lk, batch, "pg batch")
        sid = lk.tag("pg-v1")
        write_models(lk, make_models(2, seed=4), "pg more")
    with Lake.open(loc, at="pg-v1") as old:
        assert old.snapshot == sid and old.fetch("SELECT count(*) FROM models")[0][0] == 3
        got = read_weights(old, [r.model_id for r, _ in batch])
        for rec, state in batch:
            for k, v in state.items():
                assert got[rec.model_id][k].view(-1).view(__import__("torch").uint8).tolist() == \
                       v.view(-1).view(__import__("torch").uint8).tolist()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_writers_concurrently(postgres_dsn, tmp_path, monkeypatch):
    data = str(tmp_path / "pgdata-conc")
    monkeypatch.setenv("ZOO_DATA_PATH", data)
    assert_all_land("postgres:" + postgres_dsn, writers=4, batches=2, size=5, env={"ZOO_DATA_PATH": data})
