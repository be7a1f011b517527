"""compress with every step (compress.steps): a tiny BERT taken through layers kept, vocabulary trimmed, width
pruned, distilled, int8 and ONNX; report rows, saved folders, bad input and failures that leave nothing
half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lmdistill.cli import main
from tests.conftest import WORDS, bert_tokenizer, tiny_bert

UNUSED = [f"unused{i}" for i in range(40)]  # in the tokenizer, never in the data: trimming drops them
STEPS = ["trim_vocabulary", "prune_width", "distill", "quantize", "export"]
ROWS = {
    "teacher",
    "student",
    "baseline",
    "keep layers",
    "trim vocabulary",
    "prune width",
    "student int8",
    "teacher int8",
    "student onnx",
    "student onnx-int8",
    "teacher onnx",
    "teacher onnx-int8",
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 4-layer BERT 'teacher' (hidden 32, 2 heads of 16) with the data's labels and 40 unused tokens."""
    d = tmp_path_factory.mktemp("chain_teacher")
    tok = bert_tokenizer(d, words=WORDS + UNUSED)
    model = tiny_bert(vocab=len(tok), layers=4, seed=3)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(tmp_path, teacher, data, name: str = "c", **student) -> dict:
    return {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "data": {"train": str(data), "max_length": 32, "test_size": 0.2, "validation_size": 0.1},
        "teacher": {"name_or_path": str(teacher)},
        "student": {
            "init": "from_teacher",
            "num_layers": 2,
            "vocabulary": {},
            "width": {"heads": 1, "intermediate_size": 16, "calibration_examples": 64},
        }
        | student,
        "compress": {"steps": list(STEPS)},
        "training": {"epochs": 1, "batch_size": 16},
        "report": {
            "energy": False,
            "latency_repeats": 2,
            "warmup": 0,
            "speed_texts": 16,
            "bootstrap_resamples": 200,
        },
    }


@pytest.fixture(scope="module")
def chained(tmp_path_factory, teacher, sentiment_csv):
    from lmdistill.pipeline import compress

    tmp = tmp_path_factory.mktemp("chain")
    result = compress(_cfg(tmp, teacher, sentiment_csv))
    return result.output_dir, json.loads((result.output_dir / "report.json").read_text())


def test_the_report_has_a_row_per_step_and_runtime(chained):
    _, data = chained
    assert set(data["models"]) == ROWS
    runtimes = {k: m["runtime"] for k, m in data["models"].items()}
    assert runtimes["student onnx-int8"] == runtimes["teacher onnx-int8"] == "ONNX Runtime int8"
    assert runtimes["student onnx"] == runtimes["teacher onnx"] == "ONNX Runtime fp32"
    assert runtimes["student int8"] == runtimes["teacher int8"] == "PyTorch int8"
    assert {k for k, m in data["models"].items() if m["role"] == "step"} == {
        "keep layers",
        "trim vocabulary",
        "prune width",
    }
    for key, m in data["models"].items():
        acc = m["metrics"]["accuracy"]
        assert acc["low"] <= acc["value"] <= acc["high"], key
        assert sorted(x["batch_size"] for x in m["latency"]) == [1, 32], key
        assert m["size"]["weights_bytes"] > 0, key


def test_each_step_shrinks_the_student_as_configured(chained, teacher):
    from transformers import AutoTokenizer

    out, data = chained
    kept = len(AutoTokenizer.from_pretrained(teacher)) - len(UNUSED) - 3  # 'neutral', 'so', 'so-so' unused
    layers = json.loads((out / "steps" / "0-keep_layers" / "lmdistill-step.json").read_text())["info"]
    trimmed = json.loads((out / "steps" / "1-trim_vocabulary" / "lmdistill-step.json").read_text())["info"]
    pruned = json.loads((out / "steps" / "2-prune_width" / "lmdistill-step.json").read_text())["info"]
    assert (layers["layers"], layers["hidden_size"], layers["vocab_size"]) == (2, 32, kept + len(UNUSED) + 3)
    assert trimmed["vocab_size"] == trimmed["kept_size"] == kept
    assert layers["parameters"] - trimmed["parameters"] == (len(UNUSED) + 3) * 32  # one row of 32 per token
    assert (pruned["hidden_size"], pruned["heads"], pruned["intermediate_size"]) == (16, 1, 16)
    params = {
        k: data["models"][k]["parameters"]["total"] for k in ("keep layers", "trim vocabulary", "prune width")
    }
    assert params == {
        "keep layers": layers["parameters"],
        "trim vocabulary": trimmed["parameters"],
        "prune width": pruned["parameters"],
    }
    for role in ("student", "baseline"):  # the baseline is the same shrunken student
        assert data["models"][role]["parameters"]["total"] == pruned["parameters"]


def test_the_final_models_load_with_transformers_and_onnxruntime_alone(chained):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = chained
    model = AutoModelForSequenceClassification.from_pretrained(out / "student" / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "student" / "model")
    assert (model.config.hidden_size, model.config.vocab_size) == (16, len(tok))
    enc = tok(["the movie was great", "a dull plot and weak acting"], padding=True, return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"].tolist()[0]
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    session = ort.InferenceSession(str(out / "export" / "student" / "onnx" / "model.onnx"))
    feed = {i.name: enc[i.name].numpy() for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(["logits"], feed)[0], expected, atol=1e-4)
    onnx_tok = AutoTokenizer.from_pretrained(out / "export" / "student" / "onnx-int8")
    assert onnx_tok("the movie was great")["input_ids"] == tok("the movie was great")["input_ids"]


def test_a_resumed_chain_reuses_every_step(chained, teacher, sentiment_csv):
    from lmdistill.pipeline import compress

    out, _ = chained
    before = {
        p: p.stat().st_mtime
        for p in [
            out / "steps" / "2-prune_width" / "model" / "model.safetensors",
            out / "student" / "results.json",
            out / "baseline" / "results.json",
            out / "export" / "student" / "onnx-int8" / "model.onnx",
        ]
    }
    compress(_cfg(out.parent, teacher, sentiment_csv, out.name), resume=True)
    assert {p: p.stat().st_mtime for p in before} == before


def test_compress_fuse_re_exports_teacher_and_student_fused_and_reuses_the_trained_runs(
    chained, teacher, sentiment_csv
):
    """compress.fuse: true on a finished chain: nothing is retrained, both exports are made again with
    ONNX Runtime's fusion (one Attention per layer), and the report times the fused graphs."""
    from lmdistill.export import read_record
    from lmdistill.pipeline import compress

    out, _ = chained
    student = out / "student" / "results.json"
    before = student.stat().st_mtime
    cfg = _cfg(out.parent, teacher, sentiment_csv, out.name)
    cfg["compress"]["fuse"] = True
    compress(cfg, resume=True)
    assert student.stat().st_mtime == before
    for role, layers in (("student", 2), ("teacher", 4)):
        record = read_record(out / "export" / role / "onnx")
        assert record["fusion"]["applied"] is True and record["fusion"]["fused"]["Attention"] == layers
        assert read_record(out / "export" / role)["formats"]["onnx-int8"]["fused"] is True
    data = json.loads((out / "report.json").read_text())
    models = data["models"]  # the fused fp32 graph predicts as the PyTorch student does (max |diff| <= 1e-4)
    assert models["student onnx"]["metrics"]["accuracy"] == models["student"]["metrics"]["accuracy"]
    assert models["teacher onnx"]["metrics"]["accuracy"] == models["teacher"]["metrics"]["accuracy"]


# --------------------------------------------------------------------------------------------- bad input


def _error(tmp_path, capsys, cfg: dict, verb: str = "compress") -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main([verb, str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("width", "needle"),
    [
        ({"heads": 3}, "student.width.heads (3) is larger than the model's 2"),
        ({"intermediate_size": 65}, "student.width.intermediate_size (65) is larger than the model's 64"),
        ({"hidden_size": 20}, "student.width.hidden_size"),
    ],
)
def test_a_width_the_model_cannot_take_is_one_line_before_anything_is_written(
    tmp_path, capsys, teacher, sentiment_csv, width, needle
):
    line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, sentiment_csv, width=width))
    assert needle in line, line
    assert not (tmp_path / "c").exists()


def test_a_hidden_size_that_is_not_whole_heads_names_the_head_size(tmp_path, capsys, teacher, sentiment_csv):
    line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, sentiment_csv, width={"hidden_size": 20}))
    assert "16" in line and "20" in line, line


def test_a_vocabulary_the_data_does_not_cover_is_one_line(tmp_path, capsys, teacher):
    import pandas as pd

    rows = [("zzz qqq", "negative"), ("xxx yyy", "positive")] * 30
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "unknown.csv", index=False)
    line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, tmp_path / "unknown.csv"))
    assert "student.vocabulary: the texts contain no token beyond the special tokens" in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        (
            ["distill", "prune_width", "trim_vocabulary"],
            "compress.steps: prune_width must come before distill",
        ),
        (
            ["trim_vocabulary", "prune_width", "export", "distill"],
            "compress.steps: export must come after distill",
        ),
        (["trim_vocabulary", "prune_width"], "compress.steps must include distill"),
        (["trim_vocabulary", "prune_width", "distill", "export", "export"], "names export more than once"),
        (["trim_vocabulary", "distill"], "student.width is set but compress.steps has no prune_width"),
        (["trim_vocabulary", "prune_width", "distill", "onnx"], "compress.steps[3] must be one of"),
    ],
)
def test_steps_in_a_wrong_order_or_missing_are_refused(
    tmp_path, capsys, teacher, sentiment_csv, steps, needle
):
    cfg = _cfg(tmp_path, teacher, sentiment_csv)
    cfg["compress"]["steps"] = steps
    line = _error(tmp_path, capsys, cfg)
    assert needle in line, line


def test_student_width_in_a_distill_run_points_to_compress(tmp_path, capsys, teacher, sentiment_csv):
    cfg = _cfg(tmp_path, teacher, sentiment_csv)
    del cfg["student"]["vocabulary"], cfg["compress"]
    line = _error(tmp_path, capsys, cfg, verb="distill")
    assert "student.width is applied by compress (compress.steps: prune_width), not by distill" in line


def test_without_steps_the_configured_vocabulary_and_width_imply_them(teacher, sentiment_csv, tmp_path):
    from lmdistill.config.checks import compress_steps
    from lmdistill.tasks import load_config

    cfg = _cfg(tmp_path, teacher, sentiment_csv)
    del cfg["compress"]
    assert compress_steps(load_config(cfg, verb="compress")) == ["trim_vocabulary", "prune_width", "distill"]
    del cfg["student"]["vocabulary"], cfg["student"]["width"]
    assert compress_steps(load_config(cfg, verb="compress")) == ["distill"]


def test_a_failed_export_leaves_no_half_written_folder(tmp_path, teacher, sentiment_csv, monkeypatch):
    import lmdistill.export.entry as entry
    from lmdistill.errors import ExportError
    from lmdistill.pipeline import compress

    def fail(model_dir, out_dir, **kwargs):
        out_dir.mkdir(parents=True)
        (out_dir / "model.onnx").write_bytes(b"half")
        raise ExportError(f"{model_dir}: the exporter cannot trace this architecture")

    cfg = _cfg(tmp_path, teacher, sentiment_csv, width={"intermediate_size": 32})
    cfg["compress"]["steps"] = ["distill", "export"]
    del cfg["student"]["vocabulary"], cfg["student"]["width"]
    monkeypatch.setattr(entry, "export_onnx", fail)
    with pytest.raises(ExportError, match="cannot trace"):
        compress(cfg)
    out = tmp_path / "c"
    assert not (out / "export").exists() or list((out / "export").iterdir()) == []
    assert not (out / "report.json").exists()
    assert (out / "student" / "model" / "config.json").is_file()  # finished runs stay, for --resume


def test_int8_without_the_kernels_is_one_line_before_anything_is_written(
    tmp_path, capsys, teacher, sentiment_csv, monkeypatch
):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", ["none"])
    line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, sentiment_csv))
    assert "int8: this torch" in line and "has no quantized engine" in line
    assert not (tmp_path / "c").exists()


def test_a_top_n_below_the_always_kept_tokens_is_one_line(tmp_path, capsys, teacher, sentiment_csv):
    line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, sentiment_csv, vocabulary={"top_n": 3}))
    assert "student.vocabulary.top_n=3 is smaller than the" in line
    assert not (tmp_path / "c").exists()


def test_a_transfer_set_is_counted_for_the_vocabulary_and_distilled_from_the_cache(
    tmp_path, teacher, sentiment_csv
):
    """The demo's shape: a transfer set (data.unlabeled) scored once by the teacher (teacher_cache: auto) for a
    student whose trimmed tokenizer is not the teacher's; the transfer texts' words are kept."""
    from transformers import AutoTokenizer

    from lmdistill.pipeline import compress

    (tmp_path / "u.txt").write_text(
        "\n".join(["the unused1 film was good", "a unused2 plot and weak acting"] * 20)
    )
    cfg = _cfg(tmp_path, teacher, sentiment_csv)
    cfg["compress"]["steps"] = ["trim_vocabulary", "distill"]
    del cfg["student"]["width"]
    cfg["data"]["unlabeled"] = {"source": str(tmp_path / "u.txt")}
    cfg["training"]["teacher_cache"] = "auto"
    compress(cfg)
    tok = AutoTokenizer.from_pretrained(tmp_path / "c" / "student" / "model")
    vocab = tok.get_vocab()
    assert {"unused1", "unused2"} <= set(vocab) and "unused3" not in vocab
    results = json.loads((tmp_path / "c" / "student" / "results.json").read_text())
    assert results["split_sizes"]["unlabelled"] == 2  # the two distinct transfer texts


def test_a_chain_whose_teacher_compress_fine_tunes_first_runs(tmp_path, teacher, sentiment_csv):
    """No teacher.name_or_path: compress fine-tunes model.name_or_path as the teacher (whole: the student's
    vocabulary and width are not its settings), then trims and prunes the student made of it."""
    from transformers import AutoConfig

    from lmdistill.pipeline import compress

    cfg = _cfg(tmp_path, teacher, sentiment_csv)
    cfg["model"] = {"name_or_path": cfg.pop("teacher")["name_or_path"]}
    cfg["compress"]["steps"] = ["trim_vocabulary", "prune_width", "distill"]
    compress(cfg)
    out = tmp_path / "c"
    t = AutoConfig.from_pretrained(out / "teacher" / "model")
    s = AutoConfig.from_pretrained(out / "student" / "model")
    full = AutoConfig.from_pretrained(teacher)
    assert (t.num_hidden_layers, t.intermediate_size, t.vocab_size) == (4, 64, full.vocab_size)
    assert (s.num_hidden_layers, s.num_attention_heads, s.intermediate_size) == (2, 1, 16)
    assert s.vocab_size < t.vocab_size


def test_an_mpnet_teacher_goes_through_the_whole_chain(tmp_path, tiny_mpnet_dir, sentiment_csv):
    """The issue's second chain in small: an MPNet encoder fine-tuned by compress as the teacher, then layers
    kept, vocabulary trimmed, heads (the same in every layer: MPNet shares its relative position bias) and FFN
    pruned, distilled, int8 and ONNX; the student loads with transformers and onnxruntime alone."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmdistill.pipeline import compress

    cfg = _cfg(tmp_path, tiny_mpnet_dir, sentiment_csv, width={"heads": 2, "intermediate_size": 48})
    cfg["model"] = {"name_or_path": cfg.pop("teacher")["name_or_path"]}
    result = compress(cfg)
    data = json.loads((result.output_dir / "report.json").read_text())
    assert set(data["models"]) == ROWS
    student = result.output_dir / "student" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    tok = AutoTokenizer.from_pretrained(student)
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.num_attention_heads, c.hidden_size) == ("mpnet", 2, 2, 24)
    assert c.intermediate_size == 48 and c.vocab_size == len(tok) < len(
        AutoTokenizer.from_pretrained(tiny_mpnet_dir)
    )
    assert tuple(model.mpnet.encoder.relative_attention_bias.weight.shape) == (
        c.relative_attention_num_buckets,
        2,
    )
    enc = tok(["the movie was great", "a dull plot and weak acting"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    session = ort.InferenceSession(str(result.output_dir / "export" / "student" / "onnx" / "model.onnx"))
    feed = {i.name: enc[i.name].numpy() for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(["logits"], feed)[0], expected, atol=1e-4)
