"""Extractive question answering data (SQuAD-style): questions, contexts and answer spans in, windows out.

Rows come from local tables or a ``datasets`` name (:func:`lmdistill.data.tables.load_frames`) with a question
column, a context column and either a SQuAD ``answers`` column (``{text: [...], answer_start: [...]}``; empty
lists: no answer, as in SQuAD 2.0) or one answer per row in ``qa.answer_text_column`` /
``qa.answer_start_column``. Every answer must stand at its ``answer_start`` (a character offset) in the context.

A long context is split into windows of ``data.max_length`` tokens (the question, then a part of the context)
that overlap by ``qa.stride`` tokens, as in the transformers question-answering examples; a window that does not
hold the whole answer (and a question with no answer) points its start and end at the CLS token. Each window
keeps the character span of each of its context tokens, so predicted positions map back to the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lmdistill.config.schema import DataConfig, QAConfig
from lmdistill.data.tables import ROW, SOURCE, _carve, load_frames, numbered, row_name
from lmdistill.data.text import pad_block
from lmdistill.errors import DataError
from lmdistill.fileio import clip, short_list


@dataclass
class QAExamples:
    """One split: per question its context and gold answers ``[(text, start character)]`` ([]: no answer)."""

    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]]
    source: str = ""
    rows: list[str] | None = None
    """How messages name each question's row (``row 7 of the train data``: its position in its file)."""

    def __len__(self) -> int:
        return len(self.questions)

    def gold_texts(self, i: int) -> list[str]:
        """The gold answer texts of question ``i`` (``[""]``: no answer)."""
        return [t for t, _ in self.answers[i]] or [""]

    def row(self, i: int) -> str:
        """How a message names question ``i``."""
        return self.rows[i] if self.rows else f"row {i} of the {self.source or 'given'} data"


# --------------------------------------------------------------------------------------------- reading


def _text_column(df: pd.DataFrame, name: str, key: str, split: str) -> list[str]:
    if name not in df.columns:
        raise DataError(
            f"{key}: column '{name}' not found in the {split} data (columns: {short_list(_columns(df), 12)}); "
            f"set {key}"
        )
    values = df[name].tolist()
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise DataError(f"{key}: {row_name(df, bad, split)} has no text in column '{name}'; fill or drop it")
    return values


def _columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in (ROW, SOURCE)]


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v)


def _answers_of(value, key: str, place: str) -> list[tuple[str, int]]:
    """A SQuAD ``answers`` value (a mapping of two parallel lists) as ``[(text, start)]``."""
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise DataError(
            f"{key}: {place} holds {type(value).__name__}, not "
            "{text: [...], answer_start: [...]}; or set qa.answer_text_column and qa.answer_start_column"
        )
    texts, starts = (list(np.asarray(value[k]).tolist()) for k in ("text", "answer_start"))
    if len(texts) != len(starts):
        raise DataError(f"{key}: {place} has {len(texts)} answer texts and {len(starts)} starts")
    return [(str(t), int(s)) for t, s in zip(texts, starts)]


def _answers(df: pd.DataFrame, q: QAConfig, split: str) -> list[list[tuple[str, int]]]:
    if q.answer_text_column:
        for key in ("answer_text_column", "answer_start_column"):
            if getattr(q, key) not in df.columns:
                raise DataError(
                    f"qa.{key}: column '{getattr(q, key)}' not found in the {split} data (columns: "
                    f"{short_list(_columns(df), 12)}); set qa.{key}"
                )
        rows = []
        for row, (t, s) in enumerate(zip(df[q.answer_text_column], df[q.answer_start_column])):
            if _missing(t):
                rows.append([])
                continue
            if _missing(s) or isinstance(s, bool) or float(s) != int(float(s)):
                raise DataError(
                    f"qa.answer_start_column: {row_name(df, row, split)} has answer {str(t)!r} but start "
                    f"{s!r}; give the answer's character offset in the context"
                )
            rows.append([(str(t), int(float(s)))])
        return rows
    if q.answers_column not in df.columns:
        raise DataError(
            f"qa.answers_column: column '{q.answers_column}' not found in the {split} data (columns: "
            f"{short_list(_columns(df), 12)}); set qa.answers_column, or qa.answer_text_column and answer_start_column"
        )
    return [
        _answers_of(v, "qa.answers_column", row_name(df, row, split))
        for row, v in enumerate(df[q.answers_column])
    ]


def qa_examples(df: pd.DataFrame, d: DataConfig, q: QAConfig, split: str) -> QAExamples:
    """A table as :class:`QAExamples`; an answer that is not at its start in its context is refused."""
    limit = d.max_train_examples if split == "train" else d.max_eval_examples
    df = df.iloc[:limit] if limit is not None else df
    questions = _text_column(df, q.question_column, "qa.question_column", split)
    contexts = _text_column(df, q.context_column, "qa.context_column", split)
    answers = _answers(df, q, split)
    key = "qa.answer_start_column" if q.answer_text_column else "qa.answers_column"
    for row, (context, spans) in enumerate(zip(contexts, answers)):
        for text, start in spans:
            if not text or context[start : start + len(text)] != text:
                found = context[max(start, 0) : max(start, 0) + len(text)]
                raise DataError(
                    clip(
                        f"{key}: the answer {text!r} of {row_name(df, row, split)} is not at answer_start {start} "
                        f"of its context (the context has {found!r} there); answer_start is the answer's character "
                        "offset in the context: fix the row"
                    )
                )
    return QAExamples(questions, contexts, answers, split, [row_name(df, i, split) for i in range(len(df))])


def load_qa_data(d: DataConfig, q: QAConfig, seed: int) -> dict[str, QAExamples]:
    """Every split of the configured data as :class:`QAExamples`."""
    raw = load_frames(replace(d, validation_size=0.0, test_size=0.0), seed)  # the rows as given
    frames = _carve(numbered(raw), d, seed)  # what load_frames(d, seed) carves, rows numbered in their file
    for split, df in frames.items():
        if len(df) == 0:
            raise DataError(f"data.{split}: the {split} split is empty; it needs at least one example")
    return {split: qa_examples(df, d, q, split) for split, df in frames.items()}


def allows_no_answer(q: QAConfig, splits: dict[str, QAExamples]) -> bool:
    """``qa.allow_no_answer``, or when not set: whether some question of the data has no answer."""
    if q.allow_no_answer is not None:
        return q.allow_no_answer
    return any(not a for ex in splits.values() for a in ex.answers)


# --------------------------------------------------------------------------------------------- windows


@dataclass
class Windows:
    """Windows of one split: model inputs, the example of each window, each token's character span in the
    context (None outside it), the CLS position and the gold start / end positions."""

    inputs: dict[str, list[list[int]]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]
    cls: list[int]
    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.example)


def _cut_questions(tok, questions: list[str], limit: int) -> list[str]:
    """Questions cut to ``limit`` tokens (at the end of the last kept token)."""
    enc = tok(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [
        q if len(off) <= limit else q[: off[limit - 1][1]] for q, off in zip(questions, enc["offset_mapping"])
    ]


def _check_room(tok, ex: QAExamples, questions: list[str], max_length: int, stride: int, split: str) -> None:
    """Refuse a stride that leaves a window no new context, and with stride 0 a context that needs two windows."""
    specials = tok.num_special_tokens_to_add(pair=True)
    q_len = [len(x) for x in tok(questions, add_special_tokens=False)["input_ids"]]
    c_len = [len(x) for x in tok(ex.contexts, add_special_tokens=False)["input_ids"]]
    for row, (nq, nc) in enumerate(zip(q_len, c_len)):
        room = max_length - specials - nq
        if room < 1 or (stride and stride >= room):
            raise DataError(
                f"qa.stride: {ex.row(row)} leaves {max(room, 0)} context tokens per window "
                f"(data.max_length {max_length} minus the question and {specials} special tokens), not more than "
                f"qa.stride {stride}; lower qa.stride or qa.max_question_length, or raise data.max_length"
            )
        if stride == 0 and nc > room:
            raise DataError(
                f"qa.stride is 0 (no windows) but the context of {ex.row(row)} has {nc} tokens "
                f"and a window holds {room}; set qa.stride above 0 (e.g. {max(1, room // 4)}) or raise data.max_length"
            )


def _gold(offsets, answers: list[tuple[str, int]], cls: int) -> tuple[int, int]:
    """Start / end token of the first answer when the window holds all of it, else the CLS position."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not answers or not inside:
        return cls, cls
    text, s_char = answers[0]
    e_char = s_char + len(text)
    first, last = inside[0], inside[-1]
    if offsets[first][0] > s_char or offsets[last][1] < e_char:
        return cls, cls
    start = next(i for i in reversed(inside) if offsets[i][0] <= s_char)
    end = next(i for i in inside if offsets[i][1] >= e_char)
    return start, end


def make_windows(tok, ex: QAExamples, max_length: int, q: QAConfig, split: str) -> Windows:
    """Tokenise question / context pairs into overlapping windows (``q.stride`` shared tokens; 0: one window
    per example, which must fit)."""
    stride = q.stride or 0
    questions = _cut_questions(tok, ex.questions, q.max_question_length)
    _check_room(tok, ex, questions, max_length, stride, split)
    enc = tok(
        questions,
        ex.contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    example = list(enc["overflow_to_sample_mapping"])
    offsets, cls, starts, ends = [], [], [], []
    for w, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(w)
        off = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], seq)]
        c = ids.index(tok.cls_token_id) if tok.cls_token_id in ids else 0
        s, e = _gold(off, ex.answers[example[w]], c)
        offsets.append(off)
        cls.append(c)
        starts.append(s)
        ends.append(e)
    inputs = {k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc}
    return Windows(inputs, example, offsets, cls, starts, ends)


class WindowDataset(Dataset):
    """Windows as training / evaluation items."""

    def __init__(self, windows: Windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows
        allowed = [o is not None for o in w.offsets[i]]
        allowed[w.cls[i]] = True
        return {
            "index": i,
            "student": {k: v[i] for k, v in w.inputs.items()},
            "start_positions": w.starts[i],
            "end_positions": w.ends[i],
            "context_mask": allowed,
        }

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.windows.inputs["input_ids"]]


class WindowCollator:
    """Batches ``{"student", "start_positions" (B,), "end_positions" (B,), "context_mask" (B, T), "index"}``;
    ``context_mask`` marks the context tokens and the CLS token of each window."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.student_pad_id = pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        student = pad_block([it["student"] for it in items], self.student_pad_id, self.multiple)
        t = student["input_ids"].shape[1]
        mask = [it["context_mask"] + [False] * (t - len(it["context_mask"])) for it in items]
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "student": student,
            "start_positions": torch.tensor([it["start_positions"] for it in items], dtype=torch.long),
            "end_positions": torch.tensor([it["end_positions"] for it in items], dtype=torch.long),
            "context_mask": torch.tensor(mask, dtype=torch.bool),
        }
