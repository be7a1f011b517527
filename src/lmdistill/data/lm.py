"""Data of causal LMs: raw text packed into blocks, or prompt/response pairs with no loss on the prompt.

Raw text (``data.text_column``) is tokenised, documents are joined with the EOS token and cut into blocks of
``lm.block_size`` tokens (every token is a target); prompt/response rows (``lm.prompt_column``,
``lm.response_column``) become ``prompt + response + EOS`` with no loss on the prompt; chat rows
(``lm.messages_column``) are rendered with the chat template, the loss on assistant turns
(:mod:`lmdistill.data.chat`). Labels are aligned with the inputs (``-100``: no loss, on prompts and padding)
and shifted inside the objective.

With ``lm.cross_tokenizer`` the training items also carry the teacher's own tokenization of the same text and
the KD pairs between the two (:mod:`lmdistill.data.alignment`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lmdistill.config.schema import Config
from lmdistill.data import alignment as al
from lmdistill.data.alignment import IGNORE, Rendered
from lmdistill.errors import DataError

__all__ = ["IGNORE"]  # IGNORE: the label of a position without loss (prompt, padding), as in transformers


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


def render_text(tokenizer, text: str) -> Rendered:
    """A document's tokens (no special tokens) and its EOS, every token a target, with character offsets."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = list(enc["input_ids"]) + eos
    offsets = [tuple(o) for o in enc["offset_mapping"]] + [(len(text), len(text))] * len(eos)
    return Rendered(ids, list(ids), offsets, text, [(0, len(text), len(ids))])


def cross_text_blocks(s_tok, t_tok, texts: list[str], block_size: int, mode: str) -> list[dict]:
    """:func:`text_blocks` for two tokenizers: the same documents tokenised by each, cut into blocks only where
    both tokenizations split the text (so a block's two sides cover the same characters), with KD pairs."""
    s_words, t_words = al.vocab_strings(s_tok), al.vocab_strings(t_tok)
    s_ids: list[int] = []
    t_ids: list[int] = []
    spans: list[al.Span] = []
    for text in texts:
        rs, rt = render_text(s_tok, text), render_text(t_tok, text)
        for a, b, c, d, e in al.spans_of(rs, rt, s_words, t_words):
            spans.append((a + len(s_ids), b + len(s_ids), c + len(t_ids), d + len(t_ids), e))
        s_ids += rs.ids
        t_ids += rt.ids
    if spans and spans[0][0] + spans[0][2] > 0:  # tokens before the first span: a span of their own
        spans.insert(0, (0, spans[0][0], 0, spans[0][2], False))
    return al.pack_blocks(s_ids, t_ids, spans, block_size, mode)


def render_prompt_response(tokenizer, prompt: str, response: str, max_length: int) -> Rendered:
    """:func:`prompt_response` of one row as a :class:`Rendered` (the response is the shared text)."""
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    r = list(enc["input_ids"]) + eos
    offsets = (
        [(0, 0)] * len(p) + [tuple(o) for o in enc["offset_mapping"]] + [(len(response),) * 2] * len(eos)
    )
    full = Rendered(p + r, [IGNORE] * len(p) + r, offsets, response, [(0, len(response), len(p) + len(r))])
    p_keep = min(len(p), max_length - min(len(r), max_length // 2))
    return al.truncate(al.drop_front(full, len(p) - p_keep), max_length)


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
    "labels": (B, T) with -100 on padding, "index"}``, and ``"turns"`` ``(B, K)`` for chat items."""

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
        batch = {"student": {"input_ids": ids, "attention_mask": mask}, "labels": labels, "index": index}
        if any(it.get("turns") for it in items):  # chat: where each target assistant turn starts, -1 padded
            width = max(len(it.get("turns", ())) for it in items)
            turns = torch.full((len(items), width), -1, dtype=torch.long)
            for i, it in enumerate(items):
                turns[i, : len(it.get("turns", ()))] = torch.tensor(it.get("turns", []), dtype=torch.long)
            batch["turns"] = turns
        return batch


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


def chat_items(
    tokenizer, values: list, cfg: Config, split: str, name: str, teacher=None, teacher_name: str = ""
) -> list[dict]:
    """Chat rows rendered with each tokenizer's own template (:mod:`lmdistill.data.chat`), cut to
    ``data.max_length`` tokens; with ``teacher`` (a tokenizer) also its rendering and the KD pairs."""
    from lmdistill.data.chat import check_template, parse_messages, render_chat

    lm, length = cfg.lm, cfg.data.max_length
    check_template(tokenizer, name)
    if teacher is not None:
        check_template(teacher, teacher_name)
        words = al.vocab_strings(tokenizer), al.vocab_strings(teacher)
    items = []
    for row, value in enumerate(values):
        where = f"data.{split} row {row} ({lm.messages_column})"
        messages = parse_messages(value, where)
        rs = al.truncate(render_chat(tokenizer, messages, lm.train_on, where, name), length)
        if teacher is None:
            items.append({"input_ids": rs.ids, "labels": rs.labels, "turns": rs.turns})
            continue
        rt = al.truncate(render_chat(teacher, messages, lm.train_on, where, teacher_name), length)
        items.append({**al.cross_item(rs, rt, lm.cross_tokenizer, *words), "turns": rs.turns})
    return items


def _examples(cfg: Config, df, split: str, tok, teacher, names: tuple[str, str]) -> list[dict]:
    """The items of one split: chat, prompt/response or text blocks (with the teacher's side when given)."""
    d, lm = cfg.data, cfg.lm
    if lm.messages_column:
        if lm.messages_column not in df.columns:
            _column(df, lm.messages_column, "lm.messages_column", split)  # raises, naming the columns
        return chat_items(tok, df[lm.messages_column].tolist(), cfg, split, names[0], teacher, names[1])
    if lm.prompt_column:
        prompts = _column(df, lm.prompt_column, "lm.prompt_column", split)
        responses = _column(df, lm.response_column, "lm.response_column", split)
        if teacher is None:
            return prompt_response(tok, prompts, responses, d.max_length)
        words = al.vocab_strings(tok), al.vocab_strings(teacher)
        return [
            al.cross_item(
                render_prompt_response(tok, p, r, d.max_length),
                render_prompt_response(teacher, p, r, d.max_length),
                lm.cross_tokenizer,
                *words,
            )
            for p, r in zip(prompts, responses)
        ]
    texts = _column(df, d.text_column, "data.text_column", split)
    size = lm.block_size or d.block_size or d.max_length
    if teacher is None:
        return text_blocks(tok, texts, size)
    return cross_text_blocks(tok, teacher, texts, size, lm.cross_tokenizer)


def build_datasets(
    cfg: Config,
    tokenizer,
    splits: tuple[str, ...] | None = None,
    *,
    teacher_tokenizer=None,
    names: tuple[str, str] = ("student", "teacher"),
) -> dict[str, LMDataset]:
    """Per split (all, or only ``splits``): text blocks (raw text), prompt/response or chat examples. With
    ``teacher_tokenizer`` (``lm.cross_tokenizer``) the training items also carry the teacher's tokenization
    and the KD pairs (held-out splits are the student's alone). ``names``: the tokenizers, for messages."""
    d = cfg.data
    sets = {}
    for split, df in load_documents(cfg).items():
        if splits is not None and split not in splits:
            continue
        limit = d.max_train_examples if split == "train" else d.max_eval_examples
        df = df.iloc[:limit] if limit is not None else df
        teacher = teacher_tokenizer if split == "train" else None
        items = [
            it for it in _examples(cfg, df, split, tokenizer, teacher, names) if len(it["input_ids"]) >= 2
        ]
        if not items:
            raise DataError(f"data.{split}: no example of the {split} split has 2 tokens or more")
        sets[split] = LMDataset(items)
    return sets
