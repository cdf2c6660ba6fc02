"""The package's layout: each folder one layer, imports pointing one way, public names that
import in any order."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scperturb_vae"

#: bottom to top: a module may import from its own layer and the ones before it
LAYERS = ("base", "data", "module", "train", "model", "get", "tl", "pl", "pipelines", "bench")
BASE_MODULES = {"errors", "io", "logs", "threads"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "scperturb_vae":
        return None
    if len(parts) == 1:
        return "root"
    return "base" if parts[1] in BASE_MODULES else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of the package in ``path``, function-local ones too."""
    here = list(path.relative_to(PACKAGE.parent).parts[:-1]) if PACKAGE in path.parents else []
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "scperturb_vae" and [a.name for a in node.names] == ["__version__"]:
                continue  # the version string, set by the package root from its metadata
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return [(line, m) for line, m in found if m.startswith("scperturb_vae")]


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_layer():
    stray = [p.relative_to(PACKAGE).as_posix() for p in _modules()
             if p.parent == PACKAGE and p.stem not in BASE_MODULES | {"__init__"}]
    assert not stray, f"modules outside the layer folders: {stray}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS[1:])


def test_imports_point_down_the_layers():
    order = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for path in _modules():
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _layer(".".join(p for p in rel.parts if p != "__init__"))
        if own == "root":
            continue  # the package's lazy entry points
        for line, target in _imports(path):
            layer = _layer(target)
            if layer == "root":
                wrong.append(f"{rel}:{line} imports the package root ({target})")
            elif layer is not None and order[layer] > order[own]:
                wrong.append(f"{rel}:{line} ({own}) imports {target} ({layer})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_layer_check_sees_a_violation(tmp_path):
    """The check above finds a higher layer imported from a lower one (it is not vacuous)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from scperturb_vae.tl.fit import fit\n\ndef f():\n    from scperturb_vae.pl import graph\n")
    assert sorted(_layer(m) for _, m in _imports(bad)) == ["pl", "tl"]


def _fresh_package():
    for name in [m for m in sys.modules if m == "scperturb_vae" or m.startswith("scperturb_vae.")]:
        del sys.modules[name]
    return importlib.import_module("scperturb_vae")


@pytest.mark.parametrize("name", sorted(importlib.import_module("scperturb_vae").__all__))
def test_public_names_import_in_any_order(name):
    """Each public attribute works as the first one touched after ``import scperturb_vae``."""
    saved = {m: sys.modules[m] for m in sys.modules if m == "scperturb_vae" or m.startswith("scperturb_vae.")}
    try:
        sv = _fresh_package()
        assert getattr(sv, name) is not None
        assert name in dir(sv)
    finally:
        for m in [m for m in sys.modules if m == "scperturb_vae" or m.startswith("scperturb_vae.")]:
            del sys.modules[m]
        sys.modules.update(saved)
