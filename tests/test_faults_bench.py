"""bench/faults.py cannot hide a crash (issue 19 §2, §3): every reader and writer outcome is counted, a
reader forced to fail makes the bench exit non-zero, and the load scenarios pass on SQLite and
PostgreSQL (in --quick sizes: seconds, tiny batches)."""
from __future__ import annotations

import pytest

from bench import faults
from storage.pgserver import find_pg_bin


def run_bench(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        faults.main(["--quick", "--seconds", "1", *args])
    return done.value.code, capsys.readouterr().out


def assert_row(out: str, name: str, min_failures: int = 0) -> None:
    """The scenario's row in the table: no failures, nothing lost or doubled (or at least ``min_failures``)."""
    rows = [line.split() for line in out.splitlines() if line.startswith(name + " ")]
    assert rows, f"no table row for {name}:\n{out}"
    cases, _survived, failed, lost, dup = map(int, rows[0][1:6])
    assert cases > 0, out
    if min_failures:
        assert failed >= min_failures, out
    else:
        assert (failed, lost, dup) == (0, 0, 0), out


@pytest.mark.slow
def test_quick_load_and_writer_scenarios_pass_on_sqlite(capsys):
    code, out = run_bench(capsys, "--only", "sqlite-load", "sqlite-4-writers")
    assert code == 0, out
    assert_row(out, "sqlite-load", 0)
    assert_row(out, "sqlite-4-writers", 0)
    assert "FAILURE" not in out
    load = [line.split() for line in out.splitlines() if line.startswith("sqlite-load ") and "." in line.split()[1]]
    reads_per_s, writes_per_s = float(load[0][1]), float(load[0][2])
    assert reads_per_s > 0 and writes_per_s > 0  # readers really read while writers really wrote


def test_a_reader_thread_forced_to_fail_makes_the_bench_fail(capsys, monkeypatch):
    import bench.loadgen.load

    def broken(lake, size):
        raise RuntimeError("injected reader crash")

    monkeypatch.setattr(bench.loadgen.load, "consistent_snapshot", broken)
    code, out = run_bench(capsys, "--only", "sqlite-load")
    assert code == 1, out
    assert "FAILURE sqlite-load: reader thread: RuntimeError: injected reader crash" in out
    assert_row(out, "sqlite-load", 1)


def test_a_zoo_sql_reader_process_failing_makes_the_bench_fail(capsys, monkeypatch):
    import bench.loadgen.load

    monkeypatch.setattr(bench.loadgen.load, "consistency_sql", lambda size: "SELECT * FROM no_such_table")
    code, out = run_bench(capsys, "--only", "sqlite-load")
    assert code == 1, out
    assert "FAILURE sqlite-load: zoo sql reader: RuntimeError: zoo sql exited 2" in out


def test_a_crashed_reader_in_the_writer_scenario_is_counted(capsys, monkeypatch):
    def broken(lake, size):
        raise OSError("injected")

    monkeypatch.setattr(faults, "check_consistent", broken)
    code, out = run_bench(capsys, "--only", "duckdb-file-4-writers")
    assert code == 1, out
    assert "FAILURE duckdb-file-4-writers: reader: OSError: injected" in out


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_load_scenario_passes_on_postgres(capsys):
    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binaries (initdb)")
    code, out = run_bench(capsys, "--only", "postgres-load")
    assert code == 0, out
    assert_row(out, "postgres-load", 0)
