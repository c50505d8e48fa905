"""One retry loop for a busy lake catalog, shared by opening, reading and committing (storage/lake.py).

A SQLite or PostgreSQL catalog with several writers answers some statements with "database is locked",
a serialization failure or a DuckLake transaction conflict; a DuckDB-file catalog held by another
process refuses the attach. These are transient: wait (jittered exponential backoff) and try again,
for a bounded number of seconds, then fail with one ``CatalogBusy`` error naming the catalog.
"""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

import duckdb

from core import settings
from core.errors import LakeError

T = TypeVar("T")
_TRANSIENT = ("database is locked", "could not set lock", "conflict", "concurrent", "busy", "serialization")

# errors of the statement itself (bad SQL, bad values): retrying cannot help, whatever their text says
_NEVER_TRANSIENT = (duckdb.ParserException, duckdb.SyntaxException, duckdb.BinderException,
                    duckdb.ConversionException, duckdb.TypeMismatchException, duckdb.OutOfRangeException,
                    duckdb.ConstraintException)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _NEVER_TRANSIENT):
        return False
    msg = str(exc).lower()
    return any(s in msg for s in _TRANSIENT)


class Locked(Exception):
    """The catalog file is held by another process (retried by ``Lake.open``)."""


class CatalogBusy(LakeError):
    """A catalog stayed locked / in conflict for the whole retry budget."""


def busy_budget(seconds: float | None = None) -> float:
    """Seconds to keep retrying a busy catalog: ``seconds``, else ``$ZOO_LOCK_TIMEOUT``, else 120."""
    return settings.lock_timeout() if seconds is None else float(seconds)


def with_retries(fn: Callable[[], T], what: str, catalog: str, budget_s: float, attempts: int | None = None,
                 undo: Callable[[], None] | None = None, max_delay: float = 1.0,
                 describe: Callable[[BaseException], str] = lambda e: str(e).splitlines()[0] if str(e) else "") -> T:
    """``fn()``, retried while it fails with a transient lock/conflict error (``is_transient``) for up to
    ``budget_s`` seconds (and ``attempts`` calls, when given); ``undo`` runs after each failed call (e.g.
    ROLLBACK). Other errors propagate unchanged; an exhausted budget raises ``CatalogBusy`` naming
    ``catalog``. The one retry loop of this module: opening, reading and committing all use it."""
    deadline, delay, tries = time.monotonic() + budget_s, 0.02, 0
    while True:
        tries += 1
        try:
            return fn()
        except (duckdb.Error, Locked) as e:
            if undo is not None:
                undo()
            if not (isinstance(e, Locked) or is_transient(e)):
                raise
            if time.monotonic() + delay > deadline or (attempts is not None and tries >= attempts):
                raise CatalogBusy(f"{what}: catalog {catalog} still locked or in conflict after {tries} tries "
                                  f"in {budget_s:g} s ({describe(e)})") from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, max_delay)
