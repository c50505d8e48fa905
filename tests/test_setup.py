"""The fresh-machine set-up: `.ci/system-deps` (installs Chromium/PostgreSQL when missing and allowed, else
one clear line), the Makefile's venv step (a failed pip install or a broken dependency fails the build and
leaves no stamp) and `.ci/check_deps.py` (every declared dependency installed and importable)."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEM_DEPS = ROOT / ".ci" / "system-deps"


def _exe(path: pathlib.Path, body: str) -> pathlib.Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def run_system_deps(tmp: pathlib.Path, *, uid: int, chromium: bool, initdb: bool, apt_body: str,
                    ) -> subprocess.CompletedProcess:
    """The script against a fake machine: chromium/initdb present or not, apt-get a logging fake."""
    fake_bin = tmp / "bin"
    fake_bin.mkdir(exist_ok=True)
    chrome = tmp / "chromium"
    if chromium and not chrome.exists():
        _exe(chrome, "exit 0\n")
    if initdb:
        _exe(fake_bin / "initdb", "exit 0\n")
    apt = _exe(tmp / "apt-get", apt_body)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "ZOO_CHROMIUM": str(chrome), "ZOO_APT_GET": str(apt),
           "ZOO_SUDO": str(tmp / "no-sudo"), "ZOO_SYSDEPS_UID": str(uid), "ZOO_PG_GLOB": str(tmp / "none" / "*"),
           "APT_LOG": str(tmp / "apt.log"), "CHROME": str(chrome), "FAKE_BIN": str(fake_bin)}
    return subprocess.run(["bash", str(SYSTEM_DEPS)], env=env, capture_output=True, text=True, timeout=60)


# a fake apt-get: logs its arguments; `install` puts the named programs in place
FAKE_APT = """echo "$@" >> "$APT_LOG"
if [ "$1" = install ]; then
  for p in "$@"; do
    [ "$p" = chromium ] && { printf '#!/bin/sh\\n' > "$CHROME"; chmod +x "$CHROME"; }
    [ "$p" = postgresql ] && { printf '#!/bin/sh\\n' > "$FAKE_BIN/initdb"; chmod +x "$FAKE_BIN/initdb"; }
  done
fi
exit 0
"""


def test_system_deps_present_changes_nothing(tmp_path: pathlib.Path) -> None:
    r = run_system_deps(tmp_path, uid=0, chromium=True, initdb=True, apt_body=FAKE_APT)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "apt.log").exists()


def test_system_deps_installs_missing_as_root_once(tmp_path: pathlib.Path) -> None:
    r = run_system_deps(tmp_path, uid=0, chromium=False, initdb=False, apt_body=FAKE_APT)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("update")
    assert calls[1].split()[0] == "install" and {"chromium", "postgresql"} <= set(calls[1].split())
    again = run_system_deps(tmp_path, uid=0, chromium=True, initdb=True, apt_body=FAKE_APT)
    assert again.returncode == 0 and (tmp_path / "apt.log").read_text().splitlines() == calls  # idempotent


def test_system_deps_without_rights_says_what_to_install(tmp_path: pathlib.Path) -> None:
    r = run_system_deps(tmp_path, uid=1000, chromium=False, initdb=True, apt_body=FAKE_APT)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "chromium" in lines[0] and "apt-get install -y chromium" in lines[0]
    assert "postgresql" not in lines[0]
    assert not (tmp_path / "apt.log").exists()


def test_system_deps_failed_install_fails(tmp_path: pathlib.Path) -> None:
    r = run_system_deps(tmp_path, uid=0, chromium=False, initdb=True,
                        apt_body='echo "$@" >> "$APT_LOG"; [ "$1" = install ] && exit 100; exit 0\n')
    assert r.returncode != 0


# --- the Makefile's venv step ----------------------------------------------------------------------
FAKE_PYTHON = """# a stand-in venv python: `pip install -e` fails when FAIL_PIP is set, check_deps.py when FAIL_CHECK is
echo "$@" >> "$PY_LOG"
case "$*" in
  *"pip install"*"-e"*) [ -n "$FAIL_PIP" ] && { echo "ERROR: No matching distribution found for nothing-such" >&2; exit 1; } ;;
  *check_deps.py*) [ -n "$FAIL_CHECK" ] && { echo "dependency check: x: not installed" >&2; exit 1; } ;;
esac
exit 0
"""


def make_venv(tmp: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    _exe(venv / "bin" / "python", FAKE_PYTHON)
    full = {**os.environ, "PY_LOG": str(tmp / "py.log"), "FAIL_PIP": "", "FAIL_CHECK": "", **env}
    return subprocess.run(["make", "-C", str(ROOT), "venv", f"VENV={venv}"], env=full, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("failing", ["FAIL_PIP", "FAIL_CHECK"])
def test_make_venv_fails_on_pip_or_dependency_failure(tmp_path: pathlib.Path, failing: str) -> None:
    r = make_venv(tmp_path, **{failing: "1"})
    assert r.returncode != 0, r.stdout
    assert not list((tmp_path / "venv").glob(".stamp-*"))  # the next run retries the install


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_venv_installs_extras_checks_all_and_stamps(tmp_path: pathlib.Path) -> None:
    r = make_venv(tmp_path)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "py.log").read_text()
    assert "-e .[dev,k8s]" in log and "check_deps.py --extras dev,k8s" in log
    assert len(list((tmp_path / "venv").glob(".stamp-*"))) == 1
    (tmp_path / "py.log").unlink()
    assert make_venv(tmp_path).returncode == 0 and not (tmp_path / "py.log").exists()  # stamped: nothing reruns


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_runs_system_deps_before_pytest() -> None:
    out = subprocess.run(["make", "-C", str(ROOT), "-n", "-W", "pyproject.toml", "test", "VENV=/nonexistent"],
                         capture_output=True, text=True, timeout=30).stdout.splitlines()
    steps = [i for i, line in enumerate(out) if ".ci/system-deps" in line or "-m pytest" in line]
    assert [".ci/system-deps" in out[i] for i in steps] == [True, False]


# --- check_deps.py ---------------------------------------------------------------------------------
def test_check_deps_names_a_missing_or_mismatched_dependency(tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1", "no-such-package-zoo>=1"]\n'
                    '[project.optional-dependencies]\ndev = ["pytest<1"]\n')
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_deps.py"), "--pyproject", str(fake),
                        "--extras", "dev"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "no-such-package-zoo: not installed" in r.stderr and "pytest: version" in r.stderr
    assert "numpy" not in r.stderr


def test_check_deps_passes_for_this_venv_runtime_set() -> None:
    """The shared venv satisfies every runtime + dev + k8s requirement (what `make` checks after pip)."""
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_deps.py"), "--extras", "dev,k8s"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
