"""Options shared by subcommands."""
from __future__ import annotations

import typer

LakeOption = typer.Option(None, "--lake", "-l", envvar="ZOO_LAKE",
                          help="Lake location: a folder (DuckDB catalog), sqlite:FOLDER, or postgres:DSN. Default ./lake")
AtOption = typer.Option(None, "--at", help="Snapshot id or tag to read (default: latest)")
