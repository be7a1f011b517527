"""Data of causal LMs: raw text packed into blocks, or prompt/response pairs with no loss on the prompt.

Raw text (``data.text_column``) is tokenised, documents are joined with the EOS token and cut into blocks of
``lm.block_size`` tokens (every token is a target); prompt/response rows (``lm.prompt_column``,
``lm.response_column``) become ``prompt + response + EOS`` with no loss on the prompt. Labels are aligned with
the inputs (``-100``: no loss, on prompts and padding) and shifted inside the objective.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lmdistill.config.schema import Config
from lmdistill.errors import DataError

IGNORE = -100
"""Label of a position without loss (prompt, padding), as in transformers."""


def pad_id_of(tokenizer) -> int:
    """The pad id; EOS for decoder tokenizers without a pad token (padding is masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def text_blocks(tokenizer, texts: list[str], block_size: int) -> list[dict[str, list[int]]]:
    """Documents joined by EOS (after each) and cut into ``block_size`` blocks; every token is a target.

    The last block keeps the remainder (shorter; padded in the batch) when it has at least 2 tokens.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) >= 2]


def prompt_response(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> list[dict]:
    """``prompt + response + EOS`` with labels ``-100`` on the prompt.

    Over ``max_length``: the response keeps at least ``max_length // 2`` tokens (or all of it when shorter)
    and loses its end; the prompt loses its beginning (the tokens nearest the response are kept).
    """
    eos = tokenizer.eos_token_id
    p_ids = tokenizer(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False, verbose=False)["input_ids"]
    items = []
    for p, r in zip(p_ids, r_ids):
        r = r + ([eos] if eos is not None else [])
        p_keep = min(len(p), max_length - min(len(r), max_length // 2))
        p = p[len(p) - p_keep :]
        r = r[: max_length - len(p)]
        items.append({"input_ids": p + r, "labels": [IGNORE] * len(p) + r})
    return items


class LMDataset(Dataset):
    """Token blocks or prompt/response examples: ``{"input_ids": [...], "labels": [...]}`` per item."""

    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, **self.items[i]}

    def lengths(self) -> list[int]:
        return [len(it["input_ids"]) for it in self.items]

    def num_targets(self) -> int:
        """Positions with a loss (each label except a leading one, which no token predicts)."""
        return sum(sum(t != IGNORE for t in it["labels"][1:]) for it in self.items)


class LMCollator:
    """Right-pad to the longest item (rounded up to ``multiple``): ``{"student": {input_ids, attention_mask},
    "labels": (B, T) with -100 on padding, "index"}``."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(it["input_ids"]) for it in items)
        length = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = torch.tensor(it["input_ids"])
            labels[i, :n] = torch.tensor(it["labels"])
            mask[i, :n] = 1
        index = torch.tensor([it.get("index", -1) for it in items], dtype=torch.long)
        return {"student": {"input_ids": ids, "attention_mask": mask}, "labels": labels, "index": index}


def load_documents(cfg: Config) -> dict:
    """Train / validation / test DataFrames: a built-in corpus (``movie-reviews``, ``fortunes``, or joined
    with ``+``), plain text files (:func:`lmdistill.data.rawtext.read_documents`: one document per line, or
    documents separated by blank lines), or anything :func:`lmdistill.data.tables.load_frames` reads (tables,
    `datasets`, built-ins)."""
    import pandas as pd

    from lmdistill.data import corpora
    from lmdistill.data.rawtext import LINE_SUFFIXES, read_documents
    from lmdistill.data.tables import _carve, load_frames
    from lmdistill.resources import FetchError

    d = cfg.data
    if not d.dataset and str(d.train).lower().endswith(LINE_SUFFIXES):
        frames = {
            split: pd.DataFrame({d.text_column: read_documents(getattr(d, split), f"data.{split}")})
            for split in ("train", "validation", "test")
            if getattr(d, split)
        }
        return _carve(frames, d, cfg.seed)
    if not corpora.is_corpus(d.dataset):
        return load_frames(d, cfg.seed)
    if d.options:
        raise DataError(
            f"data.options: the text corpus '{d.dataset}' takes no options, got {dict(d.options)}"
        )
    try:
        frame = corpora.load_corpus(d.dataset)
    except (ValueError, FetchError) as e:
        raise DataError(f"data.dataset '{d.dataset}': {e}") from None
    return _carve({"train": frame}, d, cfg.seed)


def _column(df, name: str, key: str, split: str) -> list[str]:
    if name not in df.columns:
        cols = ", ".join(map(str, df.columns[:20]))
        raise DataError(f"{key}: column '{name}' not found in the {split} data (columns: {cols}); set {key}")
    values = df[name]
    if values.isna().any():
        raise DataError(
            f"{key}: {int(values.isna().sum())} empty value(s) in column '{name}' of the {split} data"
        )
    return [str(v) for v in values.tolist()]


def build_datasets(cfg: Config, tokenizer, splits: tuple[str, ...] | None = None) -> dict[str, LMDataset]:
    """Per split (all, or only ``splits``): text blocks (raw text) or prompt/response examples."""
    d, lm = cfg.data, cfg.lm
    sets = {}
    for split, df in load_documents(cfg).items():
        if splits is not None and split not in splits:
            continue
        limit = d.max_train_examples if split == "train" else d.max_eval_examples
        df = df.iloc[:limit] if limit is not None else df
        if lm.prompt_column:
            prompts = _column(df, lm.prompt_column, "lm.prompt_column", split)
            responses = _column(df, lm.response_column, "lm.response_column", split)
            items = prompt_response(tokenizer, prompts, responses, d.max_length)
        else:
            items = text_blocks(
                tokenizer,
                _column(df, d.text_column, "data.text_column", split),
                lm.block_size or d.block_size or d.max_length,
            )
        if not items:
            raise DataError(f"data.{split}: no example of the {split} split has 2 tokens or more")
        sets[split] = LMDataset(items)
    return sets
