"""compress for sentence-embedding students: the no-KD baseline (in-batch negatives, MNRL), the retrieval report
with a paired verdict over queries, and a transfer set of unpaired texts learned by embedding-level KD."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.errors import ConfigError
from lmdistill.losses.embedding import mnrl
from lmdistill.tasks import load_config
from lmdistill.tasks.embedding import EmbeddingObjective, SentenceEncoder

from .conftest import bert_tokenizer, make_sentences
from .test_embedding import _bert_model

ROWS = make_sentences(160, seed=11)
TEXTS = [t for t, _, _ in ROWS]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("st_teacher")
    SentenceEncoder(_bert_model(len(tok)), "mean", normalize=True).save(d, tok, max_seq_length=32)
    return d


# ------------------------------------------------------------------------------------------------ the loss


def _naive_mnrl(a: torch.Tensor, c: torch.Tensor, scale: float = 20.0) -> list[float]:
    """-log softmax of scaled cosines, one anchor and one candidate at a time."""
    out = []
    for i in range(len(a)):
        scores = []
        for j in range(len(c)):
            dot = sum(float(x) * float(y) for x, y in zip(a[i], c[j]))
            cos = dot / (
                math.sqrt(sum(float(x) ** 2 for x in a[i])) * math.sqrt(sum(float(y) ** 2 for y in c[j]))
            )
            scores.append(scale * cos)
        out.append(-scores[i] + math.log(sum(math.exp(s) for s in scores)))
    return out


def test_mnrl_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(5, 7, generator=g) for _ in range(3))
    assert mnrl(a, p).tolist() == pytest.approx(_naive_mnrl(a, p), rel=1e-5)
    assert mnrl(a, p, n).tolist() == pytest.approx(_naive_mnrl(a, torch.cat([p, n])), rel=1e-5)
    assert mnrl(a, p, scale=1.0).tolist() == pytest.approx(_naive_mnrl(a, p, 1.0), rel=1e-5)


def test_mnrl_equals_sentence_transformers_loss(teacher_dir):
    st = pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # before sentence-transformers 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(st.SentenceTransformer(str(teacher_dir), device="cpu"))
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(6, 32, generator=g) for _ in range(3))
    theirs = loss.compute_loss_from_embeddings([a, p], None)
    assert float(mnrl(a, p).mean()) == pytest.approx(float(theirs), rel=1e-5)
    with_negatives = loss.compute_loss_from_embeddings([a, p, n], None)
    assert float(mnrl(a, p, n).mean()) == pytest.approx(float(with_negatives), rel=1e-5)


def test_the_mnrl_objective_reads_anchors_then_positives():
    from lmdistill.tasks.embedding import SentenceOutput

    e = torch.randn(8, 4)  # a batch of 4 pairs: anchors, then positives
    terms = EmbeddingObjective("mnrl", weight=0.5)(SentenceOutput(e), None, {})
    assert float(terms["mnrl"]) == pytest.approx(float(mnrl(e[:4], e[4:]).mean()))
    assert EmbeddingObjective("mnrl", weight=0.5).weights == {"mnrl": 0.5}


# ------------------------------------------------------------------------------------------------ configs


def _data(tmp_path):
    """Training rows (title, text), a retrieval file of other rows, a transfer file of unpaired texts (one equal
    to a searched document)."""
    title = [" ".join(t.split()[:3]) for t in TEXTS]
    train = tmp_path / "news.csv"
    pd.DataFrame({"text": TEXTS[:120], "title": title[:120]}).to_csv(train, index=False)
    search = tmp_path / "search.csv"
    pd.DataFrame({"text": TEXTS[120:], "title": title[120:]}).to_csv(search, index=False)
    transfer = tmp_path / "transfer.txt"
    extra = [f"{t} again" for t in TEXTS[:30]] + [TEXTS[125]]
    transfer.write_text("\n".join(extra) + "\n")
    return train, search, transfer


def _cfg(tmp_path, teacher_dir, **extra):
    train, search, transfer = _data(tmp_path)
    cfg = {
        "task": "embedding",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "max_length": 32, "validation_size": 0.1, "test_size": 0.0},
        "teacher": {"name_or_path": str(teacher_dir)},
        "student": {"num_layers": 2},
        "embedding": {
            "extra_text_columns": ["title"],
            "query_column": "title",
            "positive_column": "text",
            "retrieval": str(search),
        },
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2},
        "report": {
            "latency_repeats": 2,
            "warmup": 1,
            "speed_texts": 16,
            "energy": False,
            "bootstrap_resamples": 200,
        },
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg, transfer


def _yaml(tmp_path, cfg) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# ------------------------------------------------------------------------------------------------ transfer set


def test_transfer_texts_get_the_teachers_embeddings_and_only_the_kd_term(tmp_path, tok, teacher_dir):
    from lmdistill.tasks.embedding import prepare_bi

    cfg, transfer = _cfg(tmp_path, teacher_dir)
    cfg["data"]["unlabeled"] = {"source": str(transfer), "ratio": 0.25}
    c = load_config(cfg, verb="distill")
    prep = prepare_bi(c)
    n_train = prep.counts["train"]
    kept = [f"{t} again" for t in TEXTS[:30]]  # TEXTS[125] is a searched document: dropped
    assert prep.counts["unlabelled"] == 30 and prep.unlabelled["transfer"]["dropped_equal_to_retrieval"] == 1
    assert len(prep.train) == n_train + 30
    assert prep.mix.unlabelled == list(range(n_train, n_train + 30)) and prep.mix.ratio == 0.25
    teacher, t_tok = SentenceEncoder.load(teacher_dir)
    want = teacher.encode(kept, t_tok, max_length=32, normalize=False)
    assert torch.allclose(prep.train.targets[n_train:], want, atol=1e-5)  # embedding-level KD targets
    ids = tok(kept[0], truncation=True, max_length=32)["input_ids"]
    assert prep.train[n_train]["student"]["input_ids"] == ids
    from lmdistill.tasks import get_task

    parts = get_task("embedding").parts(c, "distill")
    assert parts.objectives[0].weights == {"embedding_mse": 1.0} and parts.mix is not None


def test_the_no_kd_baseline_trains_on_pairs_without_the_transfer_set(tmp_path, tok, teacher_dir):
    from lmdistill.tasks import get_task

    cfg, transfer = _cfg(tmp_path, teacher_dir)
    cfg["distill"] = {"losses": {"mnrl": 1.0}}
    c = load_config(cfg, verb="distill")
    parts = get_task("embedding").parts(c, "distill")
    assert parts.objectives[0].weights == {"mnrl": 1.0} and parts.mix is None and parts.teacher is None
    n = parts.extra["split_sizes"]["train_pairs"]
    assert len(parts.train_set) == n == 108  # 120 rows, 10 % held out for validation
    batch = parts.collate([parts.train_set[i] for i in range(4)])
    assert batch["student"]["input_ids"].shape[0] == 8 and set(batch) == {"index", "student"}
    first = parts.train_set[0]["student"]
    assert tok.decode(first["query"]["input_ids"], skip_special_tokens=True).count(" ") == 2  # a 3-word title
    cfg["data"]["unlabeled"] = {"source": str(transfer)}
    with pytest.raises(ConfigError, match="data.unlabeled needs a teacher to embed its texts"):
        load_config(cfg, verb="distill")


# ------------------------------------------------------------------------------------------------ compress


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, teacher_dir):
    tmp = tmp_path_factory.mktemp("compress")
    cfg, transfer = _cfg(tmp, teacher_dir)
    cfg["data"]["unlabeled"] = {"source": str(transfer)}
    assert main(["compress", _yaml(tmp, cfg)]) == 0
    return tmp / "run", cfg


def test_compress_embedding_reports_a_paired_verdict_over_queries(compressed):
    from lmdistill.report.paired import paired_bootstrap_values, verdict
    from lmdistill.tasks.retrieval import evaluate_retrieval, load_retrieval_set, per_query, ranks_of

    run, cfg = compressed
    report = json.loads((run / "report.json").read_text())
    assert report["primary_metric"] == "mrr@10" and set(report["models"]) == {
        "teacher",
        "student",
        "baseline",
    }
    rs = load_retrieval_set(cfg["embedding"]["retrieval"])
    assert report["evaluation"] == f"retrieval on {rs.name}: 40 queries, 40 documents"
    ranks = {}
    for role in ("student", "baseline"):
        enc, stok = SentenceEncoder.load(run / role / "model")
        q, d = (enc.encode(x, stok, max_length=32) for x in (rs.queries, rs.documents))
        ranks[role] = ranks_of(q, d, rs.relevant)
        again = evaluate_retrieval(str(run / role / "model"), data=rs, max_length=32)["model"]
        metrics = report["models"][role]["metrics"]
        for m in ("recall@1", "recall@5", "recall@10", "mrr@10"):
            assert metrics[m]["value"] == pytest.approx(again[m])
            assert metrics[m]["low"] <= metrics[m]["value"] <= metrics[m]["high"]
    comparisons = {c["metric"]: c for c in report["comparisons"]}
    assert set(comparisons) == {"recall@1", "recall@5", "recall@10", "mrr@10"}
    for m, c in comparisons.items():
        a, b = per_query(ranks["student"])[m], per_query(ranks["baseline"])[m]
        want = paired_bootstrap_values(a, b, n_resamples=200, seed=0)
        assert (c["a"], c["b"], c["n"]) == ("student", "baseline", 40)
        assert c["difference"] == pytest.approx(
            {"value": a.mean() - b.mean(), "low": want.low, "high": want.high}
        )
        assert c["verdict"] == verdict(want, greater_is_better=True)
    assert "paired bootstrap over queries" in (run / "report.md").read_text()
    agreement = report["models"]["student"]["agreement"]
    assert agreement["low"] <= agreement["value"] <= agreement["high"]


def test_compress_baseline_is_mnrl_at_the_students_steps_without_the_transfer_set(compressed):
    run, _ = compressed
    student = json.loads((run / "student" / "results.json").read_text())
    baseline = json.loads((run / "baseline" / "results.json").read_text())
    assert student["loss"] == "mse" and baseline["loss"] == "mnrl"
    assert baseline["steps"] == student["steps"]
    assert student["split_sizes"]["unlabelled"] == 30 and "unlabelled" not in baseline["split_sizes"]
    assert student["unlabelled"]["transfer"]["dropped_equal_to_retrieval"] == 1
    saved = yaml.safe_load((run / "baseline" / "config.yaml").read_text())
    assert saved["data"]["unlabeled"] is None and saved["distill"]["losses"] == {"mnrl": 1.0}
    card = (run / "student" / "model" / "README.md").read_text()
    assert "SentenceTransformer(" in card and "| student | " in card


# ------------------------------------------------------------------------------------------------ bad input


def _one_line(tmp_path, capsys, cfg, verb="compress") -> str:
    path = _yaml(tmp_path, cfg)
    capsys.readouterr()
    assert main([verb, path]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compress_embedding_bad_input_is_one_line(tmp_path, capsys, teacher_dir):
    cfg, _ = _cfg(tmp_path, teacher_dir, embedding__positive_column="body")
    line = _one_line(tmp_path, capsys, cfg)
    assert line.startswith("error: embedding.positive_column: column 'body' not found in the train data")
    assert not (tmp_path / "run" / "student").exists()  # refused before anything trained
    cfg, _ = _cfg(tmp_path, teacher_dir, embedding__retrieval=None)
    assert "compress for task embedding needs embedding.retrieval" in _one_line(tmp_path, capsys, cfg)
    cfg, _ = _cfg(tmp_path, teacher_dir, embedding__mode="cross")
    assert "compress supports task embedding with embedding.mode bi" in _one_line(tmp_path, capsys, cfg)
    cfg, _ = _cfg(tmp_path, teacher_dir)
    cfg["data"]["augment"] = {"method": "mask"}
    assert "data.augment applies to tasks classification and regression" in _one_line(tmp_path, capsys, cfg)
    cfg, _ = _cfg(tmp_path, teacher_dir)
    (tmp_path / "empty.txt").write_text("\n")
    cfg["data"]["unlabeled"] = {"source": str(tmp_path / "empty.txt")}
    assert "data.unlabeled.source" in _one_line(tmp_path, capsys, cfg, verb="distill")


def test_retrieval_values_per_query_average_to_the_metrics():
    from lmdistill.tasks.retrieval import per_query, retrieval_metrics

    ranks = np.array([1, 3, 6, 12, 2])
    values = per_query(ranks)
    assert values["recall@5"].tolist() == [1, 1, 0, 0, 1]
    assert values["mrr@10"].tolist() == pytest.approx([1, 1 / 3, 1 / 6, 0, 1 / 2])
    assert {k: v.mean() for k, v in values.items()} == pytest.approx(retrieval_metrics(ranks))
