"""Data augmentation for distillation: seeded, label-free copies of training texts for the teacher to score.

The student learns from the teacher's soft labels on these copies (a transfer set), which training
without a teacher cannot use. Every function here is pure and seeded: the caller caches the copies
with the teacher's scores; labels are never touched (a copy carries only its source's index).

Methods (``method=``):

``tang`` (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural
    Networks", sec. 3.3): per word, draw X ~ U[0, 1]; X < p_mask: replace it by the mask token
    (*masking*); p_mask <= X < p_mask + p_pos: replace it by a word of the same part of speech drawn
    from that tag's unigram distribution (*POS-guided replacement*; the two are mutually exclusive).
    Then, with probability p_ng, the whole synthetic example becomes a random n-gram of itself, n
    uniform in {1, ..., ngram_max} (*n-gram sampling*). ``copies`` (the paper's n_iter) per example,
    duplicates discarded.
``mask`` / ``pos`` / ``ngram``: one of the three rules alone, with its own probability (the others 0;
    for ``ngram`` alone, ``p_ng=1`` makes every copy an n-gram).
``embedding`` (Jiao et al. 2020, "TinyBERT", appendix "Data Augmentation Details", Algorithm 1, with
    the teacher's input embeddings in place of GloVe): the candidates of a single-piece word are its ``top_k`` nearest whole words by
    cosine similarity of the teacher's ``get_input_embeddings()`` rows (special tokens, ``##`` pieces,
    non-alphabetic tokens and the word itself excluded); each word with candidates is replaced by a
    uniformly drawn one with probability p_replace (the paper's p_t). Multi-piece words are kept.
``mlm`` (the same Algorithm 1): the candidates of a single-piece word are a masked LM's ``top_k``
    predictions with that word alone masked (whole words other than itself); a word the masked LM
    gives no candidates (several pieces, or past its length limit) uses the embedding neighbours of
    the mean of its pieces' rows in the teacher's vocabulary when ``embeddings`` is given, else is kept.

Defaults, checked against the authors' code (the papers' own texts could not be read here):
castorini/d-bert ``dbert/distill/run/augment_data.py`` (Tang et al.'s code) defaults mask_prob=0.1,
random_prob=0.1 (the POS rule), n_iter=20, window lengths 1..5; its window_prob (p_ng) default is 0,
so p_ng=0.25 is taken from the paper as recalled and as the tacchinotacchi/distil-bilstm
re-implementation sets it (not checked against the paper's text). huawei-noah/Pretrained-Language-Model
``TinyBERT/data_augmentation.py``: M (K) = 15, p (p_t) = 0.4, N (N_a) = 20 for SST-2 and QNLI (its
argparse default 30; 10 for MNLI/QQP, 30 for CoLA, MRPC, STS-B, RTE).
Differences from that code: it keeps the word itself among the MLM candidates, skips stop words,
and feeds the masked sentence paired with the original; here the word itself is never a candidate,
stop words are not skipped, and the masked sentence is fed alone (as Algorithm 1 writes it).

Words: whitespace tokens. Leading and trailing punctuation stays attached and unchanged (``movie,``
masks to ``[MASK],``); only the core (what lies between) is replaced; a token of punctuation only is
never replaced but counts as a word for n-gram sampling. Replacements take the case of the word they
replace (``Movie`` -> ``Film``). Output texts are the words joined by single spaces (line breaks and
repeated spaces of the source are not kept). The POS of a word is its most frequent tag in the lexicon
(no tagger runs); words the lexicon does not know, or whose tag is punctuation, are not replaced.

Determinism: copy ``c`` of text ``i`` depends only on (seed, i, text, c and the earlier copies of text
``i``, the method and its parameters): one ``numpy`` Generator seeded with ``[seed, i]`` per text, so
the result for a text does not depend on the other texts, and ``copies=5`` gives the first copies of
``copies=20`` (before de-duplication).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmdistill.data.lexicon import PosLexicon
from lmdistill.errors import LmdistillError

METHODS = ("tang", "mask", "pos", "ngram", "embedding", "mlm")
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)

__all__ = ["METHODS", "AugmentConfig", "AugmentError", "Augmented", "augment_texts", "split_words"]

Word = tuple[str, str, str]
"""A whitespace token as (leading punctuation, core, trailing punctuation)."""


class AugmentError(LmdistillError):
    """A data-augmentation setting or input that cannot be used (the message names the key)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of :func:`augment_texts`, config keys ``data.augment.<field>``; defaults from the papers.

    Attributes:
        method: one of :data:`METHODS`.
        copies: augmented copies per text (Tang's n_iter, TinyBERT's N_a), >= 1.
        seed: non-negative integer seeding the per-text generators.
        p_mask: probability to mask a word (Tang sec. 3.3), in [0, 1].
        p_pos: probability of a POS-guided replacement (Tang sec. 3.3), in [0, 1]; with method
            ``tang``, p_mask + p_pos <= 1.
        p_ng: probability to cut a copy to an n-gram (Tang sec. 3.3), in [0, 1].
        ngram_max: n is uniform in {1, ..., ngram_max} (Tang: 5), >= 1.
        p_replace: probability to replace a word by a candidate (TinyBERT's p_t), in [0, 1].
        top_k: candidates per word (TinyBERT's K), >= 1.
        batch_size: masked copies per masked-LM forward pass (method ``mlm``), >= 1.
        mask_token: the mask string; default: the tokenizer's mask token, ``[MASK]`` without a tokenizer.
        dedupe: drop copies equal to their source or to an earlier copy of the same source.
    """

    method: str = "tang"
    copies: int = 20
    seed: int = 0
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    ngram_max: int = 5
    p_replace: float = 0.4
    top_k: int = 15
    batch_size: int = 32
    mask_token: str | None = None
    dedupe: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            close = difflib.get_close_matches(str(self.method), METHODS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AugmentError(
                f"data.augment.method: unknown method {self.method!r}{hint}; choose from: {', '.join(METHODS)}"
            )
        for key in ("p_mask", "p_pos", "p_ng", "p_replace"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise AugmentError(f"data.augment.{key} must be a probability in [0, 1], got {value!r}")
        if self.method == "tang" and self.p_mask + self.p_pos > 1.0:
            raise AugmentError(
                f"data.augment.p_mask + data.augment.p_pos must be <= 1 (the rules exclude each other), "
                f"got {self.p_mask} + {self.p_pos}"
            )
        for key in ("copies", "ngram_max", "top_k", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AugmentError(f"data.augment.{key} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise AugmentError(f"data.augment.seed must be a non-negative integer, got {self.seed!r}")
        if self.mask_token is not None and (
            not isinstance(self.mask_token, str) or not self.mask_token.strip()
        ):
            raise AugmentError(f"data.augment.mask_token must be a non-empty string, got {self.mask_token!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentConfig:
        """From a ``data.augment`` mapping; an unknown key is a one-line error with a close match."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise AugmentError(f"data.augment: unknown key {key!r}{hint}; known: {', '.join(names)}")
        return cls(**values)


class Augmented(list):
    """The ``(source index, augmented text)`` pairs, a plain list, with ``counts``: ``sources``,
    ``requested`` (copies x sources), ``kept``, ``unchanged`` (dropped: equal to the source) and
    ``duplicate`` (dropped: equal to an earlier copy of the same source)."""

    counts: dict[str, int]


# ---------------------------------------------------------------------------------------------------
# words


def split_words(text: str) -> list[Word]:
    """Whitespace tokens as (leading punctuation, core, trailing punctuation); ``'(Movie),'`` ->
    ``('(', 'Movie', '),')``. Punctuation is any non-word character (``\\W``)."""
    return [_WORD.match(token).groups() for token in text.split()]


def _split_texts(texts: Sequence[str]) -> list[list[Word]]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise AugmentError(f"data.augment: texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise AugmentError(f"data.augment: text {i} is a {type(text).__name__}, not a string")
    return [split_words(t) for t in texts]


def _match_case(source: str, word: str) -> str:
    """``word`` in the case pattern of ``source``: ALL CAPS (2+ letters), Capitalised, or as given."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# ---------------------------------------------------------------------------------------------------
# one copy


def _tang_copy(
    words: list[Word],
    flat: list[str],
    rng: np.random.Generator,
    p: tuple[float, float, float],
    cfg,
    mask,
    lexicon,
) -> str:
    """Tang et al. 2019 sec. 3.3 on one example: per-word masking / POS replacement, then n-gram.
    ``flat`` holds the words as written."""
    p_mask, p_pos, p_ng = p
    out = list(flat)
    if p_mask > 0 or p_pos > 0:
        rolls = rng.random(len(words))
        for j in np.flatnonzero(rolls < p_mask + p_pos):
            pre, core, suf = words[j]
            if not core:
                continue
            if rolls[j] < p_mask:
                out[j] = pre + mask + suf
            else:
                tag = lexicon.replaceable_tag(core)
                new = lexicon.sample(tag, rng, exclude=core.lower()) if tag is not None else None
                if new is not None:
                    out[j] = pre + _match_case(core, new) + suf
    if p_ng > 0 and out and rng.random() < p_ng:
        n = min(int(rng.integers(1, cfg.ngram_max + 1)), len(out))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start : start + n]
    return " ".join(out)


def _replace_copy(
    words: list[Word], flat: list[str], rng: np.random.Generator, p: float, cands: dict[int, list[str]]
) -> str:
    """TinyBERT Algorithm 1, one copy: each word with candidates is replaced with probability p by a
    uniformly drawn candidate."""
    rolls, picks = rng.random(len(words)), rng.random(len(words))
    out = list(flat)
    for j, options in cands.items():
        if options and rolls[j] < p:
            pre, core, suf = words[j]
            out[j] = pre + _match_case(core, options[int(picks[j] * len(options))]) + suf
    return " ".join(out)


# ---------------------------------------------------------------------------------------------------
# candidates of the TinyBERT methods


def _embedding_cands(texts: list[list[Word]], tokenizer, embeddings, k: int, multi: bool, only=None):
    from lmdistill.data.augment_candidates import WordVocab, embedding_neighbours

    vocab = WordVocab(tokenizer)
    cores = {core for ws in texts for _, core, _ in ws if core.isalpha()}
    table = embedding_neighbours(cores, vocab, embeddings, k, multi_piece=multi)
    out = []
    for t, ws in enumerate(texts):
        skip = only[t] if only is not None else {}
        out.append({j: table[c] for j, (_, c, _) in enumerate(ws) if c in table and j not in skip})
    return out


def _candidates(method: str, texts, cfg: AugmentConfig, tokenizer, embeddings, mlm, mlm_tokenizer):
    """Per text, word index -> replacement candidates (method ``embedding`` or ``mlm``)."""
    if method == "embedding":
        if tokenizer is None or embeddings is None:
            raise AugmentError(
                "data.augment.method 'embedding' needs the teacher's tokenizer= and embeddings= "
                "(its input-embedding matrix, or the model itself)"
            )
        return _embedding_cands(texts, tokenizer, embeddings, cfg.top_k, multi=False)
    from lmdistill.data.augment_candidates import mlm_candidates

    mlm_tok = mlm_tokenizer if mlm_tokenizer is not None else tokenizer
    if mlm is None or mlm_tok is None:
        raise AugmentError(
            "data.augment.method 'mlm' needs mlm= (a masked LM, e.g. BertForMaskedLM) and its tokenizer "
            "(mlm_tokenizer=, or tokenizer= when they share one)"
        )
    cands, _ = mlm_candidates(texts, mlm, mlm_tok, cfg.top_k, batch_size=cfg.batch_size)
    if embeddings is not None:
        if tokenizer is None:
            raise AugmentError("data.augment.method 'mlm' with embeddings= needs the teacher's tokenizer=")
        done = [set(c) for c in cands]
        extra = _embedding_cands(texts, tokenizer, embeddings, cfg.top_k, multi=True, only=done)
        for c, e in zip(cands, extra):
            c.update(e)
    return cands


def _mask_string(cfg: AugmentConfig, tokenizer) -> str:
    if cfg.mask_token is not None:
        return cfg.mask_token
    if tokenizer is None:
        return "[MASK]"
    if getattr(tokenizer, "mask_token", None) is None:
        raise AugmentError(
            f"data.augment.method '{cfg.method}' masks words, but the tokenizer ({type(tokenizer).__name__}) "
            "has no mask token; set data.augment.mask_token or use method 'pos' or 'ngram'"
        )
    return tokenizer.mask_token


# ---------------------------------------------------------------------------------------------------
# entry point


def augment_texts(
    texts: Sequence[str],
    *,
    method: str = "tang",
    copies: int = 20,
    seed: int = 0,
    tokenizer: Any = None,
    lexicon: PosLexicon | None = None,
    embeddings: Any = None,
    mlm: Any = None,
    mlm_tokenizer: Any = None,
    **params: Any,
) -> Augmented:
    """Augmented copies of ``texts`` as ``(source index, text)`` pairs, sources in order.

    Args:
        texts: the source texts (labels stay with the caller; an empty text gives only empty copies).
        method: ``tang``, ``mask``, ``pos``, ``ngram``, ``embedding`` or ``mlm`` (module docstring).
        copies: copies drawn per text (before de-duplication).
        seed: seeds one generator per text with ``[seed, index]``.
        tokenizer: the teacher's tokenizer (its mask token; its vocabulary for ``embedding``).
        lexicon: a :class:`~lmdistill.data.lexicon.PosLexicon` (``tang``, ``pos``), e.g.
            ``load_pos_lexicon()``.
        embeddings: the teacher, its ``nn.Embedding`` or a (vocab, dim) matrix (``embedding``; optional
            fallback for multi-piece words in ``mlm``).
        mlm: a masked LM (``mlm``); ``mlm_tokenizer``: its tokenizer when not ``tokenizer``.
        **params: the other :class:`AugmentConfig` fields (``p_mask``, ``top_k``, ``dedupe`` ...).

    Returns:
        :class:`Augmented`: a list of ``(index, text)`` with ``.counts``.

    Raises:
        AugmentError: an unknown method or key, a value out of range, or a missing input for the method.
    """
    cfg = AugmentConfig.from_dict({"method": method, "copies": copies, "seed": seed, **params})
    words = _split_texts(texts)
    if cfg.method in ("tang", "pos") and lexicon is None:
        raise AugmentError(
            f"data.augment.method '{cfg.method}' needs a POS lexicon: pass "
            "lexicon=lmdistill.data.lexicon.load_pos_lexicon()"
        )
    probs = {
        "tang": (cfg.p_mask, cfg.p_pos, cfg.p_ng),
        "mask": (cfg.p_mask, 0.0, 0.0),
        "pos": (0.0, cfg.p_pos, 0.0),
        "ngram": (0.0, 0.0, cfg.p_ng),
    }.get(cfg.method)
    mask = _mask_string(cfg, tokenizer) if probs is not None and probs[0] > 0 else None
    cands = (
        None
        if probs is not None
        else _candidates(cfg.method, words, cfg, tokenizer, embeddings, mlm, mlm_tokenizer)
    )
    out = Augmented()
    out.counts = {
        "sources": len(texts),
        "requested": cfg.copies * len(texts),
        "kept": 0,
        "unchanged": 0,
        "duplicate": 0,
    }
    for i, ws in enumerate(words):
        rng = np.random.default_rng([cfg.seed, i])
        flat, seen = [pre + core + suf for pre, core, suf in ws], set()
        source = " ".join(flat)
        for _ in range(cfg.copies):
            if probs is not None:
                new = _tang_copy(ws, flat, rng, probs, cfg, mask, lexicon)
            else:
                new = _replace_copy(ws, flat, rng, cfg.p_replace, cands[i])
            if cfg.dedupe and new == source:
                out.counts["unchanged"] += 1
            elif cfg.dedupe and new in seen:
                out.counts["duplicate"] += 1
            else:
                seen.add(new)
                out.append((i, new))
    out.counts["kept"] = len(out)
    return out
