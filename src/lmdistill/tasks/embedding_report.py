"""The compression report of ``task: embedding`` (``lmdistill compress`` / ``lmdistill report``): every model
searches the same retrieval set (``embedding.retrieval``: title -> body on BBC News' test articles).

- Per model: ``recall@1``, ``recall@5``, ``recall@10`` and ``mrr@10`` (:mod:`lmdistill.tasks.retrieval`), each
  the mean of a per-query value, with a 95% percentile-bootstrap interval over the queries
  (:func:`lmdistill.report.stats.bootstrap_ci`).
- Student against baseline: for each metric, the paired bootstrap interval of the difference over the SAME
  queries (:func:`lmdistill.report.paired.paired_bootstrap_values`) and the verdict "better", "worse" or "not
  distinguishable at 95%" from it (:func:`lmdistill.report.paired.comparison`).
- Agreement with the teacher: the share of queries whose top-ranked document is the teacher's top-ranked one
  (with an interval), and the mean cosine between the model's and the teacher's embeddings of every query
  and document (``teacher_cosine``; when the widths agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmdistill.config.schema import Config
from lmdistill.errors import LmdistillError
from lmdistill.tasks.base import Quality, ReportInputs
from lmdistill.tasks.retrieval import RETRIEVAL_METRICS, RetrievalSet, per_query


@dataclass
class RetrievalQuality(Quality):
    """:class:`~lmdistill.tasks.base.Quality` of a retrieval model: ``pred`` = each query's top-ranked document
    (Q,), ``ranks`` = the rank of its relevant document (Q,), ``embeddings`` = (queries (Q, D), documents (N, D)),
    L2-normalised."""

    ranks: Any = None
    embeddings: Any = None


def report_inputs(cfg: Config) -> ReportInputs:
    """The retrieval set every model searches, and the documents its speed runs encode."""
    from lmdistill.data.rawtext import load_text_frames
    from lmdistill.tasks.embedding_data import retrieval_set

    e = cfg.embedding
    if not e.retrieval:
        raise LmdistillError(
            "report: task embedding searches embedding.retrieval, and it is not set; set it (e.g. bbc-news)"
        )
    frames = load_text_frames(cfg.data, cfg.seed) if e.retrieval == cfg.data.dataset else {}
    rs = retrieval_set(cfg, frames)
    where = f"retrieval on {rs.name}: {len(rs)} queries, {len(rs.documents)} documents"
    note = (
        "Retrieval metrics are means over queries (one relevant document each, ranked by cosine); intervals "
        "resample queries; student vs baseline is a paired bootstrap over the same queries."
    )
    return ReportInputs(rs, rs.documents[: cfg.report.speed_texts], cfg.data.max_length, where, [note])


@torch.no_grad()
def report_quality(model, tokenizer, cfg: Config, inputs: ReportInputs) -> RetrievalQuality:
    """Recall@1/5/10 and MRR@10 with 95% bootstrap intervals over the queries, the top-ranked documents, the
    ranks and the embeddings (for the paired comparison and the agreement with the teacher)."""
    from lmdistill.report.stats import bootstrap_ci
    from lmdistill.tasks.retrieval import ranks_of

    rs: RetrievalSet = inputs.examples
    kw = {"batch_size": cfg.training.eval_batch_size, "max_length": inputs.max_length, "normalize": True}
    q = model.encode(rs.queries, tokenizer, **kw)
    d = model.encode(rs.documents, tokenizer, **kw)
    ranks = ranks_of(q, d, rs.relevant)
    values = per_query(ranks)
    metrics = {}
    for i, name in enumerate(RETRIEVAL_METRICS):
        ci = bootstrap_ci(values[name], n_resamples=cfg.report.bootstrap_resamples, seed=cfg.seed + i)
        metrics[name] = {"value": ci.point, "low": ci.low, "high": ci.high}
    top = (q @ d.T).argmax(-1).numpy()
    ratios = {name: (np.asarray(values[name], float), np.ones(len(ranks))) for name in RETRIEVAL_METRICS}
    return RetrievalQuality(
        metrics, None, top, np.asarray(rs.relevant), ratios=ratios, ranks=ranks, embeddings=(q, d)
    )


def report_compare(
    a: RetrievalQuality, b: RetrievalQuality, keys: tuple[str, str], cfg: Config
) -> list[dict]:
    """For each retrieval metric, ``a - b`` with a paired bootstrap interval over the same queries and its
    verdict (MRR@10 first: the report's headline)."""
    from lmdistill.report.paired import comparison, paired_bootstrap_values

    va, vb = per_query(a.ranks), per_query(b.ranks)
    kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
    order = ["mrr@10"] + [m for m in RETRIEVAL_METRICS if m != "mrr@10"]
    return [
        comparison(
            *keys,
            m,
            paired_bootstrap_values(va[m], vb[m], **kw),
            greater_is_better=True,
            n=len(a.ranks),
            test="paired bootstrap over queries",
        )
        for m in order
    ]


def report_extras(q: RetrievalQuality, teacher: RetrievalQuality | None, cfg: Config) -> dict:
    """Agreement with the teacher: share of queries with the teacher's top document, and ``teacher_cosine``
    (mean cosine of the embeddings of every query and document; when the widths agree), 95% intervals."""
    from lmdistill.report.paired import agreement_ci
    from lmdistill.report.stats import bootstrap_ci

    if teacher is None or teacher is q:
        return {}
    kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
    ci = agreement_ci(q.pred, teacher.pred, **kw)
    out = {"agreement": {"value": ci.point, "low": ci.low, "high": ci.high}}
    mine, theirs = (torch.cat(x) for x in (q.embeddings, teacher.embeddings))
    if mine.shape == theirs.shape:
        cos = torch.nn.functional.cosine_similarity(mine, theirs, dim=-1).numpy()
        ci = bootstrap_ci(cos, **kw)
        out["teacher_cosine"] = {"value": ci.point, "low": ci.low, "high": ci.high}
    return out
