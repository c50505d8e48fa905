"""The ``zoo`` command. Each group of subcommands lives in ``cli/<name>.py`` and exposes
``register(app)``; this module only assembles them and turns expected errors into one-line messages."""
from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from core.errors import ZooError
from cli import build, evaluate, ingest, label, recipes, store, weightnet_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="WeightNet Zoo: build, label and query a versioned zoo of neural-network weights.")

COMMAND_MODULES = (store, build, ingest, label, recipes, weightnet_cmd, evaluate)

for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors (bad option values, unknown commands): click's own message
        if hasattr(e, "show"):
            e.show()
        sys.exit(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    main()
