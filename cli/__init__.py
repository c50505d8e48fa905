"""The ``zoo`` command line: the one layer that may import every other (storage, zoo, labeling, weightnet).

Each group of subcommands lives in ``cli/<name>.py`` and exposes ``register(app)``; ``cli.main``
assembles them. Run it as ``zoo`` (installed entry point) or ``python -m cli``."""
