"""The property registry: every label is produced by a named, versioned property.

    @register_property("performance", version=1, params=PerfParams())
    def performance(batch: ModelBatch, splits: Splits, params: PerfParams, device: torch.device,
                    generator: torch.Generator) -> list[dict[str, float]]: ...

A property gets all models of one architecture group at once (``ModelBatch``: same arch, arch config,
dataset and data seed) and returns, per model and in batch order, a dict of named float values. A value
may instead be a ``PerExample`` (e.g. performance's ``test_correct``: which test examples the model got
right), stored in ``outcomes`` beside the labels. Each float value becomes one row of ``labels``
(property = the value's name, labeler = the property's name,
labeler_version = its version, params = its parameters as JSON). Bumping ``version`` marks every label
it produced as stale, so ``labeling.run.plan_labeling`` relabels exactly those models.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.errors import UnknownEntry
from core.registry import Registry
from storage.writes import ModelRecord
from zoo.datasets import DatasetInfo, Splits


@dataclass(frozen=True)
class ModelBatch:
    records: tuple[ModelRecord, ...]
    modules: tuple[torch.nn.Module, ...]  # eval mode, on the labeling device, weights loaded
    states: tuple[dict[str, torch.Tensor], ...]  # the stored state dicts (CPU), for weight statistics
    # one seed per model, from its model id and the run's seed (``labeling.run.model_seed``): a property
    # that draws random numbers per model seeds them from here, so a model's label does not depend on
    # which other models share its batch. Empty for hand-made batches (properties then use the generator).
    seeds: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, eq=False)
class PerExample:
    """One model's outcome on each example of a split, kept beside its labels (``storage.writes.Outcome``):
    what the label reliability reads instead of running every model on the test split again."""
    values: np.ndarray  # (N,) bool

    def __eq__(self, other: object) -> bool:  # by value, so that two labelings' results compare
        return isinstance(other, PerExample) and np.array_equal(self.values, other.values)

    __hash__ = None  # type: ignore[assignment]  (mutable array inside)


PropertyFn = Callable[[ModelBatch, Splits, Any, torch.device, torch.Generator],
                      Sequence[dict[str, float | PerExample]]]


@dataclass(frozen=True)
class Property:
    name: str  # labeler name stored in labels.labeler
    version: int  # bump when the numbers it produces change meaning or value
    fn: PropertyFn
    params: Any  # frozen dataclass of default parameters (stored as JSON with every label)
    kinds: tuple[str, ...] | None = None  # dataset kinds it applies to (None: every kind)
    needs_sensitive: bool = False  # only for datasets that declare sensitive features
    # data-dependent parameters fixed before the run and stored with the labels (e.g. a subset's indices)
    resolve_params: Callable[[Splits, Any], Any] | None = None

    def applies(self, info: DatasetInfo) -> bool:
        if self.kinds is not None and info.kind not in self.kinds:
            return False
        return bool(info.sensitive) or not self.needs_sensitive

    def params_for(self, splits: Splits) -> Any:
        return self.resolve_params(splits, self.params) if self.resolve_params else self.params

    def params_json(self, params: Any | None = None) -> dict:
        p = self.params if params is None else params
        return dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(p or {})


PROPERTIES: Registry = Registry("property")


def register_property(name: str, version: int, params: Any, kinds: tuple[str, ...] | None = None,
                      needs_sensitive: bool = False,
                      resolve_params: Callable[[Splits, Any], Any] | None = None) -> Callable[[PropertyFn], PropertyFn]:
    def deco(fn: PropertyFn) -> PropertyFn:
        PROPERTIES.register(name)(Property(name, int(version), fn, params, kinds, needs_sensitive,
                                          resolve_params))
        return fn

    return deco


def resolve(names: Sequence[str] | str | None) -> list[Property]:
    """Properties by name (a list or a comma-separated string); None or empty: every registered property."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return [PROPERTIES.get(n) for n in PROPERTIES.names()]
    out = []
    for n in dict.fromkeys(names):
        out.append(PROPERTIES.get(n))  # UnknownEntry names the culprit and lists the known ones
    return out


def replace(prop: Property, **changes: Any) -> Property:
    """A copy of ``prop`` with fields changed (e.g. ``version=prop.version + 1``)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(Property)}
    if unknown:
        raise UnknownEntry(f"Property has no field {sorted(unknown)[0]!r}")
    return dataclasses.replace(prop, **changes)
