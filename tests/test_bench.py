"""Every benchmark still runs: each bench/*.py with --quick (tiny sizes, seconds) as its own process,
the way a developer runs it. The benchmarks print figures and assert their own invariants; the suite
never times anything, it only fails when a benchmark crashes or exits non-zero. A new bench/*.py is
covered by being there (and must therefore have a --quick mode)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))

pytestmark = pytest.mark.slow


def test_the_bench_folder_is_found() -> None:
    assert {"weightnet.py", "labeling.py", "crash_scenarios.py", "weightnet_quality.py"} <= set(BENCHES)


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_runs_quick(bench: str, tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "ZOO_LOCK_TIMEOUT": "60"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bench/{bench} --quick exited {proc.returncode}:\n{out[-4000:]}"
    assert proc.stdout.strip(), f"bench/{bench} --quick printed no figures"
    assert "Traceback" not in out
