"""Two tokenizations of one text, aligned: the data side of cross-tokenizer distillation (``lm.cross_tokenizer``).

Both tokenizers see the same text; their fast-tokenizer offset mappings (character offsets) say which
characters each token covers. A *cut* is a character position that no token of one side straddles (a token
of a multi-byte character split into several byte tokens covers the whole character, so no cut falls inside
it); cuts are compared after skipping whitespace (tokenizers differ in whether a leading space belongs to a
token). The positions that are cuts on both sides split the text into the smallest shared *spans*: each span
is one or more consecutive tokens on each side covering the same characters.

One KD pair per span: the student's position before the span's first token and the teacher's position before
its first token both predict the start of the span from the same preceding text. ``exact`` marks a span that
is one token on both sides with the same vocabulary string (a token of both vocabularies).

``lm.cross_tokenizer: uld`` pairs positions as the ULD paper's code does instead (:func:`uld_pairs`): the
i-th predicted target of the student with the i-th of the teacher, truncated to the shorter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100

Pair = tuple[int, int, bool]
"""(student position, teacher position, exact): positions that predict the next token; exact: one shared token."""


def _skip_ws(text: str, p: int) -> int:
    while p < len(text) and text[p].isspace():
        p += 1
    return p


def cuts(offsets: list[tuple[int, int]], text: str) -> dict[int, int]:
    """Character position (whitespace skipped) -> number of tokens before it, for every position that no
    token straddles. ``offsets``: ``(start, end)`` per token, in characters of ``text``, in order."""
    out = {_skip_ws(text, 0): 0}
    for i, (_, end) in enumerate(offsets):
        if i + 1 < len(offsets) and offsets[i + 1][0] < end:
            continue  # the next token starts inside this one (bytes of one character): no cut here
        out[_skip_ws(text, end)] = i + 1  # whitespace-only tokens join the span before them
    return out


def align_spans(
    s_offsets: list[tuple[int, int]], t_offsets: list[tuple[int, int]], text: str
) -> list[tuple[int, int, int, int]]:
    """The smallest shared spans of two tokenizations of ``text``: ``(s_start, s_end, t_start, t_end)`` token
    ranges (end exclusive) that cover the same characters; together they cover every token of both sides.

    A shared cut is kept only when both sides advance past it (no span is empty on one side); the rest of the
    text after the last kept cut forms the last span.
    """
    n_s, n_t = len(s_offsets), len(t_offsets)
    if not n_s or not n_t:
        return []
    cs, ct = cuts(s_offsets, text), cuts(t_offsets, text)
    spans, prev_s, prev_t = [], 0, 0
    for pos in sorted(set(cs) & set(ct)):
        s, t = cs[pos], ct[pos]
        if s > prev_s and t > prev_t:
            spans.append((prev_s, s, prev_t, t))
            prev_s, prev_t = s, t
    if prev_s < n_s or prev_t < n_t:  # a remainder (trailing tokens one side splits differently): one span
        if spans and (prev_s == n_s or prev_t == n_t):
            s0, _, t0, _ = spans.pop()
            spans.append((s0, n_s, t0, n_t))
        else:
            spans.append((prev_s, n_s, prev_t, n_t))
    return spans


def _within(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens that cover a character of ``[start, end)``."""
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


@dataclass
class Rendered:
    """One side's tokenization of an example: ids, labels (``-100``: no loss), character offsets of each token
    in ``text`` ((0, 0) for added special tokens), and the *anchors*: ``(char_start, char_end, target_end)``
    of each piece of text both sides share (a document, a response, an assistant message), ``target_end`` the
    token index where that piece's targets end (after its EOS or end-of-turn tokens)."""

    ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    text: str
    anchors: list[tuple[int, int, int]] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    """Chat: the first token of each target assistant turn (the prompts of generated-data KD end there)."""


def vocab_strings(tokenizer) -> dict[int, str]:
    """Token id -> its vocabulary string."""
    return {i: w for w, i in tokenizer.get_vocab().items()}


Span = tuple[int, int, int, int, bool]
"""(s_start, s_end, t_start, t_end, exact): token ranges (end exclusive) of one shared span."""


def spans_of(s: Rendered, t: Rendered, s_words: dict[int, str], t_words: dict[int, str]) -> list[Span]:
    """The shared spans of an example: per anchor, those of its characters (:func:`align_spans`), then one for
    the tokens after it up to its ``target_end`` (EOS, end-of-turn) when both sides have some."""
    out: list[Span] = []
    for (sa, sb, s_end), (ta, tb, t_end) in zip(s.anchors, t.anchors):
        si, ti = _within(s.offsets, sa, sb), _within(t.offsets, ta, tb)
        rel_s = [(max(s.offsets[i][0], sa) - sa, min(s.offsets[i][1], sb) - sa) for i in si]
        rel_t = [(max(t.offsets[i][0], ta) - ta, min(t.offsets[i][1], tb) - ta) for i in ti]
        found = [
            (si[a], si[b - 1] + 1, ti[c], ti[d - 1] + 1)
            for a, b, c, d in align_spans(rel_s, rel_t, s.text[sa:sb])
        ]
        if si and ti and si[-1] + 1 < s_end and ti[-1] + 1 < t_end:
            found.append((si[-1] + 1, s_end, ti[-1] + 1, t_end))
        for s0, s1, t0, t1 in found:
            single = s1 - s0 == 1 and t1 - t0 == 1
            word = s_words.get(s.ids[s0]) if single else None
            out.append((s0, s1, t0, t1, word is not None and word == t_words.get(t.ids[t0])))
    return out


def span_pairs(spans: list[Span], s_labels: list[int], s_base: int = 0, t_base: int = 0) -> list[Pair]:
    """One KD pair per span whose first student token is a target and has a position before it (on both
    sides) at or after ``s_base`` / ``t_base`` (a block's first tokens); positions relative to the bases."""
    return [
        (s0 - s_base - 1, t0 - t_base - 1, exact)
        for s0, _, t0, _, exact in spans
        if s0 > s_base and t0 > t_base and s_labels[s0 - s_base] != IGNORE
    ]


def uld_pairs(s_labels: list[int], t_labels: list[int]) -> list[Pair]:
    """ULD's alignment (Boizard et al. 2024, their released code): the positions predicting targets on each
    side, in order, paired by index and truncated to the shorter side."""
    s_pos = [p - 1 for p in range(1, len(s_labels)) if s_labels[p] != IGNORE]
    t_pos = [p - 1 for p in range(1, len(t_labels)) if t_labels[p] != IGNORE]
    return [(a, b, False) for a, b in zip(s_pos, t_pos)]


def cross_item(s: Rendered, t: Rendered, mode: str, s_words: dict, t_words: dict) -> dict:
    """A training item with both tokenizations (the teacher's under ``teacher``, as a teacher cache reads it)
    and its KD pairs."""
    if mode == "uld":
        pairs = uld_pairs(s.labels, t.labels)
    else:
        pairs = span_pairs(spans_of(s, t, s_words, t_words), s.labels)
    return {
        "input_ids": s.ids,
        "labels": s.labels,
        "teacher": {"input_ids": t.ids},
        "teacher_labels": t.labels,
        "pairs": pairs,
    }


def pack_blocks(
    s_ids: list[int], t_ids: list[int], spans: list[Span], block_size: int, mode: str
) -> list[dict]:
    """Raw text of both sides (documents joined by their EOS) cut into blocks of at most ``block_size`` student
    tokens, only at span starts (so both sides of a block cover the same characters); every token a target.
    Blocks of fewer than 2 student tokens are dropped."""
    starts = [(sp[0], sp[2]) for sp in spans] + [(len(s_ids), len(t_ids))]
    blocks, k = [], 0
    while k < len(starts) - 1:
        (bs, bt), nxt = starts[k], k + 1
        while nxt + 1 < len(starts) and starts[nxt + 1][0] - bs <= block_size:
            nxt += 1
        es, et = starts[nxt]
        if es - bs > block_size:  # one span longer than a block: cut the student side, drop its pairs
            es = bs + block_size
        ids, tids = s_ids[bs:es], t_ids[bt:et]
        pairs = uld_pairs(ids, tids) if mode == "uld" else span_pairs(spans[k:nxt], ids, bs, bt)
        if len(ids) >= 2:
            item = {"input_ids": ids, "labels": list(ids), "teacher": {"input_ids": tids}}
            blocks.append({**item, "teacher_labels": list(tids), "pairs": pairs})
        k = nxt
    return blocks


def truncate(r: Rendered, length: int) -> Rendered:
    """The first ``length`` tokens (anchors' target ends clipped, turns past the end dropped)."""
    anchors = [(a, b, min(e, length)) for a, b, e in r.anchors]
    turns = [k for k in r.turns if k < length]
    return Rendered(r.ids[:length], r.labels[:length], r.offsets[:length], r.text, anchors, turns)


def drop_front(r: Rendered, n: int) -> Rendered:
    """Without its first ``n`` tokens (a prompt cut from the left); offsets stay in ``text``."""
    anchors = [(a, b, e - n) for a, b, e in r.anchors]
    turns = [k - n for k in r.turns if k >= n]
    return Rendered(r.ids[n:], r.labels[n:], r.offsets[n:], r.text, anchors, turns)


class CrossCollator:
    """Pads both sides (each with its own pad id) and flattens the KD pairs: ``batch["student"]``,
    ``batch["labels"]``, ``batch["teacher"]`` (the teacher's own input ids and mask), ``batch["teacher_labels"]``,
    ``batch["align"] = {"student": (P,), "teacher": (P,), "exact": (P,)}`` (positions flattened over
    ``(B, T_student)`` and ``(B, T_teacher)``), ``batch["index"]``."""

    def __init__(self, student_pad: int, teacher_pad: int, multiple: int = 8):
        from lmdistill.data.lm import LMCollator

        self.student = LMCollator(student_pad, multiple)
        self.teacher = LMCollator(teacher_pad, multiple)

    def __call__(self, items: list[dict]) -> dict:
        batch = self.student(items)
        t = self.teacher(
            [{"input_ids": it["teacher"]["input_ids"], "labels": it["teacher_labels"]} for it in items]
        )
        batch["teacher"], batch["teacher_labels"] = t["student"], t["labels"]
        ts, tt = batch["labels"].shape[1], t["labels"].shape[1]
        flat = [(b * ts + sp, b * tt + tp, ex) for b, it in enumerate(items) for sp, tp, ex in it["pairs"]]
        batch["align"] = {
            "student": torch.tensor([f[0] for f in flat], dtype=torch.long),
            "teacher": torch.tensor([f[1] for f in flat], dtype=torch.long),
            "exact": torch.tensor([f[2] for f in flat], dtype=torch.bool),
        }
        return batch
