"""What the CLI reads and writes goes through one guarded path, and silent wrongness becomes an error (issue
"Correctness and safety", items 3, 4, 5, 6d and 9): each bad input is one line naming the file or key, exit 2."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pandas as pd
import pytest
import torch
import yaml

from lmdistill import api
from lmdistill.cli import main

from .conftest import bert_tokenizer, make_sentences, tiny_bert


def _line(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one error line (no traceback); return it."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _yaml(tmp_path, cfg, name="c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _base(tmp_path, data, model, **sections):
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(data), "max_length": 32},
        "model": {"name_or_path": str(model)},
        "training": {"max_steps": 2, "batch_size": 16},
    }
    cfg.update(sections)
    return cfg


@pytest.fixture
def model_copy(tmp_path, tiny_bert_dir):
    def copy(name: str):
        dest = tmp_path / name
        shutil.copytree(tiny_bert_dir, dest)
        return dest

    return copy


# ------------------------------------------------------------------------------------------------ files


def test_a_pipe_as_data_is_refused_without_being_opened(tmp_path, capsys, tiny_bert_dir):
    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)  # opening it for reading would block forever: the check must not open it
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, fifo, tiny_bert_dir))])
    assert "data.train" in line and "is a pipe, not a regular file" in line


def test_a_folder_and_an_unreadable_file_as_data(tmp_path, capsys, tiny_bert_dir, sentiment_csv, monkeypatch):
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, tmp_path, tiny_bert_dir))])
    assert "data.train" in line and "is a folder" in line
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(sentiment_csv) else real(p, mode)
    )
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, sentiment_csv, tiny_bert_dir))])
    assert "data.train: permission denied reading" in line and str(sentiment_csv) in line


def test_evaluate_checks_its_output_files_before_evaluating(tmp_path, capsys, tiny_bert_dir, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("evaluated before the output paths were checked")

    monkeypatch.setattr(api, "evaluate", never)
    line = _line(
        capsys,
        ["evaluate", str(tiny_bert_dir), "--data", "x.csv", "--output", str(tmp_path / "no" / "m.json")],
    )
    assert line.startswith("error: --output: the folder") and "does not exist; create it first" in line
    (tmp_path / "p.csv").write_text("mine\n")
    line = _line(
        capsys, ["evaluate", str(tiny_bert_dir), "--data", "x.csv", "--predictions", str(tmp_path / "p.csv")]
    )
    assert (
        "exists and lmdistill does not overwrite it" in line and (tmp_path / "p.csv").read_text() == "mine\n"
    )


def test_the_cache_variable_naming_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "f"))
    line = _line(capsys, ["fetch", "vader"])
    assert (
        line
        == f"error: LMDISTILL_CACHE: '{tmp_path / 'f'}' is a file, not a folder; point LMDISTILL_CACHE to a folder"
    )


# ------------------------------------------------------------------------------------------------ model folders


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors_are_one_line(tmp_path, capsys, sentiment_csv, model_copy, damage):
    folder = model_copy("m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, sentiment_csv, folder))])
    assert line.startswith(f"error: model.name_or_path: the weights of '{folder}' cannot be read")


def test_pickle_weights_load_as_plain_tensors_and_code_never_runs(
    tmp_path, capsys, sentiment_csv, model_copy
):
    from safetensors.torch import load_file

    plain = model_copy("plain")
    tensors = load_file(plain / "model.safetensors")
    (plain / "model.safetensors").unlink()
    torch.save(tensors, plain / "pytorch_model.bin")
    res = api.finetune(
        _base(tmp_path, sentiment_csv, plain)
    )  # read with weights_only: a plain state dict is fine
    assert res.steps == 2

    evil = model_copy("evil")
    (evil / "model.safetensors").unlink()
    sentinel = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    cfg = _base(tmp_path, sentiment_csv, evil, output_dir=str(tmp_path / "out2"))
    line = _line(capsys, ["finetune", _yaml(tmp_path, cfg)])
    assert "model.name_or_path: the weights of" in line and "cannot be read" in line
    assert not sentinel.exists()


def test_a_config_whose_layer_count_disagrees_with_its_weights(tmp_path, capsys, sentiment_csv, model_copy):
    folder = model_copy("m")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 6  # the weights hold 4 layers: two would be drawn at random
    (folder / "config.json").write_text(json.dumps(config))
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, sentiment_csv, folder))])
    assert "do not fit its config.json (6 layers)" in line and "missing" in line


def test_non_finite_weights_are_refused(tmp_path, capsys, sentiment_csv):
    tok = bert_tokenizer(tmp_path)
    model = tiny_bert(vocab=len(tok))
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    tok.save_pretrained(tmp_path / "nan")
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, sentiment_csv, tmp_path / "nan"))])
    assert "has non-finite weights (NaN or inf) in 'bert.encoder.layer.1.output.dense.weight'" in line


def test_a_teacher_without_tokenizer_files_needs_teacher_tokenizer(
    tmp_path, capsys, sentiment_csv, tiny_bert_dir
):
    teacher = api.finetune(_base(tmp_path, sentiment_csv, tiny_bert_dir, output_dir=str(tmp_path / "t")))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(teacher.model_dir / f, bare / f)
    cfg = _base(
        tmp_path,
        sentiment_csv,
        tiny_bert_dir,
        teacher={"name_or_path": str(bare)},
        student={"layers": [0, 1]},
    )
    line = _line(capsys, ["distill", _yaml(tmp_path, cfg)])
    assert "teacher.name_or_path" in line and "has no tokenizer files" in line and "teacher.tokenizer" in line
    cfg["teacher"]["tokenizer"] = str(teacher.model_dir)  # honoured: the tokenizer comes from there
    res = api.distill(cfg)
    assert res.steps == 2 and (res.model_dir / "tokenizer.json").is_file()


def test_a_causal_lm_task_refuses_an_encoder_classifier(tmp_path, capsys, tiny_bert_dir):
    (tmp_path / "t.txt").write_text("\n".join(t for t, _, _ in make_sentences(40)))
    cfg = {
        "task": "causal_lm",
        "data": {"train": str(tmp_path / "t.txt")},
        "model": {"name_or_path": str(tiny_bert_dir)},
    }
    line = _line(capsys, ["finetune", _yaml(tmp_path, {**cfg, "output_dir": str(tmp_path / "o")})])
    assert (
        "is a BertForSequenceClassification, not a causal LM (it has no trained language-model head)" in line
    )


# ------------------------------------------------------------------------------------------------ data and labels


def test_look_alike_labels_and_label_equal_to_text(tmp_path, capsys, tiny_bert_dir):
    for variant, shown in (("Positive ", "'Positive '"), ("posi\u200btive", "'posi\\u200btive'")):
        rows = [(t, variant if i == 3 else lab) for i, (t, lab, _) in enumerate(make_sentences(40))]
        pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "d.csv", index=False)
        line = _line(
            capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, tmp_path / "d.csv", tiny_bert_dir))]
        )
        assert (
            "differ only in case, whitespace, invisible characters or leading zeros" in line and shown in line
        )
    pd.DataFrame({"text": ["a", "b"] * 10, "label": ["1", "01"] * 10}).to_csv(tmp_path / "n.csv", index=False)
    line = _line(capsys, ["finetune", _yaml(tmp_path, _base(tmp_path, tmp_path / "n.csv", tiny_bert_dir))])
    assert "labels '01' and '1' differ only" in line
    cfg = _base(tmp_path, tmp_path / "n.csv", tiny_bert_dir)
    cfg["data"]["label_column"] = "text"
    assert "are both 'text': the label would be the text" in _line(capsys, ["validate", _yaml(tmp_path, cfg)])


def test_the_student_carries_the_data_label_names(tmp_path, sentiment_csv, tiny_bert_dir):
    teacher = api.finetune(_base(tmp_path, sentiment_csv, tiny_bert_dir, output_dir=str(tmp_path / "t")))
    config = json.loads((teacher.model_dir / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    (teacher.model_dir / "config.json").write_text(json.dumps(config))  # a teacher with generic names
    res = api.distill(
        _base(
            tmp_path,
            sentiment_csv,
            tiny_bert_dir,
            teacher={"name_or_path": str(teacher.model_dir)},
            student={"layers": [0, 1]},
        )
    )
    saved = json.loads((res.model_dir / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}


def test_metric_for_best_must_be_measured_by_the_task(tmp_path, capsys, sentiment_csv, tiny_bert_dir):
    cfg = _base(tmp_path, sentiment_csv, tiny_bert_dir)
    cfg["training"]["metric_for_best"] = "perplexity"
    line = _line(capsys, ["validate", _yaml(tmp_path, cfg)])
    assert (
        line
        == "error: training.metric_for_best 'perplexity' is not measured for task classification (use one of: accuracy, macro_f1)"
    )
    lm = {"task": "causal_lm", "data": {"train": str(sentiment_csv)}, "model": {"name_or_path": "m"}}
    lm["training"] = {"metric_for_best": "accuracy"}
    assert "is not measured for task causal_lm" in _line(
        capsys, ["validate", "--no-data", _yaml(tmp_path, lm)]
    )


def test_a_huge_temperature_fails_validation_not_the_run(tmp_path, capsys, sentiment_csv, tiny_bert_dir):
    cfg = _base(
        tmp_path, sentiment_csv, tiny_bert_dir, teacher={"name_or_path": "t"}, student={"layers": [0]}
    )
    cfg["distill"] = {"temperature": 1e30}
    line = _line(capsys, ["validate", "--no-data", _yaml(tmp_path, cfg)])
    assert line.startswith("error: distill.temperature must be at most 100, got 1e+30")


def test_long_lists_in_messages_are_cut_with_a_count(tmp_path, capsys, tiny_bert_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    columns = {"text": ["a", "b"], **{f"column_{i}": ["x", "y"] for i in range(200)}}
    pd.DataFrame(columns).to_csv("wide.csv", index=False)
    cfg = _base(tmp_path, "wide.csv", tiny_bert_dir)
    line = _line(capsys, ["validate", _yaml(tmp_path, cfg)])
    assert "column 'label' not found" in line and "column_10, ... (and 189 more)" in line and len(line) <= 320


def test_report_refuses_runs_of_different_tasks(tmp_path, capsys):
    for name, task in (("a", "classification"), ("b", "regression")):
        run = tmp_path / name
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text("{}")
        (run / "results.json").write_text(
            json.dumps({"task": task, "role": "student" if name == "a" else "baseline"})
        )
        (run / "config.yaml").write_text(yaml.safe_dump({"task": task, "data": {"train": "x.csv"}}))
    line = _line(capsys, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert "the runs are of different tasks" in line and "baseline: regression" in line


# ------------------------------------------------------------------------------------------------ fail fast


def test_validate_reads_data_files_and_columns_before_any_model(tmp_path, capsys, monkeypatch, sentiment_csv):
    import transformers

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_models)
    cfg = {
        "task": "causal_lm",
        "data": {"train": str(sentiment_csv), "text_column": "sentence"},
        "model": {"name_or_path": "m"},
    }
    line = _line(capsys, ["validate", _yaml(tmp_path, cfg)])
    assert line.startswith(
        "error: data.text_column: column 'sentence' not found in the train data (columns: text, label"
    )
    line = _line(capsys, ["finetune", _yaml(tmp_path, {**cfg, "output_dir": str(tmp_path / "o")})])
    assert "column 'sentence' not found" in line  # the run checks the same before loading the model
    (tmp_path / "notes.rtf").write_text("{\\rtf1}")
    cfg["data"] = {"train": str(tmp_path / "notes.rtf")}
    assert "cannot tell the format of" in _line(capsys, ["validate", _yaml(tmp_path, cfg)])


def test_a_plain_text_file_trains_a_causal_lm(tmp_path, capsys):
    from .test_causal_lm import tiny_llama, word_tokenizer

    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    texts = [t for t, _, _ in make_sentences(120, seed=3)]
    paragraphs = "\n\n".join("\n".join(texts[i : i + 3]) for i in range(0, 120, 3))  # blank-line separated
    (tmp_path / "corpus.txt").write_text(paragraphs + "\n")
    cfg = {
        "task": "causal_lm",
        "output_dir": str(tmp_path / "lm"),
        "data": {"train": str(tmp_path / "corpus.txt"), "max_length": 24},
        "model": {"name_or_path": str(tmp_path / "llama")},
        "lm": {"block_size": 16},
        "training": {"max_steps": 2, "batch_size": 8},
    }
    path = _yaml(tmp_path, cfg)
    assert main(["validate", path]) == 0
    assert main(["finetune", path]) == 0
    results = json.loads((tmp_path / "lm" / "results.json").read_text())
    assert results["split_sizes"]["train"] > 0 and results["steps"] == 2
    from lmdistill.data.rawtext import read_documents

    docs = read_documents(str(tmp_path / "corpus.txt"), "data.train")
    assert len(docs) == 40 and docs[0] == "\n".join(texts[:3])  # one document per paragraph


def test_a_cached_causal_lm_teacher_never_runs_live(tmp_path, monkeypatch):
    """With the teacher cache and no on-policy batches, the live teacher is never built (nor moved)."""
    from lmdistill import engine

    from .test_causal_lm import tiny_llama, word_tokenizer

    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    (tmp_path / "c.txt").write_text("\n".join(t for t, _, _ in make_sentences(80, seed=2)))
    built = []
    real = engine.LiveTeacher

    def spy(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "LiveTeacher", spy)
    cfg = {
        "task": "causal_lm",
        "output_dir": str(tmp_path / "s"),
        "data": {"train": str(tmp_path / "c.txt"), "max_length": 24},
        "teacher": {"name_or_path": str(tmp_path / "llama")},
        "student": {"layers": [0, 2]},
        "lm": {"block_size": 16, "on_policy": 0.0},
        "training": {"max_steps": 3, "batch_size": 8, "teacher_cache": "auto"},
    }
    assert api.distill(cfg).steps == 3 and built == []
    cfg = {
        **cfg,
        "output_dir": str(tmp_path / "s2"),
        "lm": {**cfg["lm"], "on_policy": 0.5, "max_new_tokens": 2},
    }
    api.distill(cfg)
    assert built == [1]  # on-policy batches need the live teacher


def test_library_errors_never_escape_as_tracebacks(
    tmp_path, capsys, monkeypatch, sentiment_csv, tiny_bert_dir
):
    """An OSError anywhere (here: reading the config) becomes one line that names the file."""
    path = _yaml(tmp_path, _base(tmp_path, sentiment_csv, tiny_bert_dir))
    real_open = open

    def broken(file, *args, **kwargs):
        if str(file) == str(sentiment_csv):
            raise OSError(5, "Input/output error", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", broken)
    line = _line(capsys, ["finetune", path])
    assert str(sentiment_csv) in line and "input/output error" in line.lower()


def test_a_base_encoder_with_a_pooler_is_fine_tuned_as_a_classifier(tmp_path, tiny_mpnet_dir):
    """A sentence-transformers MPNet (all-mpnet-base-v2) or roberta-base folder holds a pooler that their
    sequence classifiers do not have: the unused pooler is allowed, the head is new, every other tensor is read."""
    from transformers import AutoModel

    from lmdistill.models.load import load_classifier

    base = AutoModel.from_pretrained(tiny_mpnet_dir, add_pooling_layer=True)  # MPNetModel with its pooler
    base.save_pretrained(tmp_path / "st")
    for f in tiny_mpnet_dir.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, tmp_path / "st" / f.name)
    model, _ = load_classifier(str(tmp_path / "st"), "model", num_labels=2)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    layer = "encoder.layer.1.attention.attn.q.weight"
    assert torch.equal(model.mpnet.get_parameter(layer), base.get_parameter(layer))
