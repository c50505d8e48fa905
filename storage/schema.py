"""Every lake table with its schema in code. ``ensure_schema`` creates what is missing.

Keys (DuckLake has no PRIMARY KEY/UNIQUE): writes in ``storage.writes`` keep them unique
themselves, inside one transaction each.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, DuckDB type)
    keys: tuple[str, ...]  # logical key: at most one row per key at any snapshot
    inline: bool = True  # False for wide tables (tensor bytes): DuckLake inlining is slow for big rows

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    def ddl(self, catalog: str = "lake") -> str:
        cols = ", ".join(f"{c} {t}" for c, t in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {catalog}.{self.name} ({cols})"


MODELS = Table(
    "models",
    (
        ("model_id", "VARCHAR"),  # stable hash of what defines the model (see zoo's ids)
        ("family", "VARCHAR"),  # zoo family, e.g. digits-cnn
        ("arch", "VARCHAR"),  # architecture registry name
        ("arch_config", "VARCHAR"),  # JSON
        ("dataset", "VARCHAR"),
        ("train_config", "VARCHAR"),  # JSON
        ("seed", "BIGINT"),
        ("run_id", "VARCHAR"),  # training run: checkpoints of one run share it
        ("epoch", "INTEGER"),
        ("step", "BIGINT"),
        ("source", "VARCHAR"),  # trained | hf | timm | file
        ("n_params", "BIGINT"),
        ("spec", "VARCHAR"),  # core.spec.WeightSpec as JSON
        ("created_at", "TIMESTAMP WITH TIME ZONE"),
        ("code_version", "VARCHAR"),
    ),
    keys=("model_id",),
)

TENSORS = Table(
    "tensors",
    (
        ("model_id", "VARCHAR"),
        ("ordinal", "INTEGER"),  # position in the state dict
        ("name", "VARCHAR"),
        ("kind", "VARCHAR"),  # layer kind from the spec
        ("shape", "BIGINT[]"),
        ("dtype", "VARCHAR"),  # float32 | float16 | bfloat16 | int64 ...
        ("data", "BLOB"),  # raw little-endian bytes, bit-exact
    ),
    keys=("model_id", "name"),
    inline=False,
)

LABELS = Table(
    "labels",
    (
        ("model_id", "VARCHAR"),
        ("property", "VARCHAR"),  # e.g. test_accuracy, pgd_linf_8_255
        ("value", "DOUBLE"),
        ("labeler", "VARCHAR"),  # property registry name that produced it
        ("labeler_version", "INTEGER"),
        ("params", "VARCHAR"),  # JSON of the labeler's parameters
        ("measured_at", "TIMESTAMP WITH TIME ZONE"),
    ),
    keys=("model_id", "property"),
)

# Per-example outcomes a labeler saw on the way to a label, e.g. ``test_correct``: which test examples the
# model classifies correctly (its mean is test_accuracy). The label reliability reads them instead of
# running every model on the test split again (~25% of a benchmark family's label time, issue 12).
OUTCOMES = Table(
    "outcomes",
    (
        ("model_id", "VARCHAR"),
        ("outcome", "VARCHAR"),  # e.g. test_correct
        ("n", "BIGINT"),  # examples: the vector's length before packing
        ("bits", "BLOB"),  # numpy.packbits of the (n,) bool vector (big-endian bit order, zero-padded)
        ("labeler", "VARCHAR"),  # property registry name that produced it
        ("labeler_version", "INTEGER"),
        ("params", "VARCHAR"),  # JSON of the labeler's parameters
        ("measured_at", "TIMESTAMP WITH TIME ZONE"),
    ),
    keys=("model_id", "outcome"),
    inline=False,  # 2.5 kB a row on a 20,000-example test split
)

PREDICTIONS = Table(
    "predictions",
    (
        ("model_id", "VARCHAR"),
        ("property", "VARCHAR"),
        ("value", "DOUBLE"),
        ("lower", "DOUBLE"),  # prediction interval (NULL when the predictor gives none)
        ("upper", "DOUBLE"),
        ("run_id", "VARCHAR"),  # predictor (WeightNet or baseline) run
        ("predicted_at", "TIMESTAMP WITH TIME ZONE"),
    ),
    keys=("model_id", "property", "run_id"),
)

RUNS = Table(
    "runs",
    (
        ("run_id", "VARCHAR"),
        ("kind", "VARCHAR"),  # build | label | weightnet | evaluate
        ("config", "VARCHAR"),  # JSON
        ("status", "VARCHAR"),  # running | completed | partial (evaluate: some parts failed) | failed
        ("metrics", "VARCHAR"),  # JSON
        ("snapshot_id", "BIGINT"),  # the snapshot the run read (WeightNet) or produced
        ("started_at", "TIMESTAMP WITH TIME ZONE"),
        ("finished_at", "TIMESTAMP WITH TIME ZONE"),
        ("code_version", "VARCHAR"),
    ),
    keys=("run_id",),
)

TAGS = Table(
    "tags",
    (
        ("name", "VARCHAR"),
        ("snapshot_id", "BIGINT"),  # the snapshot current when the tag was made
        ("created_at", "TIMESTAMP WITH TIME ZONE"),
    ),
    keys=("name",),
)

TABLES: dict[str, Table] = {t.name: t for t in (MODELS, TENSORS, LABELS, OUTCOMES, PREDICTIONS, RUNS, TAGS)}
