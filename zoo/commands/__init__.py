"""Subcommand groups of the ``zoo`` CLI; each module owns its commands and exposes ``register(app)``."""
from zoo.commands import build, evaluate, ingest, label, store, weightnet_cmd

COMMAND_MODULES = (store, build, ingest, label, weightnet_cmd, evaluate)
