"""Retrieval evaluation of bi-encoders: recall@k and MRR@10, e.g. BBC News titles -> article bodies.

A :class:`RetrievalSet` is a list of queries, a corpus of unique documents, and for each query the index
of its one relevant document. Queries and documents are embedded by the same encoder and ranked by cosine
similarity (the embeddings are L2-normalised here whatever the encoder does). For a query whose relevant
document has rank ``r`` (1 = best):

- ``recall@k`` (k = 1, 5, 10) = share of queries with ``r <= k`` (one relevant document per query, so also hit@k);
- ``mrr@10`` = mean of ``1 / r`` where ``r <= 10``, else 0 (the MS MARCO cut-off).

The rank is ``1 +`` the number of documents scoring STRICTLY higher than the relevant one (a tie counts for
the query; with float embeddings ties do not happen in practice).

BBC News (:func:`bbc_retrieval_set`): the query is an article's title, the corpus is the bodies (the
``text`` column of ``load_builtin("bbc-news")``, title removed); bodies that occur more than once in the set
are one document, so every query has exactly one relevant document.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from lmdistill.errors import DataError

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10")


@dataclass
class RetrievalSet:
    """Queries, a corpus of unique documents, and each query's relevant document (an index into ``documents``)."""

    queries: list[str]
    documents: list[str]
    relevant: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.queries)


def ranks_of(
    query_emb: torch.Tensor, doc_emb: torch.Tensor, relevant: np.ndarray | torch.Tensor, chunk: int = 1024
) -> np.ndarray:
    """1-based rank of each query's relevant document by cosine similarity: ``(Q, D), (N, D), (Q,) -> (Q,)``."""
    q = torch.nn.functional.normalize(query_emb.float(), dim=-1)
    d = torch.nn.functional.normalize(doc_emb.float(), dim=-1)
    rel = torch.as_tensor(np.asarray(relevant), dtype=torch.long)
    out = []
    for s in range(0, len(q), chunk):
        scores = q[s : s + chunk] @ d.T  # (q, N)
        target = scores.gather(1, rel[s : s + chunk, None])  # (q, 1)
        out.append(1 + (scores > target).sum(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose relevant document is in the top ``k``."""
    return float(np.mean(np.asarray(ranks) <= k)) if len(ranks) else 0.0


def mrr_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Mean reciprocal rank, 0 for a relevant document below rank ``k``."""
    r = np.asarray(ranks, dtype=float)
    return float(np.mean(np.where(r <= k, 1.0 / r, 0.0))) if len(r) else 0.0


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Each query's value of every metric of :data:`RETRIEVAL_METRICS` (their means are the metrics):
    ``recall@k`` 1.0 where ``r <= k`` else 0.0, ``mrr@10`` ``1 / r`` where ``r <= 10`` else 0.0; (Q,) each."""
    r = np.asarray(ranks, dtype=float)
    return {
        "recall@1": (r <= 1).astype(float),
        "recall@5": (r <= 5).astype(float),
        "recall@10": (r <= 10).astype(float),
        "mrr@10": np.where(r <= 10, 1.0 / np.maximum(r, 1.0), 0.0),
    }


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    """``recall@1``, ``recall@5``, ``recall@10`` and ``mrr@10`` of a set of ranks."""
    return {
        "recall@1": recall_at_k(ranks, 1),
        "recall@5": recall_at_k(ranks, 5),
        "recall@10": recall_at_k(ranks, 10),
        "mrr@10": mrr_at_k(ranks, 10),
    }


def make_retrieval_set(
    frame,
    query_column: str,
    document_column: str,
    *,
    max_queries: int | None = None,
    seed: int = 0,
    name: str = "",
    key: str = "embedding.retrieval",
) -> RetrievalSet:
    """Queries and unique documents from two columns of a table (one row = a query and its document).

    Rows with an empty query or document are dropped; identical documents become one. ``max_queries`` keeps
    that many queries drawn with ``seed`` (the corpus keeps every document).
    """
    for col, k in ((query_column, "retrieval_query_column"), (document_column, "retrieval_document_column")):
        if col not in frame.columns:
            raise DataError(
                f"embedding.{k}: column '{col}' not found in {name or key} "
                f"(columns: {', '.join(map(str, frame.columns[:20]))}); set embedding.{k}"
            )
    pairs = [
        (str(q).strip(), str(d).strip())
        for q, d in zip(frame[query_column], frame[document_column])
        if q is not None and d is not None and q == q and d == d and str(q).strip() and str(d).strip()
    ]
    if not pairs:
        raise DataError(
            f"{key}: {name or 'the retrieval data'} holds no row with both a query and a document"
        )
    index: dict[str, int] = {}
    for _, d in pairs:
        index.setdefault(d, len(index))
    if max_queries is not None and max_queries < len(pairs):
        keep = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:max_queries])
        pairs = [pairs[i] for i in keep]
    return RetrievalSet([q for q, _ in pairs], list(index), np.array([index[d] for _, d in pairs]), name)


def bbc_retrieval_set(max_queries: int | None = None, seed: int = 0, frame=None) -> RetrievalSet:
    """BBC News: title -> body (``load_builtin("bbc-news")``, or the given rows of it)."""
    if frame is None:
        from lmdistill.data.builtin import load_builtin

        frame = load_builtin("bbc-news")
    return make_retrieval_set(frame, "title", "text", max_queries=max_queries, seed=seed, name="bbc-news")


@torch.no_grad()
def evaluate_encoder(
    encoder, tokenizer, rs: RetrievalSet, *, batch_size: int = 64, max_length: int = 128
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Retrieval metrics of one encoder, its encoding speed on the documents, and the embeddings.

    ``encoder`` is a :class:`lmdistill.tasks.embedding.SentenceEncoder`. Returns ``(metrics, query_emb,
    doc_emb)``; ``metrics`` has ``recall@1``, ``recall@10``, ``mrr@10``, ``texts_per_second`` (documents
    encoded per second, tokenisation included, at ``max_length``) and ``queries``, ``documents``.
    """
    q = encoder.encode(rs.queries, tokenizer, batch_size=batch_size, max_length=max_length)
    start = time.perf_counter()
    d = encoder.encode(rs.documents, tokenizer, batch_size=batch_size, max_length=max_length)
    seconds = time.perf_counter() - start
    metrics = retrieval_metrics(ranks_of(q, d, rs.relevant))
    metrics.update(
        texts_per_second=len(rs.documents) / max(seconds, 1e-9), queries=len(rs), documents=len(rs.documents)
    )
    return metrics, q, d


def agreement(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Mean cosine between the rows of two embedding matrices (None when their widths differ)."""
    if a.shape != b.shape:
        return None
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def load_retrieval_set(
    data: str = "bbc-news",
    *,
    query_column: str = "title",
    document_column: str = "text",
    max_queries: int | None = None,
    seed: int = 0,
) -> RetrievalSet:
    """A retrieval set from a built-in data set (``bbc-news``: title -> body) or a CSV/JSONL/Parquet file."""
    from lmdistill.data.builtin import BUILTIN_DATASETS, load_builtin
    from lmdistill.data.tables import read_table

    frame = load_builtin(data) if data in BUILTIN_DATASETS else read_table(data, "data")
    return make_retrieval_set(
        frame, query_column, document_column, max_queries=max_queries, seed=seed, name=str(data), key="data"
    )


def evaluate_retrieval(
    model: str,
    *,
    teacher: str | None = None,
    data: str | RetrievalSet = "bbc-news",
    query_column: str = "title",
    document_column: str = "text",
    max_queries: int | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    seed: int = 0,
) -> dict:
    """Retrieval metrics and encoding speed of a saved sentence-embedding model (and of a teacher).

    Returns ``{"set", "queries", "documents", "model": {recall@1, recall@10, mrr@10, texts_per_second,
    teacher_cosine?}, "teacher": {...}?}``; ``teacher_cosine`` is the mean cosine between the model's and
    the teacher's embeddings of every query and document (when their widths agree).
    """
    from lmdistill.models.sentence import SentenceEncoder

    rs = (
        data
        if isinstance(data, RetrievalSet)
        else load_retrieval_set(
            data,
            query_column=query_column,
            document_column=document_column,
            max_queries=max_queries,
            seed=seed,
        )
    )
    out: dict = {"set": rs.name, "queries": len(rs), "documents": len(rs.documents), "max_length": max_length}
    enc, tok = SentenceEncoder.load(model, "model")
    out["model"], *m_emb = evaluate_encoder(enc, tok, rs, batch_size=batch_size, max_length=max_length)
    if teacher is not None:
        t_enc, t_tok = SentenceEncoder.load(teacher, "teacher")
        out["teacher"], *t_emb = evaluate_encoder(
            t_enc, t_tok, rs, batch_size=batch_size, max_length=max_length
        )
        out["model"]["teacher_cosine"] = agreement(torch.cat(m_emb), torch.cat(t_emb))
    return out
