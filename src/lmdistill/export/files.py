"""Output folders of lmdistill.export: written whole or not at all, never over files they did not create.

Every exported folder holds ``lmdistill-export.json`` (:data:`MARKER`): the record of how it was made, and
the mark that lets a later export with ``overwrite=True`` replace it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmdistill.errors import ExportError

MARKER = "lmdistill-export.json"
# Root files that are weights or training state: never copied next to an exported graph.
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".onnx_data")
_SKIP = ("training_args", "optimizer", "scheduler", "rng_state", "trainer_state", MARKER)


def check_output(out: Path, overwrite: bool) -> None:
    """ExportError unless ``out`` is absent, empty, or an earlier export (``MARKER``) with ``overwrite``."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; choose another --output")
    if not (out / MARKER).is_file():
        raise ExportError(
            f"{out}: folder exists and holds files lmdistill export did not create (no {MARKER}); "
            "choose an empty or new --output"
        )
    if not overwrite:
        raise ExportError(f"{out}: holds an earlier export; pass overwrite=True (--overwrite) to replace it")


@contextlib.contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to write into; on success it replaces ``out``, on any error it
    is removed and ``out`` is left as it was."""
    out = Path(out)
    check_output(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_side_file(path: Path) -> bool:
    return path.is_file() and path.suffix not in _WEIGHTS and not path.name.startswith(_SKIP)


def _module_folders(src: Path) -> list[str]:
    """Sub-folders a sentence-transformers ``modules.json`` names (``1_Pooling``, ``2_Dense``, ...)."""
    try:
        modules = json.loads((src / "modules.json").read_text())
        return [m["path"] for m in modules if m.get("path") and (src / m["path"]).is_dir()]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer, generation and sentence-transformers files (not the weights) from ``src``
    to ``dst``; sub-folders only where ``modules.json`` names them. Returns the copied names."""
    copied = []
    for path in sorted(src.iterdir()):
        if _is_side_file(path):
            shutil.copy2(path, dst / path.name)
            copied.append(path.name)
    for name in _module_folders(src):
        shutil.copytree(src / name, dst / name)
        copied.append(name + "/")
    return copied


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def read_record(folder: Path) -> dict[str, Any]:
    """The ``lmdistill-export.json`` of an exported folder ({} when there is none)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ExportError(f"{path}: not readable JSON ({e}); export the model again") from None


def versions() -> dict[str, str]:
    """Versions of the libraries that made and run the graph."""
    import importlib.metadata

    found = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
