"""Imports run one way, as the package docstring of :mod:`lmdistill` lays out: no module imports from a layer
above its own. Every ``import`` / ``from ... import`` statement of every module (also inside functions) is read
with ``ast``, resolved to an lmdistill module, and placed in its layer by the longest matching prefix."""

from __future__ import annotations

import ast
from pathlib import Path

import lmdistill

SRC = Path(lmdistill.__file__).parent
LAYERS = [
    (
        "lmdistill.errors",
        "lmdistill.fileio",
        "lmdistill.outputs",
        "lmdistill.config",
        "lmdistill.resources",
        "lmdistill.methods",
    ),
    ("lmdistill.data", "lmdistill.models", "lmdistill.losses", "lmdistill.export", "lmdistill.report"),
    ("lmdistill.knowledge",),
    ("lmdistill.signals",),
    ("lmdistill.objective", "lmdistill.mutual"),
    ("lmdistill.checkpoint", "lmdistill.engine"),
    ("lmdistill.tasks",),
    ("lmdistill.run",),
    ("lmdistill.api", "lmdistill.pipeline", "lmdistill.reporting", "lmdistill.chain", "lmdistill.sweeps"),
    ("lmdistill.cli",),
]


def layer_of(module: str) -> int | None:
    """The layer of ``module`` by its longest matching prefix (None: not an lmdistill module)."""
    matches = [
        (len(p), i) for i, ps in enumerate(LAYERS) for p in ps if module == p or module.startswith(p + ".")
    ]
    return max(matches)[1] if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every lmdistill module a source imports (``from a import b``: ``a.b`` when ``b``
    is a module, else ``a``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("lmdistill")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("lmdistill")
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else node.module))
    return found


def upward_imports() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        here = module_name(path)
        mine = layer_of(here)
        for line, target in imports(path.read_text()):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{here}:{line} imports {target} (layer {theirs} above {mine})")
    return found


def test_every_module_has_a_layer():
    modules = [module_name(p) for p in SRC.rglob("*.py")]
    assert [m for m in modules if m != "lmdistill" and layer_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports() == []


def test_no_relative_imports():
    """Relative imports would slip past the check above."""
    relative = [
        f"{module_name(p)}:{n.lineno}"
        for p in SRC.rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.ImportFrom) and n.level
    ]
    assert relative == []


def test_an_upward_import_is_found():
    """The check can fail: an import of a task inside an engine function is seen and is upward."""
    source = "def probe():\n    from lmdistill.tasks import classification\n"
    ((line, target),) = imports(source)
    assert (line, target) == (2, "lmdistill.tasks.classification")
    assert layer_of(target) > layer_of("lmdistill.engine")
