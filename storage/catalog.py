"""Where a lake lives: location strings, catalog kinds, the packaged DuckDB extensions, object-store
secrets, and redaction of credentials (see storage.lake for what a location string may be)."""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

from core import settings
from core.errors import LakeError

DEFAULT_LAKE = settings.DEFAULT_LAKE


@dataclass(frozen=True)
class LakeConfig:
    catalog: str  # duckdb | sqlite | postgres
    target: str  # catalog file path (duckdb/sqlite) or libpq connection string (postgres)
    data_path: str  # folder or object-store URL for Parquet files
    data_path_explicit: bool = False  # from $ZOO_DATA_PATH (else derived from the lake folder)

    @classmethod
    def parse(cls, location: str | os.PathLike | None = None) -> "LakeConfig":
        loc = settings.lake_location(location)
        data_env = settings.data_path()
        if loc.startswith("postgres:"):
            if not data_env:
                raise LakeError("a PostgreSQL catalog needs ZOO_DATA_PATH (where the Parquet files live)")
            return cls("postgres", loc[len("postgres:"):].strip(), data_env, True)
        kind = "duckdb"
        if loc.startswith("sqlite:"):
            kind, loc = "sqlite", loc[len("sqlite:"):]
        elif loc.startswith("duckdb:"):
            loc = loc[len("duckdb:"):]
        root = pathlib.Path(loc).expanduser().absolute()
        target = root / ("zoo.sqlite" if kind == "sqlite" else "zoo.ducklake")
        return cls(kind, str(target), data_env or str(root / "data"), bool(data_env))

    @property
    def display(self) -> str:
        """Where the lake is, without credentials (never log a password)."""
        if self.catalog == "postgres":
            return redact("postgres:" + self.target)
        return str(pathlib.Path(self.target).parent) if self.catalog == "duckdb" else f"sqlite:{pathlib.Path(self.target).parent}"

    def __repr__(self) -> str:  # the dataclass repr would print a DSN's password
        return f"LakeConfig({self.display!r}, data_path={redact(self.data_path)!r})"

    @property
    def object_store(self) -> bool:
        return self.data_path.split("://", 1)[0].lower() in OBJECT_SCHEMES if "://" in self.data_path else False

    def exists(self) -> bool:
        return self.catalog == "postgres" or pathlib.Path(self.target).is_file()

    def attach_uri(self) -> str:
        prefix = {"duckdb": "", "sqlite": "sqlite:", "postgres": "postgres:"}[self.catalog]
        return f"ducklake:{prefix}{self.target}"


def extension_path(module: str, name: str) -> str:
    """Path of a DuckDB extension shipped inside a pip package (never fetched from the network)."""
    mod = __import__(module)
    found = next(pathlib.Path(mod.__file__).parent.rglob(f"{name}.duckdb_extension"), None)
    if found is None:
        raise LakeError(f"the {module} package holds no {name} extension; reinstall it (pip install {module.replace('_', '-')})")
    return str(found)


EXTENSIONS = {"sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
               "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner")}
OBJECT_SCHEMES = ("s3", "s3a", "gcs", "gs", "r2")
SECRET_ENV = ("ZOO_S3_SECRET", "ZOO_S3_KEY_ID", "ZOO_S3_SESSION_TOKEN")
PRIVATE_FUNCTIONS = ("duckdb_secrets", "which_secret")
LOCKED = ("could not set lock", "conflicting lock", "database is locked")
MOVED = re.compile(r'does not match existing data path in the catalog "([^"]*)"')
# Give freed query buffers back after every few MB: reading a big model then needs ~1.7x its size, not
# ~2.9x (bench/storage.py), because each tensor group's transient buffers are not kept by the allocator.
MEMORY = {"allocator_bulk_deallocation_flush_threshold": "4MB"}


def redact(text: str) -> str:
    """``text`` without passwords (libpq ``password=...``, URL ``user:pass@``) or the S3 secrets in the env."""
    text = re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)
    text = re.sub(r"://[^\s@/]*:[^\s@]*@", "://***@", text)
    for var in SECRET_ENV:
        value = settings.s3(var[len("ZOO_S3_"):])
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def first_line(exc: BaseException) -> str:
    return redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def s3_secret_sql(data_path: str) -> str:
    """CREATE SECRET for the object store from ``$ZOO_S3_*`` (never logged: it holds the secret)."""
    scheme, rest = data_path.split("://", 1)
    kind = {"gs": "gcs", "gcs": "gcs", "r2": "r2"}.get(scheme.lower(), "s3")
    opts = {"TYPE": kind, **{k: settings.s3(k) for k in ("KEY_ID", "SECRET", "SESSION_TOKEN", "REGION", "ENDPOINT",
                                                          "URL_STYLE")},
            "SCOPE": f"{scheme}://{rest.split('/', 1)[0]}"}
    parts = []
    for k, v in opts.items():
        if v:
            parts.append(f"{k} " + (kind if k == "TYPE" else "'" + str(v).replace("'", "''") + "'"))
    use_ssl = settings.s3("USE_SSL")
    if use_ssl is not None:
        parts.append(f"USE_SSL {'true' if use_ssl.lower() in ('1', 'true', 'yes') else 'false'}")
    return f"CREATE OR REPLACE SECRET zoo_data ({', '.join(parts)})"


def create_wal_sqlite(path: str) -> None:
    """An empty SQLite catalog file in WAL mode (persistent; DuckLake then initializes it). In the default
    rollback-journal mode a writer waiting to commit (PENDING) and readers holding SHARED locks deadlocked
    under load (bench/faults.py sqlite-load: every process locked out for minutes); in WAL mode readers
    never block the writer. WAL needs the catalog on a local disk (shared memory), as SQLite catalogs are."""
    import sqlite3

    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
