"""Layering: no module of H3DELandmarksLib imports a layer above its own (../shared/ARCHITECTURE.md).

Every import is read with `ast`, function-local ones included, and its target's top-level unit
(a subpackage such as ``data`` or a bottom module such as ``errors``) must be allowed for the
importing unit in `ALLOWED`. A new unit has to be placed in the table before it can be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = "H3DELandmarksLib"
ROOT = Path(__file__).resolve().parents[1] / LIBRARY

# The bottom row: shared by everything; each imports at most the errors.
BOTTOM = {"errors", "atomic", "checksums", "json_document", "device", "progress_events", "requirements"}
BELOW_REGISTRY = BOTTOM | {"data", "model"}
WORKERS = BELOW_REGISTRY | {"registry"}
BELOW_MRML = WORKERS | {"inference", "training", "evaluation"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": {"errors"},
    "checksums": set(),
    "json_document": {"errors"},
    "device": {"errors"},
    "progress_events": {"errors"},
    # The package's requirement list, read before any requirement is installed: imports nothing.
    "requirements": set(),
    "data": BOTTOM,
    # The network is a leaf: nothing of the project but the bottom row.
    "model": BOTTOM,
    "registry": BELOW_REGISTRY,
    "inference": WORKERS,
    "evaluation": WORKERS,
    # Training may run the predictor (few-shot re-labelling) and score it; neither imports training.
    "training": WORKERS | {"inference", "evaluation"},
    "mrml": BELOW_MRML,
    "web": BELOW_MRML | {"mrml"},
    # `h3de serve` starts the web app; the web app never imports the command line.
    "cli": BELOW_MRML | {"mrml", "web"},
}


def module_name(path: Path) -> str:
    """Dotted module name of a file under the library (a package is named by its folder)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`, at any depth (functions too)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names] if not node.module else [target]
            found += [(node.lineno, name) for name in names]
    return found


def unit(dotted: str) -> str | None:
    """The top-level unit of a library module ("data" for H3DELandmarksLib.data.volume), "" for the
    package root, None outside the library."""
    parts = dotted.split(".")
    if parts[0] != LIBRARY:
        return None
    return parts[1] if len(parts) > 1 else ""


def upward_imports(path: Path) -> list[str]:
    """Sentences naming each import of `path` that its layer may not make."""
    module = module_name(path)
    own = unit(module)
    problems = []
    for line, target in imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
        where = f"{path.relative_to(ROOT.parent)}:{line}"
        if target.split(".")[0] == "H3DELandmarks":
            problems.append(f"{where} imports the Slicer module ({target})")
            continue
        theirs = unit(target)
        if theirs is None or theirs == own:
            continue
        if own == "":
            problems.append(f"{where}: the package root imports {target}; it only holds the version")
        elif theirs == "__version__" or theirs == "":
            continue
        elif own not in ALLOWED:
            problems.append(f"{where}: {own} is not in the layer table; place it there")
        elif theirs not in ALLOWED[own]:
            problems.append(f"{where}: {own} imports {target}, a layer it may not use "
                            f"(allowed: {', '.join(sorted(ALLOWED[own])) or 'nothing'})")
    return problems


def test_no_module_imports_a_layer_above_it():
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50
    problems = [problem for path in modules for problem in upward_imports(path)]
    assert problems == []


def test_every_unit_of_the_library_is_in_the_table():
    units = {path.stem if path.is_file() else path.name for path in ROOT.iterdir()
             if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()}
    assert units == set(ALLOWED)


def test_the_table_runs_one_way():
    for own, allowed in ALLOWED.items():
        assert own not in allowed
        for other in allowed:
            assert own not in ALLOWED[other], f"{own} and {other} may import each other"


def test_function_local_and_relative_imports_are_seen():
    source = (
        "from ..errors import H3DEError\n"
        "def load():\n"
        "    from ..registry import read_package\n"
        "    import H3DELandmarksLib.cli.main\n"
        "    from .. import registry\n"
    )
    found = imported_modules(source, "H3DELandmarksLib.model.network", is_package=False)
    assert found == [(1, "H3DELandmarksLib.errors"), (3, "H3DELandmarksLib.registry"),
                     (4, "H3DELandmarksLib.cli.main"), (5, "H3DELandmarksLib.registry")]
    assert [unit(name) for _, name in found] == ["errors", "registry", "cli", "registry"]
    assert not {"registry", "cli"} & ALLOWED["model"]
