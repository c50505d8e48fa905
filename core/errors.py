"""Errors with messages that name the culprit. The CLI prints them on one line and exits 2."""
from __future__ import annotations


class ZooError(Exception):
    """Base class for every expected, user-facing failure."""


class UnknownEntry(ZooError, KeyError):
    """A name that is not in a registry (architecture, dataset, property, tokenizer...)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "unknown entry"


class BadWeights(ZooError, ValueError):
    """Weights that cannot be stored or used: NaN/Inf, wrong shape, unknown layer, corrupt file."""


class LakeError(ZooError):
    """The lake cannot be opened, read or written (not a lake, unknown snapshot or tag, bad SQL)."""


class DatasetUnavailable(ZooError):
    """A downloadable dataset that is not on disk and cannot be fetched here."""
