"""The whole user workflow through the CLI: finetune -> distill -> evaluate, asserting on artifacts."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from lmdistill.cli import main


def _config(tmp_path, **sections) -> str:
    cfg = {
        "seed": 0,
        "data": {"train": "", "validation_size": 0.15, "test_size": 0.15, "max_length": 32},
        "training": {
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "warmup_ratio": 0.1,
            "log_every": 2,
        },
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_finetune_distill_evaluate(tmp_path, tiny_bert_dir, sentiment_csv, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher_dir = tmp_path / "teacher"
    cfg = _config(
        tmp_path,
        data={"train": str(sentiment_csv)},
        model={"name_or_path": str(tiny_bert_dir)},
        output_dir=str(teacher_dir),
    )
    assert main(["finetune", cfg, "training.epochs=6"]) == 0
    results = json.loads((teacher_dir / "results.json").read_text())
    assert results["test"]["accuracy"] > 0.75  # the words decide the label: a 4-layer model learns it
    saved = yaml.safe_load((teacher_dir / "config.yaml").read_text())
    assert saved["training"]["epochs"] == 6 and saved["distill"]["losses"] == {"kd": 0.5, "ce": 0.5}
    info = json.loads((teacher_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"]
    metrics = pd.read_csv(teacher_dir / "metrics.csv")
    assert {"loss", "loss/ce", "eval/accuracy"} <= set(metrics.columns)

    student_dir = tmp_path / "student"
    # max_eval_examples caps validation and test: evaluate must apply the same cap to the same split
    cfg = _config(
        tmp_path,
        data={"train": str(sentiment_csv), "max_eval_examples": 20},
        teacher={"name_or_path": str(teacher_dir / "model")},
        student={"layers": [0, 3]},
        output_dir=str(student_dir),
        distill={"temperature": 2.0},
    )
    assert main(["distill", cfg]) == 0
    metrics = pd.read_csv(student_dir / "metrics.csv")
    assert {"loss/kd", "loss/ce"} <= set(metrics.columns)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir / "model")
    assert student.config.num_hidden_layers == 2
    assert student.config.id2label == {0: "negative", 1: "positive"}
    tok = AutoTokenizer.from_pretrained(student_dir / "model")
    from transformers import pipeline

    clf = pipeline("text-classification", model=student, tokenizer=tok)
    texts = ["a great superb film", "an awful dull film", "the plot was really good", "weak and poor acting"]
    with torch.no_grad():  # the pipeline gives the saved model's own prediction, named by the data's labels
        logits = student(**tok(texts, return_tensors="pt", padding=True)).logits
    want = [student.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert [r["label"] for r in clf(texts)] == want

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    preds = tmp_path / "preds.csv"
    assert (
        main(
            [
                "evaluate",
                str(student_dir / "model"),
                "--config",
                cfg,
                "--split",
                "test",
                "--output",
                str(out_json),
                "--predictions",
                str(preds),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "accuracy" in printed
    ev = json.loads(out_json.read_text())
    distill_results = json.loads((student_dir / "results.json").read_text())
    assert ev["metrics"]["accuracy"] == pytest.approx(distill_results["test"]["accuracy"]) and ev["n"] == 20
    assert set(pd.read_csv(preds)["prediction"]) <= {"negative", "positive"}


def test_regression_finetune_and_distill(tmp_path, tiny_bert_dir, sentiment_csv):
    teacher_dir = tmp_path / "teacher"
    cfg = _config(
        tmp_path,
        task="regression",
        data={"train": str(sentiment_csv), "label_column": "score"},
        model={"name_or_path": str(tiny_bert_dir)},
        output_dir=str(teacher_dir),
    )
    assert main(["finetune", cfg, "training.epochs=3"]) == 0
    res = json.loads((teacher_dir / "results.json").read_text())
    assert res["test"]["pearson"] > 0.5
    cfg = _config(
        tmp_path,
        task="regression",
        data={"train": str(sentiment_csv), "label_column": "score"},
        teacher={"name_or_path": str(teacher_dir / "model")},
        student={"num_layers": 2},
        output_dir=str(tmp_path / "student"),
    )
    assert main(["distill", cfg]) == 0
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert set(res["test"]) == {"mse", "rmse", "pearson", "spearman"}
    metrics = pd.read_csv(tmp_path / "student" / "metrics.csv")
    assert {"loss/kd_mse", "loss/mse"} <= set(metrics.columns)
