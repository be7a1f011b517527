"""ONNX Runtime's transformer fusion at export (lmdistill.export.fuse, asked with fuse=True / --fuse /
compress.fuse): a BERT or RoBERTa graph gets one fused Attention per layer and still matches PyTorch; int8 of it quantizes the fused operators; anything else, an
incomplete fusion or a fused graph that fails the check keeps the plain graph and says why."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from lmdistill.cli import main
from lmdistill.export import MARKER, OnnxRunner, export_model, export_onnx
from lmdistill.export import onnx as onnx_mod
from lmdistill.export.fuse import fuse_graph
from lmdistill.export.onnx import ATOL

from .conftest import WORDS, bert_tokenizer


def _ops(folder) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def _save(folder, cls_name: str, tok, *, hidden: int, heads: int, layers: int = 2, vocab: int | None = None):
    import transformers

    torch.manual_seed(0)
    config_cls = transformers.RobertaConfig if cls_name.startswith("Roberta") else transformers.BertConfig
    extra = {"pad_token_id": tok.pad_token_id} if cls_name.startswith("Roberta") else {}
    cfg = config_cls(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=70,
        num_labels=3,
        **extra,
    )
    getattr(transformers, cls_name)(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse_models")
    tok = bert_tokenizer(root)
    return {
        # 3 heads of 16: a head count and width the optimizer cannot guess from the graph (as after pruning)
        "bert": _save(root / "bert", "BertForSequenceClassification", tok, hidden=48, heads=3),
        "roberta": _save(root / "roberta", "RobertaForSequenceClassification", tok, hidden=32, heads=2),
        "bert-big-vocab": _save(
            root / "big", "BertForSequenceClassification", tok, hidden=32, heads=2, vocab=4000
        ),
    }


def _pytorch_logits(folder, batch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()  # SDPA, as trained
    with torch.inference_mode():
        return model(**batch).logits


def _batch(folder):
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in (3, 11, 7)]
    return dict(AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_a_bert_or_roberta_graph_gets_one_fused_attention_per_layer_and_matches_pytorch(
    name, models, tmp_path
):
    out = export_onnx(models[name], tmp_path / name, fuse=True)
    record = json.loads((out / MARKER).read_text())
    assert record["fusion"]["applied"] is True and record["fusion"]["fused"]["Attention"] == 2
    ops = _ops(out)
    assert ops["Attention"] == 2 and ops["Softmax"] == 0  # the attention's own nodes are gone
    assert record["check"]["max_abs_diff"] <= ATOL
    batch = _batch(models[name])
    got = OnnxRunner(out)(**batch).logits
    assert torch.allclose(got, _pytorch_logits(models[name], batch), atol=ATOL)


def test_by_default_the_traced_graph_is_kept(models, tmp_path):
    out = export_onnx(models["bert"], tmp_path / "plain")
    record = json.loads((out / MARKER).read_text())
    assert record["fusion"] == {"applied": False, "reason": "not asked (fuse=False)"}
    ops = _ops(out)
    assert ops["Attention"] == 0 and ops["Softmax"] == 2


def test_a_model_type_the_fusion_does_not_cover_is_exported_plain(tiny_mpnet_dir, tmp_path):
    out = export_onnx(tiny_mpnet_dir, tmp_path / "mpnet", fuse=True)
    fusion = json.loads((out / MARKER).read_text())["fusion"]
    assert fusion["applied"] is False and "'mpnet'" in fusion["reason"]
    assert _ops(out)["Attention"] == 0


def test_an_incomplete_fusion_writes_nothing_and_says_how_many_layers_fused(models, tmp_path):
    from transformers import AutoConfig

    kind = "sequence-classification"
    model = onnx_mod.load_for_export(models["bert"], kind, eager=True)
    onnx_mod._export(
        model, onnx_mod.input_names(models["bert"], model), kind, tmp_path / "eager.onnx", None, "torchscript"
    )
    config = AutoConfig.from_pretrained(models["bert"])
    config.num_hidden_layers = 3  # the graph has 2: two of three "layers" fuse
    found = fuse_graph(tmp_path / "eager.onnx", tmp_path / "fused.onnx", config)
    assert found["applied"] is False and found["reason"].startswith("2 of 3 attention layers fused")
    assert not (tmp_path / "fused.onnx").exists()
    config.num_hidden_layers = 2
    assert fuse_graph(tmp_path / "eager.onnx", tmp_path / "fused.onnx", config)["applied"] is True
    assert (tmp_path / "fused.onnx").is_file()
    # traced with SDPA attention (what export does with fuse=False), no attention matches the pattern
    plain = export_onnx(models["bert"], tmp_path / "plain", fuse=False)
    found = fuse_graph(plain / "model.onnx", tmp_path / "sdpa.onnx", config)
    assert (
        found["reason"].startswith("0 of 2 attention layers fused") and not (tmp_path / "sdpa.onnx").exists()
    )


def test_a_fused_graph_that_fails_the_check_is_dropped_for_the_plain_one(models, tmp_path, monkeypatch):
    real = onnx_mod.max_difference

    calls = []

    def spy(model, session, *args):
        calls.append(session)
        diff = real(model, session, *args)
        return 1.0 if len(calls) == 1 else diff  # the first check is the fused graph's

    monkeypatch.setattr(onnx_mod, "max_difference", spy)
    out = export_onnx(models["bert"], tmp_path / "dropped", fuse=True)
    fusion = json.loads((out / MARKER).read_text())["fusion"]
    assert fusion["applied"] is False and fusion["reason"] == "the fused graph differs from PyTorch by 1"
    assert _ops(out)["Attention"] == 0 and sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [
        "model.onnx"
    ]


def test_int8_of_a_fused_graph_quantizes_the_fused_operators(models, tmp_path):
    summary = export_model(models["bert-big-vocab"], tmp_path / "exp", onnx=True, int8=True, fuse=True)
    assert summary["formats"]["onnx"]["fused"] is True and summary["formats"]["onnx-int8"]["fused"] is True
    ops = _ops(tmp_path / "exp" / "onnx-int8")
    assert ops["QAttention"] == 2 and ops["Attention"] == 0 and ops["QEmbedLayerNormalization"] == 1
    assert summary["formats"]["onnx-int8"]["size_ratio_vs_fp32"] >= 3.0
    batch = _batch(models["bert-big-vocab"])
    fp32 = OnnxRunner(tmp_path / "exp" / "onnx")(**batch).logits
    int8 = OnnxRunner(tmp_path / "exp" / "onnx-int8")(**batch).logits
    assert (int8 - fp32).abs().max() < 0.1


def test_cli_fuse(models, tmp_path, capsys):
    assert main(["export", str(models["bert"]), "--onnx", "--fuse", "--output", str(tmp_path / "a")]) == 0
    assert ", fused" in capsys.readouterr().out
    assert main(["export", str(models["bert"]), "--onnx", "--output", str(tmp_path / "b")]) == 0
    assert ", fused" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / MARKER).read_text())["formats"]["onnx"]["fused"] is False
    assert _ops(tmp_path / "a" / "onnx")["Attention"] == 2 and _ops(tmp_path / "b" / "onnx")["Attention"] == 0


def test_compress_exports_with_its_fuse_setting_and_redoes_an_export_made_the_other_way(models, tmp_path):
    from lmdistill import chain

    folder = tmp_path / "export" / "student"
    chain._export(models["bert"], folder, False, False, True)
    first = (folder / MARKER).stat().st_mtime_ns
    assert json.loads((folder / MARKER).read_text())["formats"]["onnx"]["fused"] is True
    chain._export(models["bert"], folder, False, False, True)  # same setting: reused
    assert (folder / MARKER).stat().st_mtime_ns == first
    chain._export(models["bert"], folder, False, False, False)  # compress.fuse turned off: exported again
    assert json.loads((folder / MARKER).read_text())["formats"]["onnx"]["fused"] is False
    assert _ops(folder / "onnx")["Attention"] == 0
