"""The leaderboard of a sweep: every finished run scored on its test split, the variants compared with the
reference (paired over seeds and test examples), their size and batch-1 latency (:mod:`lmdistill.sweeps`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lmdistill.errors import LmdistillError
from lmdistill.fileio import clip, write_text
from lmdistill.sweeps import Job, Plan, override_items
from lmdistill.tasks import get_task

# --------------------------------------------------------------------------------------------- scoring


def columns_of(quality, metric: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Per-example columns of a model's test outputs for the paired comparison of ``metric``, and their kind:
    ``metric`` (gold and pred, for a metric of :data:`~lmdistill.report.stats.PAIRED_METRICS`), ``perplexity``
    / ``loss`` (per-sequence NLL sums and token counts) or ``ratio`` (per-example numerators and denominators of
    a metric that is sum / sum: entity F1, QA F1 / exact match, retrieval recall / MRR, from ``quality.ratios``);
    (None, None) when the task gives none."""
    from lmdistill.report.stats import PAIRED_METRICS

    if (
        quality.pred is not None
        and quality.gold is not None
        and metric in PAIRED_METRICS
        and np.ndim(quality.pred) == 1
    ):
        return {"gold": np.asarray(quality.gold), "pred": np.asarray(quality.pred)}, "metric"
    if quality.nll is not None and metric in ("perplexity", "loss"):
        return {"num": np.asarray(quality.nll[0], float), "den": np.asarray(quality.nll[1], float)}, metric
    ratios = getattr(quality, "ratios", None) or {}
    if metric in ratios:
        num, den = ratios[metric]
        return {"num": np.asarray(num, float), "den": np.asarray(den, float)}, "ratio"
    return None, None


def statistic(kind: str, metric: str):
    """The statistic of columns (B, n) -> (B,) for a kind of :func:`columns_of`."""
    from lmdistill.report.stats import PAIRED_METRICS

    if kind == "metric":
        fn = PAIRED_METRICS[metric]
        return lambda c: fn(c["gold"], c["pred"])
    ratio = lambda c: c["num"].sum(-1) / c["den"].sum(-1)  # noqa: E731
    return (lambda c: np.exp(ratio(c))) if kind == "perplexity" else ratio


def _examples_id(inputs, columns: dict | None, kind: str | None) -> str:
    """A fingerprint of the test examples (their texts, gold labels, token counts; for a ``ratio`` their number,
    its denominators may depend on the model), to know whether two runs were scored on the same examples (a
    split carved by the seed differs from seed to seed)."""
    h = hashlib.sha256()
    texts = getattr(inputs.examples, "texts", None)
    h.update(json.dumps(list(texts) if texts is not None else None, default=str).encode())
    if columns is not None and kind == "ratio":  # the speed texts (the first test texts), the set, its size
        h.update(
            json.dumps([list(inputs.texts), inputs.evaluation, len(columns["num"])], default=str).encode()
        )
    for key in ("gold", "den") if kind != "ratio" else ():
        if columns is not None and key in columns:
            h.update(key.encode() + np.ascontiguousarray(columns[key]).tobytes())
    return h.hexdigest()[:16]


def score(job: Job, metric: str, inputs_cache: dict) -> dict:
    """The test outputs of a finished run's model (reused from its .scores.json while its results.json is older)."""
    results = job.folder / "results.json"
    if job.scores.is_file() and job.scores.stat().st_mtime >= results.stat().st_mtime:
        saved = json.loads(job.scores.read_text())
        if saved.get("metric") == metric:
            return saved
    task = get_task(job.cfg.task)
    out: dict[str, Any] = {"metric": metric, "kind": None, "columns": None}
    try:
        key = json.dumps([job.cfg.task, job.seed, job.cfg.data.__dict__], default=str)
        if key not in inputs_cache:
            inputs_cache[key] = task.report_inputs(job.cfg)
        inputs = inputs_cache[key]
        model, tok = task.load_saved(job.folder / "model")
        q = task.report_quality(model, tok, job.cfg, inputs)
    except (LmdistillError, OSError, ValueError, RuntimeError) as e:  # the run stays; its row says why
        out["note"] = clip(f"not scored: {e}")
    else:
        cols, kind = columns_of(q, metric)
        value = q.metrics.get(metric, {})
        out.update(kind=kind, examples=_examples_id(inputs, cols, kind), value=value.get("value"), low=value.get("low"),
                   high=value.get("high"), columns={k: v.tolist() for k, v in cols.items()} if cols else None)  # fmt: skip
    if out.get("value") is None:
        out["value"] = json.loads(results.read_text()).get("test", {}).get(metric)
    write_text(job.scores, json.dumps(out), "output_dir")
    return out


# --------------------------------------------------------------------------------------------- the leaderboard


def _metric(p: Plan) -> tuple[str, bool]:
    from lmdistill.tasks.metrics import GREATER_IS_BETTER

    task = get_task(p.task)
    metric = p.sweep.metric or task.report_metric or task.primary_metric
    return metric, task.metrics.get(metric, GREATER_IS_BETTER.get(metric, True))


def _compare(p: Plan, scores: dict, variant: str, metric: str, up: bool, against: str | None = None) -> dict:
    """The paired difference of ``variant`` to ``against`` (default: the reference) over the seeds both finished:
    two-level bootstrap interval, permutation p-value and the verdict (``up``: greater is better); or a note why
    there is none."""
    from lmdistill.report.paired import verdict
    from lmdistill.report.seeds import seed_example_permutation, seed_example_sets_bootstrap

    against = against or p.reference
    pairs = [(scores[(variant, s)], scores[(against, s)]) for s in p.seeds
             if (variant, s) in scores and (against, s) in scores]  # fmt: skip
    if not pairs:
        return {"diff_note": "n/a: no seed finished for both"}
    kinds = {x.get("kind") for pair in pairs for x in pair}
    if None in kinds or len(kinds) != 1:
        return {"diff_note": "n/a: no per-example scores for this metric"}
    if any(a["examples"] != b["examples"] for a, b in pairs):
        return {"diff_note": f"n/a: other test examples than {against}'s"}
    stat = statistic(kinds.pop(), metric)
    a = [{k: np.asarray(v) for k, v in x["columns"].items()} for x, _ in pairs]
    b = [{k: np.asarray(v) for k, v in y["columns"].items()} for _, y in pairs]
    same = len({x["examples"] for x, _ in pairs}) == 1
    n = p.sweep.bootstrap_resamples
    ci = seed_example_sets_bootstrap(stat, a, b, same_examples=same, n_resamples=n, seed=0)
    pv = seed_example_permutation(stat, a, b, n_resamples=n, seed=0)
    return {
        "diff": ci.point,
        "diff_low": ci.low,
        "diff_high": ci.high,
        "p_value": pv,
        "paired_seeds": len(pairs),
        "verdict": verdict({"low": ci.low, "high": ci.high}, up),
    }


def _latency(p: Plan, models: dict[str, Path], cfg) -> tuple[dict[str, float], str]:
    """Batch-1 latency (median ms) of every variant's model, timed interleaved in this process on the test texts
    of ``cfg`` (a finished run's config), and the leaderboard's note about it."""
    from lmdistill.report.measure import measure_models_interleaved

    if not p.sweep.latency:
        return {}, "Latency: not measured (sweep.latency false); the plot uses weights on disk."
    if not models:
        return {}, "Latency: not measured (no run finished)."
    task = get_task(p.task)
    try:
        texts = task.report_inputs(cfg).texts
    except LmdistillError as e:
        return {}, f"Latency: not measured ({clip(str(e), 160)}); the plot uses weights on disk."
    r = cfg.report
    try:
        loaded = {name: task.load_saved(path) for name, path in models.items()}
        found = measure_models_interleaved(loaded, texts[:64], batch_size=1, rounds=r.latency_repeats,
                                           warmup=r.warmup, max_length=cfg.data.max_length)  # fmt: skip
    except (LmdistillError, OSError, ValueError, RuntimeError) as e:
        return {}, f"Latency: not measured ({clip(str(e), 160)}); the plot uses weights on disk."
    note = (
        f"Latency: median of {r.latency_repeats} batch-1 forward passes per model over {min(64, len(texts))} test "
        "texts, every variant's model (its first finished seed) timed interleaved in one process, on the CPU."
    )
    return {name: 1000 * x["median_s"] for name, x in found.items()}, note


def _seed_mean(values: list[float], single: dict | None) -> tuple[float | None, float | None, float | None]:
    """Mean over seeds with a 95% t-interval; one seed: its own test-set bootstrap interval."""
    from lmdistill.report.seeds import t_interval

    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], (single or {}).get("low"), (single or {}).get("high")
    return tuple(t_interval(values))


def leaderboard(p: Plan, record: dict[str, dict]) -> dict:
    """The leaderboard's data (leaderboard.json): one row per variant, in the sweep's order."""
    from lmdistill.report.leaderboard import pareto_front
    from lmdistill.report.measure import count_parameters, size_on_disk

    metric, up = _metric(p)
    scores, inputs_cache, models = {}, {}, {}
    for j in p.jobs:
        if record.get(j.key, {}).get("status") == "ok" and (j.folder / "results.json").is_file():
            scores[(j.variant, j.seed)] = score(j, metric, inputs_cache)
            models.setdefault(j.variant, j.folder / "model")
    first = next((j.cfg for j in p.jobs if j.variant == p.reference and (j.variant, j.seed) in scores), None)
    first = first or next((j.cfg for j in p.jobs if (j.variant, j.seed) in scores), None)
    latency, latency_note = _latency(p, models, first)
    rows = []
    for v in p.variants:
        done = [scores[(v.name, s)] for s in p.seeds if (v.name, s) in scores]
        values = [x["value"] for x in done if x.get("value") is not None]
        seconds = [json.loads((j.folder / "results.json").read_text()).get("train_seconds") for j in p.jobs
                   if j.variant == v.name and (v.name, j.seed) in scores]  # fmt: skip
        mean, low, high = _seed_mean(values, done[0] if len(done) == 1 else None)
        row = {"variant": v.name, "overrides": " ".join(override_items(v)) or "(base)", "seeds_ok": len(done),
               "seeds": len(p.seeds), "mean": mean, "low": low, "high": high, "per_seed": values,
               "notes": {s: scores[(v.name, s)]["note"] for s in p.seeds if scores.get((v.name, s), {}).get("note")},
               "train_s": float(np.mean(seconds)) if seconds and None not in seconds else None,
               "interval": "t over seeds" if len(values) > 1 else "test-set bootstrap" if values else None,
               "errors": {j.seed: record[j.key]["error"] for j in p.jobs
                          if j.variant == v.name and record.get(j.key, {}).get("status") == "failed"}}  # fmt: skip
        if v.name != p.reference and done:
            row.update(_compare(p, scores, v.name, metric, up))
        if v.name in models:
            model, _ = get_task(p.task).load_saved(models[v.name])
            row["parameters"] = count_parameters(model)["total"]
            row["weights_mb"] = size_on_disk(models[v.name])["weights_bytes"] / 1e6
        row["latency_ms"] = latency.get(v.name)
        rows.append(row)
    comparisons = [
        {"variant": a, "against": b, **_compare(p, scores, a, metric, up, b)} for a, b in p.sweep.comparisons
    ]
    cost = "latency_ms" if latency else "weights_mb"
    ranked = [r for r in rows if r["mean"] is not None and r.get(cost) is not None]
    for r, on in zip(ranked, pareto_front([(r[cost], r["mean"]) for r in ranked], up)):
        r["pareto"] = on
    for r in rows:
        r.setdefault("pareto", False)
    return {
        "title": p.folder.name,
        "task": p.task,
        "verb": p.verb,
        "metric": metric,
        "greater_is_better": up,
        "reference": p.reference,
        "seeds": p.seeds,
        "rows": rows,
        "comparisons": comparisons,
        "notes": [*_notes(p), latency_note],
    }


def _notes(p: Plan) -> list[str]:
    others = " (other comparisons: variant - against)" if p.sweep.comparisons else ""
    return [
        "Mean: over the seeds that finished, 95% Student-t interval over seeds (one seed: the test-set bootstrap "
        "interval of that run).",
        f"Difference: variant - {p.reference}{others}, paired by seed and by test example; 95% two-level percentile "
        f"bootstrap (seeds, then test examples; {p.sweep.bootstrap_resamples} resamples); p: paired permutation "
        "test (outputs swapped per example within each seed; the trained models held fixed). Verdict from the "
        "interval.",
    ]
