"""The one module that attaches the lake.

A lake is a DuckLake catalog (a DuckDB file, a SQLite file, or a PostgreSQL database) plus a folder
of Parquet data files. Every committed transaction is a snapshot; ``at`` (a snapshot id or a tag)
opens the lake read-only as it was then, so user SQL runs unchanged against the past.

Location strings (flag ``--lake``, else ``$ZOO_LAKE``, else ``./lake``):
    ./lake                                  DuckDB-file catalog at ./lake/zoo.ducklake, data in ./lake/data
    sqlite:./lake                           SQLite catalog at ./lake/zoo.sqlite (several local writers)
    postgres:dbname=zoo host=/tmp port=5433 PostgreSQL catalog (a cluster); data path from $ZOO_DATA_PATH
Data files go to ``$ZOO_DATA_PATH`` when set (a local folder or an object-store URL such as s3://...).
For s3:// (and gcs://, r2://) data paths the packaged httpfs extension is loaded and a DuckDB secret is
made from ``$ZOO_S3_KEY_ID``, ``$ZOO_S3_SECRET`` (+ optional ``$ZOO_S3_REGION``, ``$ZOO_S3_ENDPOINT``,
``$ZOO_S3_SESSION_TOKEN``, ``$ZOO_S3_URL_STYLE``, ``$ZOO_S3_USE_SSL``). Secrets never appear in
``LakeConfig.display``, its repr, or any error raised here (``redact``).

A lake folder that was copied, moved or restored elsewhere opens where it now is: DuckLake records the
data path it was created with, and when the data path derived from the lake folder differs from it, the
lake attaches with ``OVERRIDE_DATA_PATH`` (file paths inside are relative; nothing is rewritten).
``Lake.data_path`` is the path in use, ``Lake.moved_from`` the recorded one when they differ. An explicit
``$ZOO_DATA_PATH`` that differs from the recorded path is refused (a typo would split the data) unless
``$ZOO_DATA_PATH_MOVED=1`` says the files really were moved there.

A DuckDB-file catalog admits one process at a time: ``Lake.open`` waits (with backoff, up to
``lock_timeout`` seconds, default ``$ZOO_LOCK_TIMEOUT`` or 120) while another process holds it, so
concurrent writer processes take turns instead of failing. The same budget bounds every other wait on
a busy catalog: reads (``fetch``, ``current_snapshot``, ``pinned``/``read``, ``retry``) and commits go
through one helper, ``with_retries``, which retries transient lock/conflict errors with jittered
backoff and raises one ``CatalogBusy`` naming the catalog when the budget runs out.
"""
from __future__ import annotations

import json
import os
import pathlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import duckdb

from core import settings
from core.errors import LakeError
from storage.catalog import (EXTENSIONS, LOCKED, MEMORY, MOVED, PRIVATE_FUNCTIONS,  # noqa: F401
                             LakeConfig, create_wal_sqlite, extension_path, first_line, redact, s3_secret_sql)
from storage.retry import CatalogBusy, Locked as _Locked, busy_budget, is_transient, with_retries  # noqa: F401
from storage.schema import TABLES

T = TypeVar("T")
AUTHOR = "weightnet-zoo"  # the commit author of every snapshot this project writes


class Lake:
    """An open connection with the lake attached as ``lake`` (and selected with USE)."""

    def __init__(self, config: LakeConfig, con: duckdb.DuckDBPyConnection, snapshot: int | None, read_only: bool,
                 busy_s: float | None = None):
        self.config = config
        self.con = con
        self.snapshot = snapshot  # None: the latest
        self.read_only = read_only
        self.moved_from: str | None = None  # the catalog's recorded data path when the lake was moved
        self.busy_s = busy_budget(busy_s)  # retry budget on a busy catalog (seconds)
        self._in_txn = False  # inside commit/read/pinned: a failed statement aborts the whole transaction

    @property
    def data_path(self) -> str:
        """Where this handle reads and writes Parquet files (without credentials)."""
        return redact(self.config.data_path.rstrip("/") + "/")

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | os.PathLike | LakeConfig | None = None, *, create: bool = False,
             read_only: bool = False, at: str | int | None = None, lock_timeout: float | None = None) -> "Lake":
        cfg = location if isinstance(location, LakeConfig) else LakeConfig.parse(location)
        if cfg.catalog != "postgres":
            target = pathlib.Path(cfg.target)
            if target.parent.exists() and not target.parent.is_dir():
                raise LakeError(f"{cfg.display} is not a zoo lake (it is a file, not a folder)")
        if not cfg.exists():
            if not create:
                raise LakeError(f"{cfg.display} is not a zoo lake (no catalog at {cfg.target}; run `zoo init`)")
            pathlib.Path(cfg.target).parent.mkdir(parents=True, exist_ok=True)
            if cfg.catalog == "sqlite":
                create_wal_sqlite(cfg.target)
        if cfg.catalog != "postgres" and "://" not in cfg.data_path:
            pathlib.Path(cfg.data_path).mkdir(parents=True, exist_ok=True)
        lock_timeout = busy_budget(lock_timeout)
        lake = with_retries(lambda: cls._open_once(cfg, read_only, at), "cannot open lake (still locked by "
                            "another process)", cfg.display, lock_timeout, describe=first_line)
        lake.busy_s = lock_timeout
        return lake

    @classmethod
    def _open_once(cls, cfg: LakeConfig, read_only: bool, at: str | int | None) -> "Lake":
        con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false",
                                     "autoload_known_extensions": "false", **MEMORY})
        try:
            con.execute(f"LOAD '{extension_path('duckdb_extension_ducklake', 'ducklake')}'")
            if cfg.catalog in EXTENSIONS:
                con.execute(f"LOAD '{extension_path(*EXTENSIONS[cfg.catalog])}'")
            if cfg.object_store:
                con.execute(f"LOAD '{extension_path('duckdb_extension_httpfs', 'httpfs')}'")
                if any(settings.s3(k) for k in ("KEY_ID", "SECRET", "ENDPOINT", "REGION")):
                    con.execute(s3_secret_sql(cfg.data_path))  # else: public bucket, no credentials
            lake = cls(cfg, con, None, read_only)
            if at is not None:
                snap = lake._resolve_with_fresh_attach(at)
                lake._attach(snap, read_only=True)
                lake.snapshot, lake.read_only = snap, True
            else:
                lake._attach(None, read_only)
                if not read_only:
                    lake.ensure_schema()
        except duckdb.Error as e:
            con.close()
            if any(s in str(e).lower() for s in LOCKED):
                raise _Locked(first_line(e)) from None
            raise LakeError(f"cannot open lake {cfg.display}: {first_line(e)}") from None
        except BaseException:
            con.close()
            raise
        return lake

    def _attach(self, snapshot: int | None, read_only: bool) -> None:
        data = self.config.data_path.rstrip("/").replace("'", "''") + "/"
        opts = [f"DATA_PATH '{data}'"]
        if snapshot is not None:
            opts.append(f"SNAPSHOT_VERSION {int(snapshot)}")
        if read_only:
            opts.append("READ_ONLY")
        if self.moved_from is not None:
            opts.append("OVERRIDE_DATA_PATH true")
        uri = self.config.attach_uri().replace("'", "''")
        try:
            self.con.execute(f"ATTACH '{uri}' AS lake ({', '.join(opts)})")
        except duckdb.Error as e:
            recorded = MOVED.search(str(e))
            if recorded is None or self.moved_from is not None:
                raise
            self.moved_from = redact(recorded.group(1))
            if self.config.data_path_explicit and not settings.data_path_moved():
                raise LakeError(f"cannot open lake {self.config.display}: its catalog records data path "
                                f"{redact(self.moved_from)} but ZOO_DATA_PATH is {self.data_path}; unset or fix "
                                f"ZOO_DATA_PATH, or set ZOO_DATA_PATH_MOVED=1 if the data files were moved there") from None
            self.con.execute(f"ATTACH '{uri}' AS lake ({', '.join(opts)}, OVERRIDE_DATA_PATH true)")
        self.con.execute("USE lake")

    def _reattach(self, snapshot: int | None, read_only: bool) -> None:
        self.con.execute("USE memory")
        self.con.execute("DETACH lake")
        self._attach(snapshot, read_only)
        self.snapshot, self.read_only = snapshot, read_only

    @contextmanager
    def viewing(self, snapshot: int | None, read_only: bool = True) -> Iterator["Lake"]:
        """This handle re-attached at ``snapshot`` (None = latest) for the block, then restored.

        One DuckDB connection cannot attach the same catalog twice (and a second handle on a DuckDB-file
        catalog conflicts inside one process), so reading a past snapshot and then writing go through
        this. A read at the snapshot the handle already shows needs no re-attach.
        """
        before = (self.snapshot, self.read_only)
        shown = self.snapshot if self.snapshot is not None else self.current_snapshot()
        if before == (snapshot, read_only) or (read_only and snapshot is not None and shown == snapshot):
            yield self
            return
        self._reattach(snapshot, read_only)
        try:
            yield self
        finally:
            self._reattach(*before)

    def _resolve_with_fresh_attach(self, at: str | int) -> int:
        self._attach(None, read_only=True)
        try:
            return self.resolve(at)
        finally:
            self.con.execute("USE memory")
            self.con.execute("DETACH lake")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Lake":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- schema & snapshots --------------------------------------------------------------------
    def ensure_schema(self) -> None:
        existing = {r[0] for r in self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'").fetchall()}
        missing = [t for name, t in TABLES.items() if name not in existing]
        if not missing:
            return

        def create() -> None:
            for t in missing:
                self.con.execute(t.ddl())

        self.commit(create, "create schema", retries=8)
        for t in missing:  # table options cannot be set in the transaction that creates the table
            if not t.inline:
                self.commit(lambda: self.con.execute(
                    f"CALL lake.set_option('data_inlining_row_limit', 0, table_name => '{t.name}')"),
                    f"no inlining for {t.name}", retries=8)

    def current_snapshot(self) -> int:
        return int(self.retry(lambda: self.con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0],
                              "read the current snapshot"))

    def snapshots(self) -> list[dict]:
        rows = self.retry(lambda: self.con.execute(
            "SELECT snapshot_id, snapshot_time, changes, author, commit_message, commit_extra_info "
            "FROM lake.snapshots() ORDER BY snapshot_id").fetchall(), "list snapshots")
        tags: dict[int, list[str]] = {}
        for name, sid in self.fetch("SELECT name, snapshot_id FROM lake.main.tags"):
            tags.setdefault(int(sid), []).append(name)
        return [{"snapshot_id": r[0], "time": r[1], "changes": r[2], "author": r[3], "message": r[4],
                 "extra": r[5], "tags": sorted(tags.get(int(r[0]), []))} for r in rows]

    def pin(self, at: str | int | None) -> int:
        """The snapshot ``at`` names (a snapshot id or a tag); None: the one this handle shows (the latest
        unless it was opened ``at`` a snapshot). Every stage pins its input through this."""
        if at is not None:
            return self.resolve(at)
        return self.snapshot if self.snapshot is not None else self.current_snapshot()

    def resolve(self, at: str | int) -> int:
        """A snapshot id from an int, a numeric string or a tag name; unknown ones raise LakeError."""
        if isinstance(at, int) or (isinstance(at, str) and at.strip().isdigit()):
            sid = int(at)
            ok = self.fetch("SELECT count(*) FROM lake.snapshots() WHERE snapshot_id = ?", [sid])[0][0]
            if not ok:
                raise LakeError(f"unknown snapshot {sid} (latest is {self.current_snapshot()})")
            return sid
        if "\x00" in str(at):  # DuckLake's file-list query cannot carry a NUL byte: no tag can hold one
            raise LakeError(f"unknown snapshot or tag {at!r}")
        rows = self.fetch("SELECT snapshot_id FROM lake.main.tags WHERE name = ?", [at])
        row = rows[0] if rows else None
        if row is None:
            raise LakeError(f"unknown snapshot or tag {at!r}")
        return int(row[0])

    # --- reading -------------------------------------------------------------------------------
    def retry(self, fn: Callable[[], T], what: str = "read") -> T:
        """``fn()`` retried on a busy catalog within this lake's budget. Inside a transaction a failed
        statement has aborted it, so the error goes up to the enclosing ``commit``/``read``, which
        retries the whole transaction."""
        if self._in_txn:
            return fn()
        return self._with_retries(fn, what)

    def sql(self, query: str, params: list | None = None) -> duckdb.DuckDBPyRelation | None:
        try:
            return self.con.sql(query, params=params) if params else self.con.sql(query)
        except duckdb.Error as e:
            raise LakeError(f"SQL error: {first_line(e)}") from None

    def fetch(self, query: str, params: list | None = None) -> list[tuple]:
        return self.fetch_with_columns(query, params)[1]

    def fetch_with_columns(self, query: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """(column names, rows); retried on a busy catalog like every read."""
        def once() -> tuple[list[str], list[tuple]]:
            cur = self.con.execute(query, params or [])
            return [d[0] for d in cur.description or []], cur.fetchall()

        try:
            return self.retry(once, "read")
        except duckdb.Error as e:
            if self._in_txn and is_transient(e):
                raise  # the enclosing commit/read retries the whole transaction
            raise LakeError(f"SQL error: {first_line(e)}") from None

    def lock_down(self) -> None:
        """For untrusted SQL on a read-only lake: no file access beyond the lake's data files, no
        re-attaching, and settings frozen (so the lock cannot be lifted by the query itself)."""
        if not self.read_only:
            raise LakeError("lock_down needs a read-only lake")
        if not self.config.object_store:
            data = str(pathlib.Path(self.config.data_path).absolute()).replace("'", "''")
            self.con.execute(f"SET allowed_directories = ['{data}/']")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def query_table(self, query: str) -> Any:
        """One user statement run to completion: a pyarrow Table, or None for a statement without a
        result. On a read-only lake only a single SELECT/EXPLAIN is accepted: DDL, DML, ATTACH/DETACH, USE,
        SET, COPY, CALL... are refused before they run. Retried whole on a busy catalog, so `zoo sql`
        beside writers never fails on a lock."""
        self._check_statement(query)

        def once() -> Any:
            rel = self.con.sql(query)
            return None if rel is None else rel.to_arrow_table()

        try:
            return self.retry(once, "SQL query")
        except duckdb.Error as e:
            raise LakeError(f"SQL error: {first_line(e)}") from None

    def _check_statement(self, query: str) -> None:
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as e:
            raise LakeError(f"SQL error: {first_line(e)}") from None
        if not statements:
            raise LakeError("SQL error: empty query")
        if self.read_only:
            if len(statements) != 1:
                raise LakeError(f"read-only SQL takes one statement, got {len(statements)} (pass --write to change the lake)")
            if any(f in query.lower() for f in PRIVATE_FUNCTIONS):
                raise LakeError("read-only SQL may not read the connection's secrets")
            kind = statements[0].type
            if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
                raise LakeError(f"read-only SQL: {kind.name} statements are refused (only SELECT; pass --write "
                                f"to change the lake)")

    @contextmanager
    def pinned(self) -> Iterator[int]:
        """Several reads that see one snapshot (yielded) even while other processes commit: outside a
        transaction every statement reads the latest snapshot of its own moment. Starting is retried on
        a busy catalog; a statement failing inside the block is not (use ``read`` for that)."""
        def begin() -> int:
            self.con.execute("BEGIN TRANSACTION")
            return self.snapshot if self.snapshot is not None else \
                int(self.con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0])

        snap = self._with_retries(begin, "pin a snapshot", undo=self._rollback)
        self._in_txn = True
        try:
            yield snap
        finally:
            self._in_txn = False
            self._rollback()

    def read(self, body: Callable[[int], T], what: str = "read") -> T:
        """``body(snapshot)`` in one read transaction, so all its statements see one snapshot; on a busy
        catalog the whole transaction is rolled back and retried (within the lake's budget)."""
        def once() -> T:
            with self.pinned() as snap:
                return body(snap)

        return self._with_retries(once, what)

    def _with_retries(self, fn: Callable[[], T], what: str, **kw: Any) -> T:
        return with_retries(fn, what, self.config.display, self.busy_s, describe=first_line, **kw)

    def _rollback(self) -> None:
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # no transaction open (BEGIN failed) or already aborted

    # --- writing -------------------------------------------------------------------------------
    def commit(self, body: Callable[[], T], message: str, extra: dict | None = None, retries: int = 20) -> T:
        """Run ``body`` in one transaction = one snapshot, named by ``message``.

        Transient conflicts (a concurrent writer on SQLite/PostgreSQL, a lock) roll back and retry the
        whole body with jittered backoff, so nothing is half-written and nothing is lost.
        """
        if self.read_only:
            raise LakeError("the lake is open read-only (pass --write to change it)")

        def once() -> T:
            self.con.execute("BEGIN TRANSACTION")
            self._in_txn = True
            try:
                result = body()
                self.con.execute("CALL lake.set_commit_message(?, ?, extra_info => ?)",
                                 [AUTHOR, message, json.dumps(extra or {})])
                self.con.execute("COMMIT")
                return result
            except BaseException as e:
                if not isinstance(e, duckdb.Error):
                    self._rollback()  # with_retries rolls back (and decides) for database errors
                raise
            finally:
                self._in_txn = False

        try:
            return self._with_retries(once, f"write ({redact(message)})", attempts=retries + 1, undo=self._rollback,
                                      max_delay=2.0)
        except duckdb.Error as e:
            raise LakeError(f"write failed ({redact(message)}): {first_line(e)}") from None

    def tag(self, name: str, snapshot: int | None = None) -> int:
        """Name a snapshot (the current one by default). Re-tagging moves the name."""
        if not name or name.strip().isdigit() or "\x00" in name:
            raise LakeError(f"tag name {name!r} must be non-empty, not a number and free of NUL bytes")
        sid = self.current_snapshot() if snapshot is None else self.resolve(snapshot)

        def body() -> None:
            self.con.execute("DELETE FROM lake.main.tags WHERE name = ?", [name])
            self.con.execute("INSERT INTO lake.main.tags VALUES (?, ?, now())", [name, sid])

        self.commit(body, f"tag {name} -> {sid}", {"tag": name, "snapshot_id": sid})
        return sid

