"""Teacher assistants (``compress.assistants``; Mirzadeh et al. 2020): compress chains teacher -> assistant ->
student, each a normal distill run whose saved model is the next run's teacher; the report and chain.json list
the chain; bad chains fail in one line before anything is trained."""

from __future__ import annotations

import json

import pytest
import yaml

from lmdistill.cli import main
from tests.conftest import bert_tokenizer, tiny_bert


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 4-layer BERT 'teacher' with the data's labels."""
    d = tmp_path_factory.mktemp("ta_teacher")
    tok = bert_tokenizer(d)
    model = tiny_bert(vocab=len(tok), layers=4, seed=3)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(tmp_path, teacher, data, assistants, **student) -> dict:
    return {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp_path / "ta"),
        "data": {"train": str(data), "max_length": 24, "test_size": 0.2, "validation_size": 0.1},
        "teacher": {"name_or_path": str(teacher)},
        "student": {"init": "from_teacher", "num_layers": 2} | student,
        "compress": {"assistants": assistants},
        "training": {"max_steps": 6, "batch_size": 16},
        "report": {
            "energy": False,
            "latency_repeats": 2,
            "warmup": 0,
            "speed_texts": 16,
            "bootstrap_resamples": 100,
            "bf16": False,
        },
    }


@pytest.fixture(scope="module")
def chained(tmp_path_factory, teacher, sentiment_csv):
    from lmdistill.pipeline import compress

    tmp = tmp_path_factory.mktemp("ta")
    result = compress(_cfg(tmp, teacher, sentiment_csv, [{"num_layers": 3}]))
    return result.output_dir


def test_the_assistant_is_distilled_from_the_teacher_and_teaches_the_student(chained, teacher):
    out = chained
    assistant = yaml.safe_load((out / "assistant-1" / "config.yaml").read_text())
    assert assistant["teacher"]["name_or_path"] == str(teacher)
    assert assistant["student"]["num_layers"] == 3 and assistant["student"]["init"] == "from_teacher"
    student = yaml.safe_load((out / "student" / "config.yaml").read_text())
    assert student["teacher"]["name_or_path"] == str(out / "assistant-1" / "model")
    baseline = yaml.safe_load((out / "baseline" / "config.yaml").read_text())
    assert baseline["teacher"]["name_or_path"] == str(out / "assistant-1" / "model")  # same student init
    assert json.loads((out / "assistant-1" / "results.json").read_text())["role"] == "assistant-1"


def test_the_chain_lists_each_model_its_teacher_layers_size_and_metric(chained, teacher):
    out = chained
    chain = json.loads((out / "chain.json").read_text())["chain"]
    assert [c["model"] for c in chain] == ["teacher", "assistant 1", "student"]
    assert [c["layers"] for c in chain] == [4, 3, 2]
    assert [c["teacher"] for c in chain] == [None, str(teacher), str(out / "assistant-1" / "model")]
    sizes = [c["parameters"] for c in chain]
    assert sizes[0] > sizes[1] > sizes[2]
    report = json.loads((out / "report.json").read_text())
    for c in chain:
        assert c["metrics"]["accuracy"] == report["models"][c["model"]]["metrics"]["accuracy"]["value"]
    row = report["models"]["assistant 1"]
    assert (row["role"], row["step"]) == ("step", "teacher assistant")
    assert row["parameters"]["total"] == sizes[1]


@pytest.mark.parametrize(
    ("assistants", "student", "message"),
    [
        ([{}], {}, "compress.assistants[0]: give layers or num_layers"),
        ([{"num_layers": 3, "layers": [0, 1, 2]}], {}, "compress.assistants[0]: give layers or num_layers"),
        ([{"num_layers": 3}, {"num_layers": 3}], {}, "compress.assistants[1] keeps 3 layers, not fewer"),
        ([{"layers": [0, 0, 1]}], {}, "compress.assistants[0].layers must name distinct"),
        ([{"num_layers": 2}], {}, "the student keeps 2 layers of the last assistant, which has 2"),
        ([{"num_layers": 3}], {"num_layers": None, "layers": [0, 3]}, "the last assistant has layers 0 to 2"),
        ([{"num_layers": 3, "depth": 2}], {}, "unknown key 'compress.assistants[0].depth'"),
    ],
)
def test_a_bad_chain_is_one_line_before_anything_is_written(
    tmp_path, capsys, teacher, sentiment_csv, assistants, student, message
):
    cfg = _cfg(tmp_path, teacher, sentiment_csv, assistants, **student)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["compress", str(path)]) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if message in x)
    assert len(line) <= 300
    assert not (tmp_path / "ta").exists()
