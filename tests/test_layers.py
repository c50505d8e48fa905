"""Imports run one way: each package imports only packages below it (read from the source, nothing is
imported). Order: core < storage < zoo < labeling < weightnet < evaluation < flows / cli / deploy."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("core", "storage", "zoo", "labeling", "weightnet", "evaluation")
TOP = ("flows", "cli", "deploy")
LIBRARIES_WITHOUT = ("prefect",) + TOP
def imported_packages(path: pathlib.Path) -> set[str]:
    """Top-level names of every absolute import in ``path`` (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def assert_imports_only_below(package: str) -> None:
    higher = set(LAYERS[LAYERS.index(package) + 1:]) | set(LIBRARIES_WITHOUT)
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        up = imported_packages(f) & higher
        if up:
            bad.append(f"{rel} imports {sorted(up)}")
    assert not bad, "imports running up the layers: " + "; ".join(bad)


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_lower_layers(package):
    assert_imports_only_below(package)


def test_the_check_sees_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from evaluation.run import evaluate\n    import prefect\n")
    assert imported_packages(f) == {"evaluation", "prefect"}
