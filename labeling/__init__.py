"""Labeling: the property registry (``labeling.registry``) and incremental labeling (``labeling.run``).

Importing the package fills ``PROPERTIES`` with every built-in property."""
from labeling import attacks, corruption_robustness, performance, weightstats  # noqa: F401  (fill the registry)
from labeling.registry import PROPERTIES, Property, register_property  # noqa: F401
