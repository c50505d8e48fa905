"""Subcommand groups of the ``zoo`` CLI; each module owns its commands and exposes ``register(app)``."""
from zoo.commands import build, evaluate, label, store, weightnet_cmd

COMMAND_MODULES = (store, build, label, weightnet_cmd, evaluate)
