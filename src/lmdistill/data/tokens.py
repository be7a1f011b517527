"""Tagged words for token classification (NER, POS tagging, chunking): files in, aligned word pieces out.

Sources (``data.train`` / ``validation`` / ``test``, or ``data.dataset``):

- CoNLL-style column files (``.conll``, ``.iob``, ``.iob2``, ``.bio``, ``.txt``): one ``WORD ... TAG`` line
  per word (the word is the first column, the tag the LAST), a blank line between sentences; ``-DOCSTART-``
  lines are skipped;
- JSONL / JSON / Parquet tables with a column of word lists (``tokens.tokens_column``) and one of tag lists
  (``tokens.tags_column``); tags are names, or ids into ``data.label_names``;
- a ``datasets`` name with those columns (a ``ClassLabel`` tag column is read as its names), or the built-in
  ``oanc-pos`` (20,000 POS-tagged sentences, :mod:`lmdistill.data.builtin`).

Words are tokenised as given (``is_split_into_words``), so every model sees the same words. Each word's
tag goes to its first word piece; the other pieces get ``-100`` (ignored), or with ``tokens.label_pieces: all``
the word's tag too (a ``B-X`` continues as ``I-X``). Each example also keeps, per word, the position of its
first piece (``-1`` when the word was cut by ``max_length`` or has no piece): predictions are read there,
and with two tokenizers the teacher's and the student's words are matched through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lmdistill.config.schema import DataConfig, TokensConfig
from lmdistill.data.tables import ROW, SOURCE, SPLITS, _carve, numbered, read_table, row_name
from lmdistill.data.text import pad_block
from lmdistill.errors import DataError
from lmdistill.fileio import clip, guard, readable_file, short_list

CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".txt")
IGNORE = -100


@dataclass
class TaggedSentences:
    """One split: sentences as word lists and their tag ids."""

    words: list[list[str]]
    tags: list[list[int]]
    source: str = ""

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class TokenData:
    """Every split, and the tag names (ids index this list)."""

    splits: dict[str, TaggedSentences]
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def is_bio(names: list[str]) -> bool:
    """Whether a tag set is BIO / IOB2 entity tags: every tag ``O``, ``B-X`` or ``I-X``, and some ``B-``."""
    return any(n.startswith("B-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-") for n in names)


# --------------------------------------------------------------------------------------------- reading


def read_conll(path: str | Path, key: str, tcfg: TokensConfig) -> pd.DataFrame:
    """A CoNLL-style column file as a table of word lists and tag lists (the configured column names)."""
    p = readable_file(path, key, "file", DataError)
    with guard(p, key):
        raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{key}: '{p}' is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    sentences, words, tags = [], [], []
    for n, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if len(cols) < 2:
            raise DataError(
                clip(
                    f"{key}: line {n} of '{p}' has a word but no tag ({line.strip()!r}); each line is 'WORD TAG' "
                    "(the tag is the last column), with a blank line between sentences"
                )
            )
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(
            f"{key}: '{p}' holds no tagged words; give 'WORD TAG' lines, a blank line between sentences"
        )
    return pd.DataFrame(
        {tcfg.tokens_column: [s[0] for s in sentences], tcfg.tags_column: [s[1] for s in sentences]}
    )


def read_tagged_file(path: str | Path, key: str, tcfg: TokensConfig) -> pd.DataFrame:
    """A CoNLL file (by its suffix) or a JSONL / JSON / Parquet table."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return read_conll(path, key, tcfg)
    if suffix in (".csv", ".tsv"):
        raise DataError(
            f"{key}: '{path}' is a {suffix[1:].upper()} table, which cannot hold word lists; give a CoNLL file "
            "(WORD TAG lines) or a JSONL file with tokens and tags lists"
        )
    return read_table(path, key)


def _dataset_split(d: DataConfig, tcfg: TokensConfig, split: str, key: str) -> pd.DataFrame:
    """One split of a ``datasets`` name; a ClassLabel tag column becomes its names."""
    import datasets

    try:
        ds = datasets.load_dataset(d.dataset, d.dataset_config, split=split)
    except Exception as e:  # datasets raises many types; all mean "cannot load this name/split"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{key}: cannot load split '{split}' of dataset '{d.dataset}': {first}") from None
    feature = ds.features.get(tcfg.tags_column)
    names = getattr(getattr(feature, "feature", None), "names", None)
    frame = ds.to_pandas()
    if names and tcfg.tags_column in frame.columns:
        frame[tcfg.tags_column] = [[names[int(i)] for i in row] for row in frame[tcfg.tags_column]]
    return frame


def load_tagged_frames(d: DataConfig, tcfg: TokensConfig, seed: int) -> dict[str, pd.DataFrame]:
    """The raw train / validation / test tables (missing splits carved from train with the seed)."""
    from lmdistill.data import builtin

    if d.dataset and d.dataset in builtin.BUILTIN_DATASETS:
        from lmdistill.resources import FetchError

        try:
            frames = {"train": builtin.load_builtin(d.dataset, d.options)}
        except (ValueError, FetchError) as e:
            raise DataError(f"data.dataset '{d.dataset}': {e}") from None
    elif d.dataset:
        given = {s: getattr(d, s) for s in SPLITS}
        given["train"] = given["train"] or "train"
        frames = {s: _dataset_split(d, tcfg, name, f"data.{s}") for s, name in given.items() if name}
    else:
        frames = {s: read_tagged_file(getattr(d, s), f"data.{s}", tcfg) for s in SPLITS if getattr(d, s)}
    return _carve(numbered(frames), d, seed)


def check_tagged_files(d: DataConfig, tcfg: TokensConfig) -> list[str]:
    """Problems of the local files (found, readable, known format, the two columns), each one line."""
    if d.dataset:
        return []
    errors = []
    for split in SPLITS:
        path = getattr(d, split)
        if not path:
            continue
        try:
            frame = read_tagged_file(path, f"data.{split}", tcfg)
        except DataError as e:
            errors.append(str(e))
            continue
        for col_key in ("tokens_column", "tags_column"):
            name = getattr(tcfg, col_key)
            if name not in frame.columns:
                errors.append(
                    f"tokens.{col_key}: column '{name}' not found in the {split} data (columns: "
                    f"{short_list(frame.columns, 12)}; file '{path}'); set tokens.{col_key}"
                )
    return errors


# --------------------------------------------------------------------------------------------- tags -> ids


def _as_list(value, what: str, place: str) -> list:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(
            f"tokens.{what}: {place} holds a {type(value).__name__}, not a list; "
            "each row has a list of words and a list of tags"
        )
    return list(value)


def _tag_name(tag, names: list[str] | None, place: str, word: int) -> str:
    """A tag as its name: an int indexes data.label_names when given."""
    if isinstance(tag, (bool, float)) or not isinstance(tag, (str, int, np.integer)):
        raise DataError(f"tokens.tags_column: tag {tag!r} of {place} (word {word}) is not a name or id")
    if isinstance(tag, (int, np.integer)) and names:
        if not 0 <= int(tag) < len(names):
            raise DataError(
                f"data.label_names: tag id {int(tag)} of {place} (word {word}) is outside "
                f"the {len(names)} names in data.label_names"
            )
        return names[int(tag)]
    return str(tag)


def _rows(df: pd.DataFrame, tcfg: TokensConfig, split: str, names: list[str] | None):
    """``(words, tag names, where the row came from)`` per row, checked: lists of equal, non-zero length."""
    for col_key in ("tokens_column", "tags_column"):
        col = getattr(tcfg, col_key)
        if col not in df.columns:
            raise DataError(
                f"tokens.{col_key}: column '{col}' not found in the {split} data (columns: "
                f"{short_list([c for c in df.columns if c not in (ROW, SOURCE)], 12)}); set tokens.{col_key}"
            )
    out = []
    for row, (w, t) in enumerate(zip(df[tcfg.tokens_column], df[tcfg.tags_column])):
        place = row_name(df, row, split)
        words, tags = _as_list(w, "tokens_column", place), _as_list(t, "tags_column", place)
        if len(words) != len(tags) or not words:
            raise DataError(
                f"tokens: {place} has {len(words)} words and {len(tags)} tags; every "
                "word needs one tag (and a sentence at least one word)"
            )
        out.append(
            ([str(x) for x in words], [_tag_name(x, names, place, j) for j, x in enumerate(tags)], place)
        )
    return out


def build_tagged(frames: dict[str, pd.DataFrame], d: DataConfig, tcfg: TokensConfig) -> TokenData:
    """Tables -> :class:`TokenData`: tag names (``data.label_names``, else the sorted tags of every split, so
    a rare tag that falls only in the test split is a tag the models have, never a failure) and ids; a tag
    outside data.label_names is refused naming its file row and word."""
    given = [str(n) for n in d.label_names] if d.label_names else None
    rows = {}
    for split, df in frames.items():
        limit = d.max_train_examples if split == "train" else d.max_eval_examples
        rows[split] = _rows(df.iloc[:limit] if limit is not None else df, tcfg, split, given)
    names = given or sorted({t for sentences in rows.values() for _, tags, _ in sentences for t in tags})
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, sentences in rows.items():
        ids = []
        for _, tags, place in sentences:
            bad = next((j for j, t in enumerate(tags) if t not in index), None)
            if bad is not None:
                raise DataError(
                    clip(
                        f"data.label_names: tag '{tags[bad]}' of {place} (word {bad}) is not among "
                        f"data.label_names ({short_list(names, 10)}); fix the row or list every tag in data.label_names"
                    )
                )
            ids.append([index[t] for t in tags])
        splits[split] = TaggedSentences([w for w, _, _ in sentences], ids, split)
    if len(names) < 2:
        raise DataError(
            f"tokens.tags_column: the train data has only the tag {names}; tagging needs two or more"
        )
    return TokenData(splits, names)


def load_token_data(d: DataConfig, tcfg: TokensConfig, seed: int) -> TokenData:
    """Read, split and map tagged data as configured."""
    return build_tagged(load_tagged_frames(d, tcfg, seed), d, tcfg)


# --------------------------------------------------------------------------------------------- word pieces


def continuation(label_names: list[str]) -> list[int]:
    """Per tag id, the tag of a word's later pieces under ``label_pieces: all``: ``B-X`` -> ``I-X`` (when
    that tag exists), any other tag itself."""
    index = {n: i for i, n in enumerate(label_names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(label_names)]


def align(
    tokenizer, sentences: TaggedSentences, max_length: int, pieces: str, label_names: list[str]
) -> dict[str, list]:
    """Tokenise words as given: model inputs, per-piece ``labels`` (-100 where ignored) and per word the
    position of its first piece (``words``; -1 when cut by ``max_length`` or without pieces)."""
    enc = tokenizer(sentences.words, is_split_into_words=True, truncation=True, max_length=max_length)
    later = continuation(label_names)
    out = {k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc}
    out["labels"], out["words"] = [], []
    for i, tags in enumerate(sentences.tags):
        word_ids = enc.word_ids(i)
        first = [-1] * len(tags)
        labels = []
        for t, w in enumerate(word_ids):
            if w is None:
                labels.append(IGNORE)
            elif first[w] < 0:
                first[w] = t
                labels.append(tags[w])
            else:
                labels.append(later[tags[w]] if pieces == "all" else IGNORE)
        out["labels"].append(labels)
        out["words"].append(first)
    return out


class TokenDataset(Dataset):
    """Aligned sentences for the student (and the teacher, when its tokenizer differs)."""

    def __init__(self, student: dict[str, list], teacher: dict[str, list] | None = None):
        self.student = student
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.student["input_ids"])

    def __getitem__(self, i: int) -> dict:
        keys = ("input_ids", "token_type_ids")
        item = {
            "index": i,
            "student": {k: self.student[k][i] for k in keys if k in self.student},
            "labels": self.student["labels"][i],
            "student_words": self.student["words"][i],
        }
        if self.teacher is not None:
            item["teacher"] = {k: self.teacher[k][i] for k in keys if k in self.teacher}
            item["teacher_words"] = self.teacher["words"][i]
        return item

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.student["input_ids"]]


def _pad_rows(rows: list[list[int]], length: int, fill: int) -> torch.Tensor:
    return torch.tensor([r + [fill] * (length - len(r)) for r in rows], dtype=torch.long)


class TokenCollator:
    """Batches ``{"student", "teacher"?, "labels" (B, T), "student_words" / "teacher_words" (B, W), "index"}``;
    labels are padded with -100 to the student's length, word positions with -1."""

    def __init__(self, student_pad_id: int, teacher_pad_id: int | None = None, multiple: int = 8):
        self.student_pad_id = student_pad_id
        self.teacher_pad_id = teacher_pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        student = pad_block([it["student"] for it in items], self.student_pad_id, self.multiple)
        words = max(len(it["student_words"]) for it in items)
        batch = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "student": student,
            "labels": _pad_rows([it["labels"] for it in items], student["input_ids"].shape[1], IGNORE),
            "student_words": _pad_rows([it["student_words"] for it in items], words, -1),
        }
        if "teacher" in items[0]:
            batch["teacher"] = pad_block([it["teacher"] for it in items], self.teacher_pad_id, self.multiple)
            batch["teacher_words"] = _pad_rows([it["teacher_words"] for it in items], words, -1)
        return batch
