"""``lmdistill export`` and ``lmdistill evaluate`` on an exported folder, through ``lmdistill.cli.main``."""

from __future__ import annotations

import json

import pytest

from lmdistill.cli import main


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT sentiment classifier whose labels are the data's (negative, positive)."""
    from tests.conftest import bert_tokenizer, tiny_bert

    d = tmp_path_factory.mktemp("classifier")
    tok = bert_tokenizer(d)
    model = tiny_bert(vocab=len(tok), layers=2)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_export") / "exp"
    assert main(["export", str(classifier), "--onnx", "--int8", "--output", str(out)]) == 0
    return out


def test_export_writes_fp32_and_int8_graphs_and_the_record(exported):
    record = json.loads((exported / "lmdistill-export.json").read_text())
    assert set(record["formats"]) == {"onnx", "onnx-int8"}
    for sub in ("onnx", "onnx-int8"):
        assert (exported / sub / "model.onnx").is_file() and (exported / sub / "config.json").is_file()
    assert record["formats"]["onnx"]["max_abs_diff_vs_pytorch"] <= 1e-4


def _metrics(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_an_exported_graph_gives_the_pytorch_models_metrics(
    exported, classifier, sentiment_csv, capsys
):
    torch_metrics = _metrics(capsys, ["evaluate", str(classifier), "--data", str(sentiment_csv)])
    onnx_metrics = _metrics(capsys, ["evaluate", str(exported / "onnx"), "--data", str(sentiment_csv)])
    assert onnx_metrics == pytest.approx(torch_metrics, abs=1e-9)


def test_evaluate_the_int8_graph_scores_every_example(exported, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["evaluate", str(exported / "onnx-int8"), "--data", str(sentiment_csv), "--output", str(out)]
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["n"] == 240 and set(summary["metrics"]) >= {"accuracy"}


def test_evaluate_on_the_export_top_folder_names_its_graphs(exported, sentiment_csv, capsys):
    line = _error(capsys, ["evaluate", str(exported), "--data", str(sentiment_csv)])
    assert "is the top folder of an export; give one of its graphs" in line
    assert str(exported / "onnx-int8") in line


def test_export_without_onnx_is_one_line_and_writes_nothing(tiny_bert_dir, tmp_path, capsys):
    line = _error(capsys, ["export", str(tiny_bert_dir), "--int8", "--output", str(tmp_path / "o")])
    assert line == "error: export: give --onnx (--int8 adds the int8 graph) or, for a LoRA student, --merge"
    assert not (tmp_path / "o").exists()


def test_export_of_a_folder_that_is_not_a_model_leaves_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = _error(capsys, ["export", str(tmp_path / "empty"), "--onnx", "--output", str(tmp_path / "o")])
    assert "config.json" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_an_earlier_export_is_replaced_only_with_overwrite(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", str(tiny_bert_dir), "--onnx", "--output", str(out)]) == 0
    line = _error(capsys, ["export", str(tiny_bert_dir), "--onnx", "--int8", "--output", str(out)])
    assert "holds an earlier export" in line and not (out / "onnx-int8").exists()
    assert main(["export", str(tiny_bert_dir), "--onnx", "--int8", "--output", str(out), "--overwrite"]) == 0
    assert (out / "onnx-int8" / "model.onnx").is_file()
