"""A throwaway local PostgreSQL server for catalogs in benches and tests (initdb + pg_ctl, unix socket
only, trust auth, in a temporary folder). As root the cluster runs as the ``postgres`` user (initdb
refuses root). ``find_pg_bin()`` is None when no server binaries are installed
(``apt-get install -y postgresql`` puts them in /usr/lib/postgresql/*/bin)."""
from __future__ import annotations

import glob
import itertools
import os
import pathlib
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

from core.errors import ZooError
from core.net import free_port


class NoPostgres(ZooError):
    """No PostgreSQL server binaries here (or no unprivileged user to run them as root)."""


def find_pg_bin() -> pathlib.Path | None:
    found = shutil.which("initdb")
    if found:
        return pathlib.Path(found).parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return pathlib.Path(cands[-1]).parent if cands else None


def _enterable_tmp() -> str:
    """The temp folder if every folder above it lets others pass (o+x), else /tmp: as root the server runs
    as ``postgres``, which cannot enter e.g. pytest's 0700 tmp_path when TMPDIR points there."""
    tmp = pathlib.Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & 0o001 for p in (tmp, *tmp.parents)):
        return str(tmp)
    return "/tmp"


@contextmanager
def local_postgres() -> Iterator[Callable[[], str]]:
    """Start a server; yields ``new_database()`` -> libpq DSN of a fresh database. Stopped and deleted on exit."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise NoPostgres("no PostgreSQL server binaries (initdb) in PATH or /usr/lib/postgresql/*/bin")
    as_user: list[str] = []
    base = pathlib.Path(tempfile.mkdtemp(prefix="zoo-pg-", dir=_enterable_tmp()))  # the postgres user must reach it
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise NoPostgres("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), base / "data"

    def pg(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
       "-o", f"-k {base} -p {port} -c listen_addresses='' -c max_connections=200", "start")
    createdb = bin_dir / "createdb" if (bin_dir / "createdb").exists() else pathlib.Path(shutil.which("createdb") or "createdb")
    made = itertools.count()

    def new_database() -> str:
        name = f"zoo{next(made)}"
        subprocess.run([str(createdb), "-h", str(base), "-p", str(port), "-U", "postgres", name], check=True,
                       capture_output=True, timeout=60)
        return f"dbname={name} host={base} port={port} user=postgres"

    try:
        yield new_database
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
