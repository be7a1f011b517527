"""Labelled text tables: local files or `datasets` names in, train / validation / test splits out.

Local CSV, TSV, JSONL (or a JSON list) and Parquet files are read with pandas; anything else in
`data.dataset` goes to :func:`datasets.load_dataset` (hub ids keep working for users with a network),
except the built-in names of :mod:`lmdistill.data.builtin`. Splits that are not given are carved
from the training rows with the run's seed.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lmdistill.config import DataConfig
from lmdistill.errors import DataError
from lmdistill.fileio import guard, readable_file, short_list

SPLITS = ("train", "validation", "test")
_READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass
class Examples:
    """One split: texts (and optional second texts) with labels as ids (classification) or floats."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[float] | list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """All splits of a task plus the label names (empty for regression)."""

    splits: dict[str, Examples]
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1


def read_table(path: str | Path, key: str = "data.train", text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a local table; errors name the config key, the file and what to do. ``text_columns`` of a CSV/TSV
    are read as written (a label ``01`` stays ``01`` instead of becoming the number 1)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{key}: '{p}' is a folder; give a .csv, .tsv, .jsonl or .parquet file")
    p = readable_file(
        p, key, "file", DataError
    )  # missing, a pipe or device (not opened), permission: one line
    kind = _READERS.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"{key}: cannot tell the format of '{p}'; use a .csv, .tsv, .jsonl, .json or .parquet file"
        )
    if kind in ("csv", "tsv", "jsonl", "json"):
        with guard(p, key), p.open("rb") as f:
            head = f.read(4096)
        if b"\x00" in head:
            raise DataError(
                f"{key}: '{p}' is not UTF-8 text (it has NUL bytes: UTF-16?); re-save it as UTF-8"
            )
    try:
        if kind in ("csv", "tsv"):
            # index_col=False: a row with one field too many must not turn its first field into an index;
            # pandas then warns that it drops fields: that is an error here, never a silent loss
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(
                    p,
                    sep="\t" if kind == "tsv" else ",",
                    encoding="utf-8",
                    keep_default_na=False,
                    na_values=[""],
                    index_col=False,
                    dtype=dict.fromkeys(text_columns, str),
                )
        elif kind == "jsonl":
            df = pd.read_json(p, lines=True, encoding="utf-8")
        elif kind == "json":
            df = pd.read_json(p, encoding="utf-8")
        else:
            df = pd.read_parquet(p)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{key}: '{p}' is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    except pd.errors.ParserWarning:
        raise DataError(
            f"{key}: rows of '{p}' have more fields than its header; quote texts that contain the delimiter"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{key}: '{p}' is empty; it needs a header row and at least one example") from None
    except (ValueError, pd.errors.ParserError, OSError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{key}: cannot read '{p}' as {kind.upper()}: {first}") from None
    if len(df) == 0:
        raise DataError(f"{key}: '{p}' has no rows; it needs at least one example")
    if kind in ("csv", "tsv"):
        _check_header(p, kind, key)
    return df


def _check_header(p: Path, kind: str, key: str) -> None:
    """Refuse a header that names a column twice (pandas would rename the second to ``name.1`` silently)."""
    import csv

    with guard(p, key), p.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t" if kind == "tsv" else ","), [])
    names = [h.strip() for h in header]
    twice = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if twice:
        raise DataError(
            f"{key}: the header of '{p}' names column '{twice[0]}' more than once; give each column its own name"
        )


def _load_dataset_split(cfg: DataConfig, split: str, key: str) -> pd.DataFrame:
    """One split of a `datasets` name, as a DataFrame."""
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split)
    except Exception as e:  # datasets raises many types; all mean "cannot load this name/split"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(
            f"{key}: cannot load split '{split}' of dataset '{cfg.dataset}'"
            f"{f' ({cfg.dataset_config})' if cfg.dataset_config else ''}: {first}"
        ) from None
    return ds.to_pandas()


def _builtin():
    from lmdistill.data import builtin

    return builtin


def load_frames(cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """The raw train / validation / test tables (a split is missing when its size is 0)."""
    frames: dict[str, pd.DataFrame] = {}
    builtin = _builtin() if cfg.dataset else None
    if builtin is not None and cfg.dataset in builtin.BUILTIN_DATASETS:
        from lmdistill.resources import FetchError

        try:
            frames["train"] = builtin.load_builtin(cfg.dataset, cfg.options)
        except (ValueError, FetchError) as e:
            raise DataError(f"data.dataset '{cfg.dataset}': {e}") from None
        given = {}
    elif cfg.dataset:
        given = {s: getattr(cfg, s) for s in SPLITS}
        given["train"] = given["train"] or "train"
        frames = {s: _load_dataset_split(cfg, name, f"data.{s}") for s, name in given.items() if name}
    else:
        labels = (cfg.label_column,)  # as written: look-alike labels ('01' vs '1') are then told apart
        frames = {s: read_table(getattr(cfg, s), f"data.{s}", labels) for s in SPLITS if getattr(cfg, s)}
    return _carve(frames, cfg, seed)


ROW, SOURCE = "__row__", "__source__"
"""Columns :func:`numbered` adds: a row's position in the file (or data set split) it was read from, and that
split's name, so that a message about a row of a carved split names the row the user can find."""


def numbered(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each table with its rows' positions and split name (:data:`ROW`, :data:`SOURCE`) before carving."""
    return {s: df.assign(**{ROW: np.arange(len(df)), SOURCE: s}) for s, df in frames.items()}


def row_name(df: pd.DataFrame, row: int, split: str) -> str:
    """How a message names row ``row`` of the ``split`` table: ``row 7 of the train data`` (its position in the
    file it came from, when :func:`numbered` marked it)."""
    if ROW in df.columns:
        return f"row {int(df[ROW].iloc[row])} of the {df[SOURCE].iloc[row]} data"
    return f"row {row} of the {split} data"


def _carve(frames: dict[str, pd.DataFrame], cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Carve missing validation/test splits out of train, reproducibly (``data.split_seed``, else ``seed``)."""
    seed = seed if cfg.split_seed is None else cfg.split_seed
    train = frames["train"]
    want = {s: getattr(cfg, f"{s}_size") for s in ("test", "validation") if s not in frames}
    if not any(want.values()):
        return frames
    order = np.random.default_rng(seed).permutation(len(train))
    start = 0
    for split, frac in want.items():
        n = math.floor(len(train) * frac) if frac else 0
        if frac and n == 0:
            raise DataError(
                f"data.{split}_size={frac} of {len(train)} training rows leaves no {split} rows; "
                f"give a data.{split} file or more training rows"
            )
        if n:
            frames[split] = train.iloc[order[start : start + n]].reset_index(drop=True)
            start += n
    frames["train"] = train.iloc[order[start:]].reset_index(drop=True)
    return frames


def _column(df: pd.DataFrame, name: str, key: str, split: str) -> pd.Series:
    if name not in df.columns:
        cols = ", ".join(map(str, df.columns[:20]))
        raise DataError(
            f"data.{key}: column '{name}' not found in the {split} data (columns: {cols}); set data.{key}"
        )
    return df[name]


def _texts(series: pd.Series, key: str, split: str) -> list[str]:
    bad = [i for i, v in enumerate(series.tolist()) if v is not None and not isinstance(v, (str, float, int))]
    if bad:
        raise DataError(
            f"data.{key}: row {bad[0]} of the {split} data holds a {type(series.iloc[bad[0]]).__name__}, not text; "
            "each text must be a string"
        )
    missing = series.isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(
            f"data.{key}: {int(missing.sum())} empty text(s) in the {split} data (first at row {row}); "
            "remove those rows or fill them"
        )
    return [str(t) for t in series.tolist()]


def build_task_data(frames: dict[str, pd.DataFrame], cfg: DataConfig, kind: str) -> TaskData:
    """Columns -> :class:`Examples`; labels mapped to ids with names (``kind`` classification: class labels) or
    floats (``kind`` regression: numbers)."""
    for split, df in frames.items():
        if len(df) == 0:
            raise DataError(f"data.{split}: the {split} split is empty; it needs at least one example")
    label_names: list[str] = []
    classes = kind == "classification"
    if classes:
        label_names = (
            [str(n) for n in cfg.label_names] if cfg.label_names else _label_names(frames["train"], cfg)
        )
        if not cfg.label_names:  # look-alikes of the training labels in the other splits, named as such
            seen = set(label_names)
            for df in frames.values():
                if cfg.label_column in df.columns:
                    seen |= {_label_key(v) for v in df[cfg.label_column].tolist() if not _is_missing_label(v)}
            _check_look_alikes(seen, cfg.label_column)
    splits = {}
    for split, df in frames.items():
        limit = cfg.max_train_examples if split == "train" else cfg.max_eval_examples
        if limit is not None:
            df = df.iloc[:limit]
        texts = _texts(_column(df, cfg.text_column, "text_column", split), "text_column", split)
        pairs = None
        if cfg.text_pair_column:
            pairs = _texts(
                _column(df, cfg.text_pair_column, "text_pair_column", split), "text_pair_column", split
            )
        raw = _column(df, cfg.label_column, "label_column", split)
        labels = _class_ids(raw, label_names, split) if classes else _floats(raw, split)
        splits[split] = Examples(texts, pairs, labels, source=split)
    return TaskData(splits, label_names)


MISSING_LABELS = {"nan", "NaN", "NAN"}


def _is_missing_label(v) -> bool:
    return (
        v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v in MISSING_LABELS)
    )


def _check_label_types(raw: pd.Series, split: str) -> None:
    for row, v in enumerate(raw.tolist()):
        if not _is_missing_label(v) and not isinstance(v, (str, int, float, np.integer, np.floating, bool)):
            raise DataError(
                f"data.label_column: row {row} of the {split} data holds a {type(v).__name__} as its label; "
                "each label must be one name or number"
            )


_FLOAT_INT = re.compile(r"^-?\d+\.0*$")


def _label_key(v) -> str:
    """Labels compare as text: 1, 1.0, '1' and '1.0' are one label; names stay names (and '01' stays '01', a
    look-alike of '1' that :func:`_check_look_alikes` refuses)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, str) and _FLOAT_INT.match(v.strip()):
        return str(int(float(v)))
    return str(v)


def _label_names(train: pd.DataFrame, cfg: DataConfig) -> list[str]:
    raw = _column(train, cfg.label_column, "label_column", "train")
    _check_label_types(raw, "train")
    missing = [i for i, v in enumerate(raw.tolist()) if _is_missing_label(v)]
    if missing:
        raise DataError(
            f"data.label_column: missing label in the train data at row {missing[0]}; fill or drop it"
        )
    keys = {_label_key(v) for v in raw.tolist()}
    _check_look_alikes(keys, cfg.label_column)
    numeric = all(k.lstrip("-").isdigit() for k in keys)
    values = sorted(keys, key=int) if numeric else sorted(keys)
    if len(values) < 2:
        raise DataError(
            f"data.label_column '{cfg.label_column}' has only one label ({values}) in the train data; "
            "classification needs at least two"
        )
    return values


def _normal(label: str) -> str:
    """A label without case, surrounding or inner whitespace, invisible characters and leading zeros."""
    import unicodedata

    text = "".join(
        c for c in unicodedata.normalize("NFKC", label) if unicodedata.category(c) not in ("Cf", "Cc")
    )
    text = "".join(text.split()).casefold()
    if not text.lstrip("-").isdigit():
        return text
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    return sign + (digits.lstrip("0") or "0")


def _check_look_alikes(keys: set[str], column: str) -> None:
    """Refuse labels that differ only in case, whitespace, invisible characters or leading zeros (almost always
    the same class written twice, which would train as two); data.label_names states the classes when they
    really differ so."""
    seen: dict[str, str] = {}
    for key in sorted(keys):
        other = seen.setdefault(_normal(key), key)
        if other != key:
            raise DataError(
                f"data.label_column '{column}': labels {other!r} and {key!r} differ only in case, whitespace, "
                "invisible characters or leading zeros; make them one label in the data, or list every class in "
                "data.label_names if they are really different"
            )


def _class_ids(raw: pd.Series, names: list[str], split: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    _check_label_types(raw, split)
    ids = []
    for row, v in enumerate(raw.tolist()):
        if _is_missing_label(v):
            raise DataError(
                f"data.label_column: missing label in the {split} data at row {row}; fill or drop it"
            )
        k = _label_key(v)
        if k not in index:
            raise DataError(
                f"data.label_column: label '{k}' in the {split} data (row {row}) is not among the known labels "
                f"{names}; fix the row or list every label in data.label_names"
            )
        ids.append(index[k])
    return ids


def _floats(raw: pd.Series, split: str) -> list[float]:
    _check_label_types(raw, split)
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"data.label_column: regression target '{raw.iloc[row]}' in the {split} data (row {row}) is not a "
            "finite number; fix or drop it"
        )
    return [float(v) for v in values.tolist()]


def load_task_data(cfg: DataConfig, kind: str, seed: int) -> TaskData:
    """Read, split and label labelled text data as configured (``kind``: classification or regression labels)."""
    return build_task_data(load_frames(cfg, seed), cfg, kind)


# --------------------------------------------------------------------------------------------- quick checks


def columns_of(path: str | Path, key: str) -> list[str] | None:
    """The column names of a local table (None: a format without columns, .txt): a Parquet file's schema, the
    other formats through :func:`read_table` (with its checks: encoding, empty file, header, duplicate columns).

    Raises a one-line DataError when the file is missing, unreadable, of an unknown format or broken."""
    from lmdistill.data.rawtext import LINE_SUFFIXES

    p = readable_file(path, key, "file", DataError)
    suffix = p.suffix.lower()
    if suffix in LINE_SUFFIXES:
        return None
    if _READERS.get(suffix) == "parquet":
        import pyarrow.parquet as pq

        try:
            with guard(p, key):
                return list(pq.read_schema(p).names)
        except (ValueError, OSError) as e:
            raise DataError(f"{key}: cannot read '{p}' as PARQUET: {' '.join(str(e).split())[:80]}") from None
    return [str(c) for c in read_table(p, key).columns]


def check_files(cfg: DataConfig, columns: dict[str, str | None], *, lines_ok: bool = False) -> list[str]:
    """Problems of the local data files of ``cfg`` (found, readable, known format, the ``columns`` present:
    config key -> column name), from their headers alone; ``lines_ok``: a .txt file (one text per line) is
    fine. Built-in and ``datasets`` data are checked when they are loaded."""
    if cfg.dataset:
        return []
    errors = []
    for split in SPLITS:
        value = getattr(cfg, split)
        if not value:
            continue
        key = f"data.{split}"
        try:
            found = columns_of(value, key)
        except DataError as e:
            errors.append(str(e))
            continue
        if found is None:
            if not lines_ok:
                errors.append(
                    f"{key}: '{value}' is a plain text file; this task reads a table (.csv, .jsonl, ...)"
                )
            continue
        for col_key, name in columns.items():
            if name and name not in found:
                errors.append(
                    f"{col_key}: column '{name}' not found in the {split} data (columns: {short_list(found, 12)}; "
                    f"file '{value}'); set {col_key}"
                )
    return errors
