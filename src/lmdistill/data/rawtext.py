"""Raw text for task-agnostic distillation: sources, fixed-length blocks, and dynamic MLM masking.

Sources (``data.train`` / ``data.validation`` / ``data.test``, or ``data.dataset``):

- a local ``.txt`` file: one text per non-blank line;
- a local ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.parquet`` / ``.json`` file: the ``data.text_column`` column;
- a built-in name (``bbc-news``, ``vader``, ...) or a ``datasets`` name (hub id or local dataset folder).

With ``data.streaming: true`` nothing is held in memory: ``.txt`` and ``.jsonl`` files are read line by
line and ``datasets`` names are opened with ``load_dataset(..., streaming=True)``, so corpora larger than
memory work; the run length is then ``training.max_steps``.

Blocks: texts are tokenised on the fly WITHOUT special tokens, concatenated with the separator token between
documents, cut into pieces of ``block_size - n_special`` tokens, and each piece is wrapped with the model's
own special tokens (``[CLS] ... [SEP]`` for BERT, ``<s> ... </s>`` for RoBERTa / MPNet), so every block is
exactly ``data.block_size`` tokens except the corpus's last one (kept, padded at batch time).
(This is ``group_texts`` of the transformers MLM example, with the special tokens per block.)

Masking (:class:`MLMCollator`): BERT's recipe (Devlin et al. 2019, sec. 3.1; DistilBERT keeps it: Sanh et al.
2019, sec. 3, "dynamic masking" as RoBERTa, Liu et al. 2019, sec. 4.1): each batch draws new masks; a
real token is selected with probability ``data.mlm_probability`` (0.15), and a selected token becomes
``[MASK]`` (80 %), a random non-special token (10 %) or stays (10 %). Special tokens and padding are never
selected. Labels are ``-100`` everywhere except the selected positions.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from lmdistill.config import DataConfig
from lmdistill.data.text import pad_block, pad_id
from lmdistill.errors import DataError

LINE_SUFFIXES = (".txt", ".text")
MASK_RATIO, RANDOM_RATIO = 0.8, 0.1
"""Of the selected tokens: 80 % become [MASK], 10 % a random token, 10 % stay (BERT, DistilBERT)."""
SHUFFLE_BUFFER = 2048
"""Blocks held by the streaming shuffle buffer (consecutive blocks of one document are not batched together)."""
DEFAULT_STREAM_EVAL_TEXTS = 200
"""Streaming without ``data.validation``: the first this many texts of the stream (or
``data.max_eval_examples``) are held out for validation and skipped for training."""
_TOKENIZE_CHUNK = 512


# --------------------------------------------------------------------------------------------- sources


def _local_lines(path: Path, key: str) -> Iterator[str]:
    """Non-blank lines of a text file, stripped, read lazily."""
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.strip()
    except UnicodeDecodeError as e:
        raise DataError(
            f"{key}: '{path}' is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None


def read_documents(value: str, key: str) -> list[str]:
    """The documents of a plain text file: one per line, or, when the file has paragraphs (lines that follow
    each other, separated from the next paragraph by a blank line), one per paragraph with its lines joined by
    newlines. Empty files, and files that are not UTF-8 text, get one line naming the file."""
    path = _check_file(value, key)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{key}: '{path}' is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if b.strip()]
    paragraphs = any("\n" in b for b in blocks) and len(blocks) > 1
    docs = blocks if paragraphs else [line.strip() for line in text.splitlines() if line.strip()]
    if not docs:
        raise DataError(f"{key}: '{path}' holds no text")
    return docs


def _local_jsonl(path: Path, column: str, key: str) -> Iterator[str]:
    """The ``column`` of each JSON line, read lazily (blank lines skipped)."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{key}: '{path}' line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or column not in row:
                raise DataError(
                    f"{key}: '{path}' line {lineno} has no '{column}' field; set data.text_column"
                )
            if row[column] is not None and str(row[column]).strip():
                yield str(row[column])


def _check_file(value: str, key: str) -> Path:
    from lmdistill.fileio import readable_file

    return readable_file(value, key, "file", DataError)


def iter_split(cfg: DataConfig, split: str, streaming: bool) -> Iterator[str] | None:
    """The texts of one configured split, lazily; None when the split is not configured.

    Local ``.txt`` / ``.jsonl`` files and (with ``streaming``) ``datasets`` names are never loaded whole.
    """
    value = getattr(cfg, split)
    key = f"data.{split}"
    if cfg.dataset:
        if split != "train" and not value:
            return None
        return _iter_dataset(cfg, value or "train", key, streaming)
    if not value:
        return None
    p = _check_file(value, key)
    if p.suffix.lower() in LINE_SUFFIXES:
        return _local_lines(p, key)
    if p.suffix.lower() == ".jsonl":
        return _local_jsonl(p, cfg.text_column, key)
    from lmdistill.data.tables import read_table

    return _column_texts(read_table(p, key), cfg.text_column, key)


def _column_texts(frame, column: str, where: str, key: str = "data.text_column") -> Iterator[str]:
    if column not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:20]))
        raise DataError(f"{key}: column '{column}' not found in {where} (columns: {cols}); set {key}")
    return (str(t) for t in frame[column].tolist() if t is not None and t == t and str(t).strip())


def named_frame(cfg: DataConfig):
    """The whole table of a built-in data set or text corpus named in ``data.dataset``; None for other names."""
    from lmdistill.data import builtin

    if cfg.dataset in builtin.BUILTIN_DATASETS:
        from lmdistill.data.tables import load_frames

        return load_frames(_whole(cfg), 0)["train"]
    try:  # the raw-text corpora (movie-reviews, fortunes), where this version has them
        from lmdistill.data import corpora
    except ImportError:
        return None
    if corpora.is_corpus(cfg.dataset):
        from lmdistill.resources import FetchError

        try:
            return corpora.load_corpus(cfg.dataset)
        except (ValueError, FetchError) as e:
            raise DataError(f"data.dataset '{cfg.dataset}': {e}") from None
    return None


def _iter_dataset(cfg: DataConfig, split: str, key: str, streaming: bool) -> Iterator[str]:
    frame = named_frame(cfg)
    if frame is not None:  # small tables, cached as Parquet: read whole
        return _column_texts(frame, cfg.text_column, f"data.dataset '{cfg.dataset}'")
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split, streaming=streaming)
    except Exception as e:  # datasets raises many types; all mean "cannot open this name/split"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(f"{key}: cannot open split '{split}' of dataset '{cfg.dataset}': {first}") from None

    def rows() -> Iterator[str]:
        for row in ds:
            if cfg.text_column not in row:
                raise DataError(
                    f"data.text_column: '{cfg.text_column}' is not a column of dataset "
                    f"'{cfg.dataset}' (columns: {', '.join(row)}); set data.text_column"
                )
            text = row[cfg.text_column]
            if text is not None and str(text).strip():
                yield str(text)

    return rows()


def _whole(cfg: DataConfig) -> DataConfig:
    """``cfg`` with no carving: the whole train table."""
    import dataclasses

    return dataclasses.replace(cfg, validation_size=0.0, test_size=0.0, validation=None, test=None)


def load_text_frames(cfg: DataConfig, seed: int):
    """Every configured split as a DataFrame, in memory: given splits as given, missing validation / test
    carved from train (whole rows, with the run's seed, as :func:`lmdistill.data.tables.load_frames` does).
    A ``.txt`` file becomes one ``data.text_column`` column, a row per non-blank line."""
    import pandas as pd

    from lmdistill.data.tables import _carve, load_frames

    named = named_frame(cfg) if cfg.dataset else None
    if named is not None:
        return _carve({"train": named}, cfg, seed)
    if cfg.dataset or Path(cfg.train).suffix.lower() not in LINE_SUFFIXES:
        return load_frames(cfg, seed)
    frames = {
        s: pd.DataFrame({cfg.text_column: list(iter_split(cfg, s, False))})
        for s in ("train", "validation", "test")
        if getattr(cfg, s)
    }
    if len(frames["train"]) == 0:
        raise DataError(f"data.train: '{cfg.train}' holds no text")
    return _carve(frames, cfg, seed)


def split_texts(
    frame, columns: list[str], split: str, limit: int | None, keys: list[str] | None = None
) -> list[str]:
    """The non-empty texts of ``columns`` (column after column) in the first ``limit`` rows of one split;
    ``keys``: the config key that named each column (for errors)."""
    frame = frame.iloc[:limit] if limit is not None else frame
    keys = keys or ["data.text_column"] * len(columns)
    texts = [t for c, k in zip(columns, keys) for t in _column_texts(frame, c, f"data.{split}", k)]
    if not texts:
        raise DataError(
            f"data.{split}: the {split} split holds no non-empty text in column(s) {', '.join(columns)}"
        )
    return texts


def load_text_splits(cfg: DataConfig, seed: int) -> dict[str, list[str]]:
    """All texts of ``data.text_column`` per split (see :func:`load_text_frames`), limited by
    ``data.max_train_examples`` / ``data.max_eval_examples``."""
    frames = load_text_frames(cfg, seed)
    return {
        s: split_texts(
            f, [cfg.text_column], s, cfg.max_train_examples if s == "train" else cfg.max_eval_examples
        )
        for s, f in frames.items()
    }


# --------------------------------------------------------------------------------------------- blocks


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence: BERT ``([CLS], [SEP])``, GPT-2 ``([], [])``."""
    inner = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(inner) + 1):
        if full[i : i + len(inner)] == inner:
            return list(full[:i]), list(full[i + len(inner) :])
    return [], []


def iter_blocks(texts: Iterable[str], tokenizer, block_size: int) -> Iterator[list[int]]:
    """Token-id blocks of ``block_size`` (special tokens included), documents joined by the separator.

    The last, shorter block of the corpus is yielded too (padding is added at batch time).
    """
    head, tail = special_frame(tokenizer)
    inner = block_size - len(head) - len(tail)
    if inner < 1:
        raise DataError(f"data.block_size {block_size} leaves no room for text after the special tokens")
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    buf: list[int] = []
    chunk: list[str] = []
    first = True

    def flush(chunk: list[str]) -> Iterator[list[int]]:
        nonlocal buf, first
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if not ids:
                continue
            if not first and sep is not None:
                buf.append(sep)
            first = False
            buf.extend(ids)
            while len(buf) >= inner:
                yield head + buf[:inner] + tail
                buf = buf[inner:]

    for text in texts:
        chunk.append(text)
        if len(chunk) == _TOKENIZE_CHUNK:
            yield from flush(chunk)
            chunk = []
    if chunk:
        yield from flush(chunk)
    if buf:
        yield head + buf + tail


def shuffled(blocks: Iterable[list[int]], buffer: int, seed: int) -> Iterator[list[int]]:
    """A seeded shuffle buffer over a stream: holds ``buffer`` items, yields a random one as each arrives."""
    rng = random.Random(seed)
    held: list[list[int]] = []
    for b in blocks:
        if len(held) < buffer:
            held.append(b)
            continue
        i = rng.randrange(buffer)
        held[i], b = b, held[i]
        yield b
    rng.shuffle(held)
    yield from held


class BlockDataset(Dataset):
    """Blocks in memory: item ``{"index", "student": {"input_ids"}}``."""

    def __init__(self, blocks: list[list[int]]):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "student": {"input_ids": self.blocks[i]}}

    def lengths(self) -> list[int]:
        return [len(b) for b in self.blocks]


class StreamingBlocks(Dataset):
    """A block stream behind the map-style face the engine's batch sampler needs.

    Item ``i`` is simply the NEXT block of the (shuffle-buffered) stream: the index is ignored, so the order
    is the stream's. ``length`` is the number of blocks the run will draw (``max_steps x batch``); when the
    corpus ends first, it is read again (the next pass reshuffles). ``skip`` blocks are drawn and dropped
    first, so a resumed run continues where the stream was. Use with ``num_workers=0`` (one reader).
    """

    def __init__(self, open_blocks: Callable[[int], Iterator[list[int]]], length: int, skip: int = 0):
        self.open_blocks = open_blocks
        self.length = length
        self.skip = skip
        self._it: Iterator[list[int]] | None = None
        self._pass = 0
        self.drawn = 0

    def __len__(self) -> int:
        return self.length

    def _next(self) -> list[int]:
        for _ in range(2):
            if self._it is None:
                self._it = self.open_blocks(self._pass)
                self._pass += 1
            block = next(self._it, None)
            if block is not None:
                return block
            self._it = None
        raise DataError("data.train: the stream holds no text to make blocks from")

    def __getitem__(self, i: int) -> dict:
        while self.skip:
            self._next()
            self.skip -= 1
        self.drawn += 1
        return {"index": i, "student": {"input_ids": self._next()}}

    known_lengths = False  # lengths() only counts: the blocks are not known before they are drawn

    def lengths(self) -> list[int]:
        return [1] * self.length


# --------------------------------------------------------------------------------------------- collators


class BlockCollator:
    """Pads blocks: ``{"index", "student": {"input_ids", "attention_mask"}}`` (no masking)."""

    def __init__(self, tokenizer, multiple: int = 8):
        self.pad_id = pad_id(tokenizer)
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "student": pad_block([it["student"] for it in items], self.pad_id, self.multiple),
        }


class MLMCollator(BlockCollator):
    """Pads blocks and masks them dynamically; adds ``labels`` ``(B, T)`` (-100 where not selected), outside ``batch["student"]``.

    Each call draws new masks from the collator's own generator (seeded; reseeded per DataLoader worker),
    so the same block is masked differently in every epoch. Never selected: padding and every id in
    ``tokenizer.all_special_ids`` ([CLS], [SEP], [PAD], [MASK], [UNK], ...). Random replacements are drawn
    from the non-special ids of the tokenizer.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0, multiple: int = 8):
        super().__init__(tokenizer, multiple)
        if tokenizer.mask_token_id is None:
            raise DataError(
                "task mlm: the tokenizer has no mask token; use a masked-LM tokenizer (BERT, RoBERTa, ...)"
            )
        if not 0.0 < mlm_probability < 1.0:
            raise DataError(f"data.mlm_probability must be between 0 and 1, got {mlm_probability}")
        self.mlm_probability = mlm_probability
        self.mask_id = tokenizer.mask_token_id
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        ids = torch.arange(len(tokenizer))
        self.replacements = ids[~torch.isin(ids, self.special)]
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker = None

    def _gen(self) -> torch.Generator:
        info = get_worker_info()
        if info is not None and self._worker != info.id:  # each worker its own masks
            self._worker = info.id
            self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + info.id + 1)
        return self.generator

    def mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked ids, labels)`` for a padded batch ``(B, T)``."""
        g = generator or self._gen()
        selectable = attention_mask.bool() & ~torch.isin(input_ids, self.special)
        selected = selectable & (torch.rand(input_ids.shape, generator=g) < self.mlm_probability)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        action = torch.rand(input_ids.shape, generator=g)
        to_mask = selected & (action < MASK_RATIO)
        to_random = selected & (action >= MASK_RATIO) & (action < MASK_RATIO + RANDOM_RATIO)
        out = input_ids.clone()
        out[to_mask] = self.mask_id
        picks = torch.randint(len(self.replacements), (int(to_random.sum()),), generator=g)
        out[to_random] = self.replacements[picks]
        return out, labels

    def __call__(self, items: list[dict]) -> dict:
        batch = super().__call__(items)
        ids, labels = self.mask(batch["student"]["input_ids"], batch["student"]["attention_mask"])
        batch["student"]["input_ids"] = ids
        batch["labels"] = labels
        return batch
