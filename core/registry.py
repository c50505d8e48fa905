"""One registry per plug-in axis (architectures, datasets, properties, tokenizers...), timm style.

    ARCHS = Registry("architecture")

    @ARCHS.register("mlp")
    def mlp(cfg): ...

Tests parametrize over ``REGISTRY.names()`` so every new entry is tested for free.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from core.errors import UnknownEntry

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, axis: str) -> None:
        self.axis = axis  # what the entries are, used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.axis} {key!r} registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownEntry(f"unknown {self.axis} {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
