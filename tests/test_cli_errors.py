"""Bad input through the CLI: one line naming the thing and the fix, exit code 2, no traceback."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from lmdistill.cli import main


def run(tmp_path, capsys, verb: str, cfg: dict, *overrides: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main([verb, str(path), *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def base(tmp_path, sentiment_csv, tiny_bert_dir):
    return {
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "output_dir": str(tmp_path / "out"),
        "training": {"max_steps": 1},
    }


def test_missing_data_file(tmp_path, capsys, base):
    line = run(tmp_path, capsys, "finetune", base, f"data.train={tmp_path}/nope.csv")
    assert "data.train: file" in line and "nope.csv' not found" in line


def test_missing_column(tmp_path, capsys, base):
    line = run(tmp_path, capsys, "finetune", base, "data.text_column=sentence")
    assert line.startswith(
        "error: data.text_column: column 'sentence' not found in the train data (columns: text"
    )


def test_label_outside_known_set(tmp_path, capsys, base):
    pd.DataFrame({"text": ["good"], "label": ["mixed"]}).to_csv(tmp_path / "test.csv", index=False)
    line = run(tmp_path, capsys, "finetune", base, f"data.test={tmp_path}/test.csv")
    assert (
        "label 'mixed' in the test data (row 0) is not among the known labels ['negative', 'positive']"
        in line
    )


def test_empty_split(tmp_path, capsys, base):
    (tmp_path / "val.csv").write_text("text,label\n")
    line = run(tmp_path, capsys, "finetune", base, f"data.validation={tmp_path}/val.csv")
    assert "data.validation" in line


def test_unknown_model_path(tmp_path, capsys, base):
    line = run(tmp_path, capsys, "finetune", base, f"model.name_or_path={tmp_path}/no-such-model")
    assert line.startswith("error: model.name_or_path: '") and "no-such-model' is not a loadable" in line


def test_unsupported_architecture(tmp_path, capsys, base):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    line = run(tmp_path, capsys, "finetune", base, f"model.name_or_path={tmp_path}/gpt2")
    assert "model type 'gpt2' is not supported for text classification" in line


def test_student_layer_outside_teacher(tmp_path, capsys, base, tiny_bert_dir):
    cfg = {**base, "teacher": {"name_or_path": str(tiny_bert_dir)}, "student": {"layers": [0, 9]}}
    line = run(tmp_path, capsys, "distill", cfg)
    assert line == (
        "error: student.layers: layer 9 is outside the teacher, which has 4 layers (valid indices 0..3)"
    )


def test_config_errors_all_reported(tmp_path, capsys, base):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**base, "training": {"epochz": 1, "batch_size": -1}}))
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'training.epochz' (did you mean 'training.epochs'?)" in err
    assert "training.batch_size must be at least 1" in err and "teacher.name_or_path is required" in err
    assert "Traceback" not in err


def test_evaluate_without_data(tmp_path, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "is not a loadable" in capsys.readouterr().err


def test_cross_tokenizer_distillation(tmp_path, sentiment_csv, tiny_mpnet_dir, monkeypatch):
    """An MPNet teacher and a BERT student with different vocabularies: output-level KD works, and the teacher
    reads its own ids. The student's word ids all lie beyond the teacher's vocabulary, so a teacher fed the
    student's ids would fail (index out of range) instead of passing silently."""
    from lmdistill.signals.live import LiveTeacher

    from .conftest import WORDS, bert_tokenizer, tiny_bert

    student_dir = tmp_path / "bert"
    student_dir.mkdir()
    tok = bert_tokenizer(student_dir, [f"unused{i}" for i in range(60)] + WORDS)
    tiny_bert(vocab=len(tok)).save_pretrained(student_dir)
    tok.save_pretrained(student_dir)
    teacher_vocab = len(WORDS) + 5
    assert min(tok.convert_tokens_to_ids(WORDS)) >= teacher_vocab
    seen = []
    real = LiveTeacher.__call__

    def spy(self, batch):
        seen.append((batch["teacher"]["input_ids"].clone(), batch["student"]["input_ids"].clone()))
        return real(self, batch)

    monkeypatch.setattr(LiveTeacher, "__call__", spy)
    data = {"train": str(sentiment_csv), "max_length": 32}
    training = {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2}
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": data,
                "model": {"name_or_path": str(tiny_mpnet_dir)},
                "output_dir": str(tmp_path / "teacher"),
                "training": training,
            }
        )
    )
    assert main(["finetune", str(path)]) == 0
    path.write_text(
        yaml.safe_dump(
            {
                "data": data,
                "teacher": {"name_or_path": str(tmp_path / "teacher" / "model")},
                "student": {"init": "pretrained", "name_or_path": str(student_dir)},
                "output_dir": str(tmp_path / "student"),
                "training": training,
            }
        )
    )
    assert main(["distill", str(path)]) == 0
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert res["test"]["accuracy"] > 0.5
    teacher_ids, student_ids = seen[0]
    assert int(teacher_ids.max()) < teacher_vocab <= int(student_ids[student_ids > 4].min())
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "student" / "model").model_type == "bert"


def test_a_model_without_classification_head_is_refused_not_scored_with_a_random_head(
    tmp_path, tiny_bert_dir, sentiment_csv, capsys
):
    from transformers import AutoModel

    base = tmp_path / "encoder"
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(base)  # architectures: BertModel
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (tiny_bert_dir / name).exists():
            (base / name).write_bytes((tiny_bert_dir / name).read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(base), "--data", str(sentiment_csv)]) == 2
    err = capsys.readouterr().err
    assert "has no classification head (architectures: BertModel)" in err and "Traceback" not in err
