"""Replacement candidates for TinyBERT-style augmentation (Jiao et al. 2020, appendix, Algorithm 1).

Two sources, both deterministic (no randomness here: :mod:`lmdistill.data.augment` samples from them):

* :func:`embedding_neighbours`: the K whole-word vocabulary entries nearest (cosine) to a word in an
  input-embedding matrix (the teacher's ``get_input_embeddings()``), standing in for the paper's
  GloVe neighbours.
* :func:`mlm_candidates`: a masked LM's K most likely whole words at each single-piece word of a text,
  the word masked alone (one masked copy of the text per word, the copies batched).

A *whole word* entry of a vocabulary (:class:`WordVocab`) is a token that is not special, not a
continuation piece, and alphabetic once its word-start marker is removed: WordPiece tokens without
``##`` (BERT, MiniLM, MPNet), byte-level BPE tokens starting with ``Ġ`` (GPT-2, RoBERTa), SentencePiece
tokens starting with ``▁``, or any token of a word-level vocabulary. A word is *single-piece* when the
tokenizer encodes it as one whole-word entry (byte-level BPE: encoded with a leading space, as a word
inside a sentence). Candidates never include the word itself (same id, or same spelling ignoring case).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lmdistill.data.augment import AugmentError, Word


class WordVocab:
    """The whole-word entries of a tokenizer's vocabulary and how to encode a word with it."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        n = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(tokenizer.all_special_ids)
        if any(t and t.startswith("##") for t in tokens):
            self.style = "wordpiece"
        else:
            self.style = next((m for m in ("Ġ", "▁") if any(t and t.startswith(m) for t in tokens)), "word")
        self.eligible = np.zeros(n, dtype=bool)
        self.surface = [""] * n
        for i, tok in enumerate(tokens):
            if not tok or i in special:
                continue
            if self.style == "wordpiece":
                s = "" if tok.startswith("##") else tok
            elif self.style in ("Ġ", "▁"):
                s = tok[1:] if tok.startswith(self.style) else ""
            else:
                s = tok
            if s.isalpha():
                self.eligible[i], self.surface[i] = True, s
        self._cache: dict[str, list[int]] = {}

    def form(self, text: str, word_start: bool = True) -> str:
        """``text`` as the tokenizer sees a word inside a sentence (byte-level BPE: a leading space)."""
        return " " + text if word_start and self.style == "Ġ" else text

    def encode(self, texts: Iterable[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (one batched tokenizer call, memoised)."""
        texts = list(texts)
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            ids = self.tokenizer(todo, add_special_tokens=False)["input_ids"]
            self._cache.update(zip(todo, ids))
        return [self._cache[t] for t in texts]

    def single_piece(self, ids: Sequence[int]) -> int | None:
        """The id when ``ids`` is one whole-word entry, else None."""
        return ids[0] if len(ids) == 1 and ids[0] < len(self.eligible) and self.eligible[ids[0]] else None

    def excluded(self, word_id: int | None, word: str) -> list[int]:
        """Ids never offered as a candidate for ``word``: itself and entries spelled like it (any case)."""
        low = word.lower()
        out = [i for i in self._by_lower().get(low, [])]
        if word_id is not None and word_id not in out:
            out.append(word_id)
        return out

    def _by_lower(self) -> dict[str, list[int]]:
        if not hasattr(self, "_lower"):
            self._lower: dict[str, list[int]] = {}
            for i in np.flatnonzero(self.eligible):
                self._lower.setdefault(self.surface[i].lower(), []).append(int(i))
        return self._lower


# ---------------------------------------------------------------------------------------------------
# embedding neighbours


def embedding_matrix(embeddings: Any) -> torch.Tensor:
    """(V, d) float32 rows from a tensor, an array, an ``nn.Embedding`` or a model with
    ``get_input_embeddings()``."""
    if hasattr(embeddings, "get_input_embeddings"):
        embeddings = embeddings.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Module) and isinstance(
        getattr(embeddings, "weight", None), torch.Tensor
    ):
        embeddings = embeddings.weight
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(embeddings)
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise AugmentError(
            f"data.augment: embeddings must be a (vocab, dim) matrix, an nn.Embedding or a model with "
            f"get_input_embeddings(), got {type(embeddings).__name__}"
        )
    return embeddings.detach().float()


def embedding_neighbours(
    words: Iterable[str],
    vocab: WordVocab,
    embeddings: Any,
    k: int,
    *,
    multi_piece: bool = False,
    chunk: int = 1024,
) -> dict[str, list[str]]:
    """Word -> its ``k`` nearest whole-word entries by cosine similarity of input-embedding rows.

    The query of a single-piece word is its own row; with ``multi_piece``, a word of several pieces
    (none of them unknown) is queried by the mean of its pieces' rows, else it gets no entry. Ties are
    broken by the lower token id. Rows past the tokenizer's vocabulary (padding rows) are ignored.
    Words without a query are absent from the result.
    """
    emb = embedding_matrix(embeddings)
    n = min(emb.shape[0], len(vocab.eligible))
    cand = np.flatnonzero(vocab.eligible[:n])
    unique = sorted(set(words))
    queries, keep = [], []
    unk = vocab.tokenizer.unk_token_id
    for word, ids in zip(unique, vocab.encode(vocab.form(w) for w in unique)):
        single = vocab.single_piece(ids)
        if single is not None or (multi_piece and len(ids) > 1 and all(i < n and i != unk for i in ids)):
            queries.append([single] if single is not None else list(ids))
            keep.append(word)
    if not keep or len(cand) == 0:
        return {}
    cand_t = torch.as_tensor(cand, device=emb.device)
    table = torch.nn.functional.normalize(emb[cand_t], dim=1)  # (C, d)
    position = {int(i): p for p, i in enumerate(cand)}
    out: dict[str, list[str]] = {}
    for start in range(0, len(keep), chunk):
        rows = [emb[torch.as_tensor(q, device=emb.device)].mean(0) for q in queries[start : start + chunk]]
        sims = torch.nn.functional.normalize(torch.stack(rows), dim=1) @ table.T  # (B, C)
        for b, word in enumerate(keep[start : start + chunk]):
            own = queries[start + b][0] if len(queries[start + b]) == 1 else None
            drop = [position[i] for i in vocab.excluded(own, word) if i in position]
            if drop:
                sims[b, drop] = -float("inf")
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k].cpu().numpy()
        ranked = torch.gather(sims, 1, torch.as_tensor(order, device=sims.device)).cpu().numpy()
        for b, word in enumerate(keep[start : start + chunk]):
            out[word] = [vocab.surface[cand[j]] for j, s in zip(order[b], ranked[b]) if s > -float("inf")]
    return out


# ---------------------------------------------------------------------------------------------------
# masked-LM candidates


def _special_frame(vocab: WordVocab) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the text that the tokenizer adds (e.g. [CLS] ... [SEP])."""
    probe = next((vocab.surface[i] for i in np.flatnonzero(vocab.eligible)), None)
    if probe is None:
        return [], []
    plain = vocab.encode([vocab.form(probe)])[0]
    full = vocab.tokenizer(vocab.form(probe))["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _mask_rows(
    texts: Sequence[Sequence[Word]], vocab: WordVocab, max_length: int
) -> tuple[list[list[int]], list[tuple[int, int, int, int]]]:
    """Every text's ids, and one row spec (text, word, position, own id) per maskable word."""
    pieces = vocab.encode(
        s
        for words in texts
        for pre, core, suf in words
        for s in (vocab.form(pre), vocab.form(core, not pre), suf)
    )
    head, tail = _special_frame(vocab)
    room = max_length - len(head) - len(tail)
    seqs, rows, it = [], [], iter(pieces)
    for t, words in enumerate(texts):
        ids = list(head)
        for j, (pre, core, suf) in enumerate(words):
            pre_ids, core_ids, suf_ids = next(it), next(it), next(it)
            pre_ids, core_ids, suf_ids = (
                (pre_ids if pre else []),
                (core_ids if core else []),
                suf_ids if suf else [],
            )
            ids += pre_ids
            own = vocab.single_piece(core_ids) if core.isalpha() else None
            if own is not None and len(ids) - len(head) < room:
                rows.append((t, j, len(ids), own))
            ids += core_ids + suf_ids
        seqs.append(ids[: len(head) + room] + list(tail))
    return seqs, rows


@torch.inference_mode()
def mlm_candidates(
    texts: Sequence[Sequence[Word]],
    model: Any,
    tokenizer: Any,
    k: int,
    *,
    batch_size: int = 32,
) -> tuple[list[dict[int, list[str]]], WordVocab]:
    """Per text, word index -> the masked LM's ``k`` most likely whole words at that word.

    Each single-piece alphabetic word is replaced by the mask token alone (Algorithm 1, line
    "X_masked[i] <- [MASK]"), the masked copies run through ``model`` in batches of ``batch_size``
    (longest first, right-padded), and the logits at the masked position, restricted to whole-word
    entries other than the word itself, give the top ``k`` (ties: lower id). Text beyond the model's
    length limit is truncated; its words get no candidates. The model is run in eval mode (restored
    afterwards) on its own device. Also returns the :class:`WordVocab` of ``tokenizer``.
    """
    vocab = WordVocab(tokenizer)
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise AugmentError(
            f"data.augment.method 'mlm': the masked LM's tokenizer ({type(tokenizer).__name__}) has no "
            "mask token; pass a masked LM with its own tokenizer as mlm_tokenizer"
        )
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits.append(getattr(tokenizer, "model_max_length", None))
    max_length = min(int(v) for v in limits if isinstance(v, int) and v > 0) if any(limits) else 512
    seqs, rows = _mask_rows(texts, vocab, max_length)
    out: list[dict[int, list[str]]] = [{} for _ in texts]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda r: (-len(seqs[rows[r][0]]), r))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            width = max(len(seqs[t]) for t, *_ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (t, _, pos, _) in enumerate(batch):
                ids[b, : len(seqs[t])] = torch.as_tensor(seqs[t])
                attn[b, : len(seqs[t])] = 1
                ids[b, pos] = mask_id
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # (B, T, V)
            at = logits[
                torch.arange(len(batch)), torch.as_tensor([p for _, _, p, _ in batch])
            ].float()  # (B, V)
            _top_words(at, batch, texts, vocab, k, out)
    finally:
        model.train(was_training)
    return out, vocab


def _top_words(at: torch.Tensor, batch, texts, vocab: WordVocab, k: int, out) -> None:
    """Fill ``out[text][word]`` with the top-k whole words of each row of ``at`` (B, V)."""
    allowed = np.zeros(at.shape[1], dtype=bool)
    m = min(at.shape[1], len(vocab.eligible))
    allowed[:m] = vocab.eligible[:m]
    at[:, torch.as_tensor(~allowed, device=at.device)] = -float("inf")
    for b, (t, j, _, own) in enumerate(batch):
        drop = [i for i in vocab.excluded(own, texts[t][j][1]) if i < at.shape[1]]
        at[b, drop] = -float("inf")
    order = torch.sort(at, dim=1, descending=True, stable=True).indices[:, :k].cpu().numpy()
    for b, (t, j, _, _) in enumerate(batch):
        out[t][j] = [vocab.surface[i] for i in order[b] if allowed[i] and at[b, i] > -float("inf")]
