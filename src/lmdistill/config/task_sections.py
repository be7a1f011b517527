"""The config sections of single tasks: ``embedding`` (task embedding), ``tokens`` (token classification) and
``qa`` (question answering); re-exported by :mod:`lmdistill.config.schema`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EmbeddingConfig:
    """Sentence-embedding distillation for search (`task: embedding`; docs/embedding.md)."""

    mode: Literal["bi", "cross"] = "bi"
    """bi: the student learns the teacher's sentence embeddings; cross: a cross-encoder teacher's relevance
    scores are distilled into a bi-encoder student with margin-MSE (Hofstaetter et al. 2020)."""
    loss: Literal["mse", "cosine", "margin_mse"] | None = None
    """bi: mse (default; Reimers & Gurevych 2020) or cosine on the pooled embeddings; cross: margin_mse."""
    pooling: Literal["auto", "mean", "cls"] = "auto"
    """auto: the teacher's (sentence-transformers 1_Pooling/config.json in its folder), else mean."""
    normalize: bool | None = None
    """L2-normalise the saved student's embeddings (default: as the teacher's Normalize module)."""
    projection: bool | None = None
    """bi: a learned linear map student width -> teacher width after pooling (default: when widths differ)."""
    similarity: Literal["dot", "cosine"] = "dot"
    """cross: how the student scores a query and a passage."""
    extra_text_columns: list[str] = field(default_factory=list)
    """bi: more text columns to learn from besides data.text_column (e.g. [title])."""
    query_column: str = "query"
    positive_column: str = "positive"
    negative_column: str | None = None
    """cross: the negative passage column (default: another row's positive, drawn with the seed)."""
    retrieval: str | None = None
    """Evaluate retrieval at the end: bbc-news (or another built-in) or a CSV/JSONL/Parquet file; when it is
    data.dataset, only its test split is used."""
    retrieval_query_column: str = "title"
    retrieval_document_column: str = "text"
    retrieval_max_queries: int | None = None


@dataclass
class TokensConfig:
    """Token classification (``task: token_classification``: NER, POS tagging, chunking)."""

    tokens_column: str = "tokens"
    """JSONL / Parquet / `datasets` data: the column of word lists (CoNLL files have one word a line)."""
    tags_column: str = "tags"
    """The column of tag lists (names, or ids into data.label_names / a `datasets` ClassLabel)."""
    label_pieces: Literal["first", "all"] = "first"
    """Which word pieces of a word carry its tag (and its soft target): the first (the others are ignored),
    or all (a B- tag continues as I- on the later pieces). Evaluation reads each word's first piece."""
    metric: Literal["auto", "accuracy", "entity_f1"] = "auto"
    """The headline: token accuracy (per word), or entity-level F1 (BIO/IOB2 spans, exact match,
    micro-averaged); auto: entity_f1 when every tag is O, B-X or I-X, else accuracy."""


@dataclass
class QAConfig:
    """Extractive question answering (``task: question_answering``, SQuAD-style)."""

    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    """SQuAD layout: per row ``{text: [...], answer_start: [...]}`` (empty lists: no answer)."""
    answer_text_column: str | None = None
    """Flat layout instead of answers_column: one answer per row (empty: no answer)..."""
    answer_start_column: str | None = None
    """... and its character offset in the context."""
    stride: int | None = None
    """Tokens shared by consecutive windows of a long context (default: a quarter of data.max_length);
    0: no windows (every question and context must fit in data.max_length)."""
    max_question_length: int = 64
    """Question tokens kept (longer questions are cut)."""
    max_answer_length: int = 30
    """The longest answer span predicted, in tokens."""
    n_best: int = 20
    """Start and end candidates per window in post-processing."""
    allow_no_answer: bool | None = None
    """Predict "no answer" when the CLS score beats the best span (SQuAD 2.0); default: when some answer in the
    data is empty."""
    null_threshold: float = 0.0
    """No answer when CLS start+end score - best span score > this."""
