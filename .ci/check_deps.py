"""Every dependency pyproject.toml declares (runtime + the named extras) is installed at a version its
specifier admits and its top-level modules import. Run by the Makefile after pip, so a failed or partial
install stops the build here with the package's name instead of surfacing later as an ImportError.

    python .ci/check_deps.py [--pyproject FILE] [--extras dev,k8s]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import pathlib
import sys
import tomllib

try:
    from packaging.requirements import Requirement
except ImportError:  # a venv where only pip is installed yet: pip vendors the same module
    from pip._vendor.packaging.requirements import Requirement


def requirements(pyproject: pathlib.Path, extras: list[str]) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"check_deps: pyproject.toml has no extra {extra!r}")
        reqs += optional[extra]
    return [Requirement(r) for r in reqs]


def top_level_modules(dist: md.Distribution) -> list[str]:
    """Import names a distribution provides (top_level.txt, else the package folders in its RECORD)."""
    text = dist.read_text("top_level.txt")
    names = text.split() if text else []
    if not names:
        for f in dist.files or []:
            parts = f.parts
            if len(parts) >= 2 and parts[-1] == "__init__.py" and len(parts) == 2:
                names.append(parts[0])
            elif len(parts) == 1 and parts[0].endswith(".py"):
                names.append(parts[0][:-3])
    return sorted({n for n in names if n.isidentifier() and not n.startswith("_")})


def check(req: Requirement) -> str | None:
    """None when fine, else one line naming what is wrong."""
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        return f"{req.name}: not installed (wanted {req})"
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        return f"{req.name}: version {dist.version} installed, {req} wanted"
    for extra in req.extras:  # e.g. sqlalchemy[asyncio]: the extra's own requirements
        for sub in dist.requires or []:
            r = Requirement(sub)
            if r.marker and r.marker.evaluate({"extra": extra}) and not (r.marker.evaluate({"extra": ""})):
                if (problem := check(Requirement(str(r).split(";")[0]))) is not None:
                    return f"{req.name}[{extra}] -> {problem}"
    modules = top_level_modules(dist)
    if not modules:
        return f"{req.name}: installed but provides no importable module"
    own = req.name.lower().replace("-", "_").replace(".", "_")
    if own in modules:  # the distribution's own module; bundled extras (duckdb's adbc driver) are optional
        modules = [own]
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001  any import failure is the finding
            return f"{req.name}: `import {mod}` fails: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", default=str(pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"))
    ap.add_argument("--extras", default="dev", help="comma-separated extras to check besides the runtime set")
    args = ap.parse_args(argv)
    reqs = requirements(pathlib.Path(args.pyproject), [e for e in args.extras.split(",") if e])
    problems = [p for p in map(check, reqs) if p]
    for p in problems:
        print(f"dependency check: {p}", file=sys.stderr)
    if problems:
        print(f"dependency check: {len(problems)} of {len(reqs)} requirements broken; rerun the pip install "
              "and read its errors", file=sys.stderr)
        return 1
    print(f"dependency check: all {len(reqs)} requirements installed and importable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
