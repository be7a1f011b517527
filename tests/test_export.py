"""lmdistill.export: ONNX graphs match PyTorch at other batch sizes and lengths than the traced ones, int8
is smaller and agrees with fp32, the runner behaves like a transformers model, torch int8 replaces every
Linear, and every failure is one line with nothing left in the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lmdistill.errors import ExportError, LmdistillError
from lmdistill.export import (
    MARKER,
    OnnxRunner,
    detect_kind,
    entry,
    export_model,
    export_onnx,
    quantize_int8,
    torch_dynamic_int8,
)
from lmdistill.export import onnx as onnx_mod
from lmdistill.export.onnx import ATOL

from .conftest import WORDS, bert_tokenizer, tiny_bert

# ------------------------------------------------------------------------------------------- models


def word_tokenizer():
    """A Llama-like WordLevel tokenizer (BOS in front, <pad> = 0) built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _bert_head(cls_name: str, vocab: int, hidden: int = 32, layers: int = 2, **extra):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        **extra,
    )
    return getattr(transformers, cls_name)(cfg)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_bert_dir, tiny_mpnet_dir):
    """name -> (folder, auto class): every kind, and BERT-, MPNet- and Llama-like models."""
    from transformers import LlamaConfig, LlamaForCausalLM, MPNetForSequenceClassification

    dirs = {"bert-cls": (tiny_bert_dir, "AutoModelForSequenceClassification")}
    root = tmp_path_factory.mktemp("export_models")
    tok = bert_tokenizer(root)
    for name, cls, auto, labels in [
        ("bert-qa", "BertForQuestionAnswering", "AutoModelForQuestionAnswering", 2),  # start, end
        ("bert-token", "BertForTokenClassification", "AutoModelForTokenClassification", 3),
        ("bert-mlm", "BertForMaskedLM", "AutoModelForMaskedLM", 2),
    ]:
        _bert_head(cls, len(tok), num_labels=labels).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = (root / name, auto)
    # MPNet base encoder (RoBERTa-like positions from the pad id, no token_type_ids)
    MPNetForSequenceClassification.from_pretrained(tiny_mpnet_dir).mpnet.save_pretrained(root / "mpnet-base")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_mpnet_dir).save_pretrained(root / "mpnet-base")
    dirs["mpnet-base"] = (root / "mpnet-base", "AutoModel")
    ltok = word_tokenizer()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(ltok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    )
    llama.save_pretrained(root / "llama")
    ltok.save_pretrained(root / "llama")
    dirs["llama"] = (root / "llama", "AutoModelForCausalLM")
    return dirs


@pytest.fixture(scope="module")
def exported(model_dirs, tmp_path_factory):
    """name -> exported fp32 ONNX folder (one export per model for the whole module)."""
    root = tmp_path_factory.mktemp("exported")
    return {name: export_onnx(folder, root / name) for name, (folder, _) in model_dirs.items()}


def _reference(folder, auto: str):
    import transformers

    return getattr(transformers, auto).from_pretrained(folder).eval()


def _padded_batch(tokenizer, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """``batch`` sentences tokenised and padded to exactly ``length`` tokens: rows of different lengths."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, length - 1)))) for _ in range(batch)]
    return dict(
        tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    )


def _assert_one_line(err: pytest.ExceptionInfo) -> None:
    assert isinstance(err.value, LmdistillError)
    assert "\n" not in str(err.value) and len(str(err.value)) <= 300


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# ------------------------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    "arch, kind",
    [
        ("BertForSequenceClassification", "sequence-classification"),
        ("RobertaForTokenClassification", "token-classification"),
        ("DistilBertForQuestionAnswering", "question-answering"),
        ("BertForMaskedLM", "masked-lm"),
        ("LlamaForCausalLM", "causal-lm"),
        ("GPT2LMHeadModel", "causal-lm"),
        ("MPNetModel", "base"),
        ("BertModel", "base"),
    ],
)
def test_detect_kind_from_architectures(arch, kind):
    assert detect_kind({"architectures": [arch]}) == kind


@pytest.mark.parametrize("arch", ["BertForNextSentencePrediction", "T5ForConditionalGeneration"])
def test_detect_kind_refuses_an_unknown_head(arch):
    with pytest.raises(ExportError, match=arch) as err:
        detect_kind({"architectures": [arch]})
    _assert_one_line(err)


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["bert-cls", "bert-qa", "bert-token", "bert-mlm", "mpnet-base", "llama"])
def test_onnx_matches_pytorch_at_two_batch_sizes_and_lengths(name, model_dirs, exported):
    from transformers import AutoTokenizer

    folder, auto = model_dirs[name]
    model, runner = _reference(folder, auto), OnnxRunner(exported[name])
    tok = AutoTokenizer.from_pretrained(folder)
    outputs = json.loads((exported[name] / MARKER).read_text())["outputs"]
    for batch, length in [(2, 6), (5, 19)]:  # the graph was traced at (2, 8)
        x = _padded_batch(tok, batch, length, seed=length)
        assert (x["attention_mask"] == 0).any()  # padding is exercised
        with torch.inference_mode():
            ref = model(**x)
        got = runner(**x)
        for out in outputs:
            r, g = getattr(ref, out), getattr(got, out)
            assert g.dtype == torch.float32 and g.shape == r.shape
            if r.dim() >= 2 and r.shape[1] == length:  # per-token output: padded positions are undefined
                keep = x["attention_mask"].bool()
                r, g = r[keep], g[keep]
            assert (g - r).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    "name, inputs",
    [
        ("bert-cls", ["input_ids", "attention_mask", "token_type_ids"]),
        ("mpnet-base", ["input_ids", "attention_mask"]),
        ("llama", ["input_ids", "attention_mask"]),
    ],
)
def test_graph_inputs_are_the_tokenizers_with_dynamic_batch_and_sequence(name, inputs, exported):
    graph = onnx.load(str(exported[name] / "model.onnx"))
    assert [i.name for i in graph.graph.input] == inputs
    for i in graph.graph.input:
        dims = [d.dim_param for d in i.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"]
    first_out = graph.graph.output[0].type.tensor_type.shape.dim
    assert first_out[0].dim_param == "batch"


def test_export_record_and_side_files(model_dirs, exported):
    out = exported["bert-cls"]
    files = _leftovers(out)
    assert "model.onnx" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith((".safetensors", ".bin")) for f in files)  # weights are in the graph only
    record = json.loads((out / MARKER).read_text())
    graph = onnx.load(str(out / "model.onnx"))
    assert record["kind"] == "sequence-classification"
    assert record["source"] == str(model_dirs["bert-cls"][0].resolve())
    assert list(record["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(record["outputs"]) == ["logits"]
    assert record["opset"] == next(o.version for o in graph.opset_import if o.domain == "")
    assert record["exporter"] == "torch.onnx.export(dynamo=False)"
    assert set(record["versions"]) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert record["check"]["max_abs_diff"] <= record["check"]["atol"] == ATOL
    assert record["weights_bytes"] == (out / "model.onnx").stat().st_size


def test_sentence_transformers_modules_are_copied(model_dirs, tmp_path):
    import shutil

    src = tmp_path / "st"
    shutil.copytree(model_dirs["mpnet-base"][0], src)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (src / "checkpoint-10").mkdir()  # not a module: not copied
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (src / "modules.json").write_text(json.dumps(modules))
    out = export_onnx(src, tmp_path / "out")
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert (out / "modules.json").is_file() and not (out / "checkpoint-10").exists()
    assert json.loads((out / MARKER).read_text())["kind"] == "base"


@pytest.mark.slow
def test_dynamo_exporter_matches_pytorch(tmp_path):
    tok = bert_tokenizer(tmp_path)
    model = tiny_bert(vocab=len(tok), layers=1)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = export_onnx(tmp_path / "m", tmp_path / "out", exporter="dynamo")
    record = json.loads((out / MARKER).read_text())
    assert record["exporter"] == "torch.onnx.export(dynamo=True)"
    x = _padded_batch(tok, 3, 11, seed=1)
    with torch.inference_mode():
        ref = model.eval()(**x).logits
    assert (OnnxRunner(out)(**x).logits - ref).abs().max().item() <= ATOL


# ------------------------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def embedding_heavy(tmp_path_factory):
    """A 1-layer classifier whose 2000 x 64 word embedding is 3/4 of its parameters, exported with int8."""
    root = tmp_path_factory.mktemp("heavy")
    tok = bert_tokenizer(root)
    model = _bert_head("BertForSequenceClassification", 2000, hidden=64, layers=1, num_labels=3)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return export_model(root / "model", root / "export", int8=True)


def test_int8_is_at_least_3x_smaller_than_fp32(embedding_heavy):
    from lmdistill.report.measure import size_on_disk

    root = Path(embedding_heavy["output"])
    fp32, int8 = (
        (root / "onnx" / "model.onnx").stat().st_size,
        (root / "onnx-int8" / "model.onnx").stat().st_size,
    )
    assert fp32 / int8 >= 3.0  # measured 3.31
    assert embedding_heavy["formats"]["onnx-int8"]["size_ratio_vs_fp32"] == pytest.approx(fp32 / int8)
    assert size_on_disk(root / "onnx-int8")["weights_bytes"] == int8  # .onnx counts as weights


def test_int8_argmax_agrees_with_fp32_on_most_inputs(embedding_heavy):
    root = Path(embedding_heavy["output"])
    fp32, int8 = OnnxRunner(root / "onnx"), OnnxRunner(root / "onnx-int8")
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 2000, (300, 12), generator=gen)
    agree = (fp32(input_ids=ids).logits.argmax(-1) == int8(input_ids=ids).logits.argmax(-1)).float().mean()
    assert agree.item() >= 0.95  # measured 0.99 on this random (near-tied) model
    record = json.loads((root / "onnx-int8" / MARKER).read_text())
    assert record["precision"] == "int8" and record["quantization"]["op_types"] == [
        "MatMul",
        "Gather",
        "Attention",
        "EmbedLayerNormalization",
    ]
    assert record["check"]["max_abs_diff"] > 0 and 0.9 <= record["check"]["argmax_agreement"] <= 1.0


def test_int8_of_a_question_answering_graph_compares_start_and_end(exported, tmp_path):
    out = quantize_int8(exported["bert-qa"], tmp_path / "qa-int8")
    check = json.loads((out / MARKER).read_text())["check"]
    assert check["against"] == "onnx fp32" and 0.0 < check["max_abs_diff"] < 0.1
    rows = 1 + 3 + 4  # the check's batches: (1, 5), (3, 17), (4, 32)
    assert (check["argmax_agreement"] * 2 * rows) == pytest.approx(
        round(check["argmax_agreement"] * 2 * rows)
    )
    assert check["argmax_agreement"] >= 0.5  # start and end position per row: 16 predictions
    result = OnnxRunner(out)(input_ids=torch.randint(5, 20, (2, 7)))
    assert result.start_logits.shape == result.end_logits.shape == (2, 7)


# ------------------------------------------------------------------------------------------- runner


def test_runner_drops_inputs_the_graph_does_not_take(exported, model_dirs):
    from transformers import AutoTokenizer

    runner = OnnxRunner(exported["mpnet-base"])
    x = _padded_batch(AutoTokenizer.from_pretrained(model_dirs["mpnet-base"][0]), 3, 9, seed=2)
    plain = runner(**x).last_hidden_state
    extra = runner(
        **x, token_type_ids=torch.ones_like(x["input_ids"]), labels=torch.zeros(3)
    ).last_hidden_state
    assert torch.equal(plain, extra)
    assert runner.input_names == ["input_ids", "attention_mask"]


def test_runner_fills_a_missing_mask_and_token_types_as_transformers_does(exported):
    runner = OnnxRunner(exported["bert-cls"])
    ids = torch.randint(5, 20, (2, 7))
    full = runner(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    assert torch.equal(runner(input_ids=ids).logits, full.logits)


def test_runner_answers_like_a_transformers_model(exported):
    runner = OnnxRunner(exported["bert-qa"], threads=1)
    assert runner.device == torch.device("cpu") and runner.threads == 1
    assert runner.config.model_type == "bert" and runner.eval() is runner and runner.to("cpu") is runner
    out = runner(input_ids=torch.randint(5, 20, (2, 7)))
    assert out.start_logits.shape == out.end_logits.shape == (2, 7) and out.logits is None
    with pytest.raises(ExportError):
        runner.to("cuda")


def test_runner_runs_in_the_report_measurements(exported, model_dirs):
    from transformers import AutoTokenizer

    from lmdistill.report.measure import measure_latency, run_inference

    runner = OnnxRunner(exported["bert-cls"])
    tok = AutoTokenizer.from_pretrained(model_dirs["bert-cls"][0])
    batches = [_padded_batch(tok, 4, 10, seed=s) for s in range(3)]
    assert run_inference(runner, batches) == 12
    timing = measure_latency(runner, tok, ["good movie", "bad plot"], batch_size=2, repeats=2, warmup=1)
    assert timing["n"] == 2 and timing["batch_size"] == 2


# ------------------------------------------------------------------------------------------- torch int8


def test_torch_int8_replaces_every_linear_and_predicts_close_to_fp32():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = tiny_bert(vocab=64).eval()
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    q = torch_dynamic_int8(model)
    assert sum(isinstance(m, nn.Linear) for m in q.modules()) == 0
    assert (
        sum(isinstance(m, DynamicLinear) for m in q.modules()) == n_linear == 4 * 6 + 2
    )  # 6 per layer + pooler, head
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == n_linear  # the original is untouched
    ids = torch.randint(5, 64, (200, 10), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a, b = model(input_ids=ids).logits, q(input_ids=ids).logits
    assert (a - b).abs().max().item() < 0.05  # measured
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.95


def test_torch_int8_without_a_quantized_engine_is_one_line(monkeypatch):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", ["none"])
    with pytest.raises(ExportError, match="no quantized engine") as err:
        torch_dynamic_int8(tiny_bert(vocab=64))
    _assert_one_line(err)


# ------------------------------------------------------------------------------------------- failures


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    with pytest.raises(ExportError, match="not a model folder") as err:
        export_model(tmp_path / "src", tmp_path / "out")
    _assert_one_line(err)
    assert _leftovers(tmp_path) == ["src"]


def test_an_unknown_head_leaves_nothing(tmp_path):
    tok = bert_tokenizer(tmp_path)
    _bert_head("BertForNextSentencePrediction", len(tok)).save_pretrained(tmp_path / "nsp")
    with pytest.raises(ExportError, match="BertForNextSentencePrediction") as err:
        export_model(tmp_path / "nsp", tmp_path / "out")
    _assert_one_line(err)
    assert not (tmp_path / "out").exists()


def _odd_model_dir(tmp_path):
    """A custom architecture whose forward uses torch.fft.rfft, which the ONNX exporter rejects."""
    from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput

    class OddConfig(PretrainedConfig):
        model_type = "lmdistill-odd"

        def __init__(self, vocab_size=16, hidden_size=8, **kw):
            super().__init__(**kw)
            self.vocab_size, self.hidden_size = vocab_size, hidden_size

    class OddModel(PreTrainedModel):
        config_class = OddConfig

        def __init__(self, config):
            super().__init__(config)
            self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
            self.post_init()

        def forward(self, input_ids, attention_mask=None, return_dict=True):
            return BaseModelOutput(last_hidden_state=torch.fft.rfft(self.emb(input_ids), dim=-1).abs())

    AutoConfig.register("lmdistill-odd", OddConfig, exist_ok=True)
    AutoModel.register(OddConfig, OddModel, exist_ok=True)
    OddModel(OddConfig()).save_pretrained(tmp_path / "odd")
    return tmp_path / "odd"


def test_an_architecture_the_exporter_cannot_trace(tmp_path):
    src = _odd_model_dir(tmp_path)
    with pytest.raises(ExportError, match="OddModel cannot be exported to ONNX.*fft_rfft") as err:
        export_model(src, tmp_path / "out", int8=True)
    _assert_one_line(err)
    assert _leftovers(tmp_path) == ["odd"]


def test_a_failed_check_is_one_line_and_leaves_nothing(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_mod, "max_difference", lambda *a, **k: 0.5)
    with pytest.raises(ExportError, match=r"max \|diff\| 0.5 > 0.0001") as err:
        export_model(model_dirs["bert-cls"][0], tmp_path / "out")
    _assert_one_line(err)
    assert _leftovers(tmp_path) == []


def test_int8_without_the_quantizer_fails_before_any_work(model_dirs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import raises ImportError
    monkeypatch.setattr(entry, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(ExportError, match="onnxruntime.quantization is not importable") as err:
        export_model(model_dirs["bert-cls"][0], tmp_path / "out", int8=True)
    _assert_one_line(err)
    assert _leftovers(tmp_path) == []


def test_int8_where_onnxruntime_lacks_the_int8_kernels(model_dirs, exported, tmp_path, monkeypatch):
    import onnxruntime as ort

    real = ort.InferenceSession

    def no_int8_kernels(path, *args, **kwargs):  # as a build without MatMulInteger answers
        if b"MatMulInteger" in Path(path).read_bytes():
            raise RuntimeError(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for MatMulInteger(10)"
            )
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", no_int8_kernels)
    with pytest.raises(ExportError, match="cannot run the quantized graph.*MatMulInteger") as err:
        quantize_int8(exported["bert-cls"], tmp_path / "int8")
    _assert_one_line(err)
    with pytest.raises(ExportError, match="MatMulInteger"):
        export_model(model_dirs["bert-cls"][0], tmp_path / "out", int8=True)
    assert _leftovers(tmp_path) == []


def test_an_output_folder_with_foreign_files_is_refused_and_untouched(model_dirs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="did not create") as err:
        export_model(model_dirs["bert-cls"][0], tmp_path / "out")
    _assert_one_line(err)
    assert _leftovers(tmp_path / "out") == ["notes.txt"] and _leftovers(tmp_path) == ["out"]


def test_an_earlier_export_is_replaced_only_with_overwrite(model_dirs, tmp_path):
    first = export_model(model_dirs["bert-cls"][0], tmp_path / "out")
    assert _leftovers(tmp_path / "out") == [MARKER, "onnx"]
    with pytest.raises(ExportError, match="overwrite=True") as err:
        export_model(model_dirs["bert-token"][0], tmp_path / "out", int8=True)
    _assert_one_line(err)
    assert json.loads((tmp_path / "out" / MARKER).read_text())["kind"] == first["kind"]
    second = export_model(model_dirs["bert-token"][0], tmp_path / "out", int8=True, overwrite=True)
    assert second["kind"] == "token-classification"
    assert _leftovers(tmp_path / "out") == [MARKER, "onnx", "onnx-int8"]
    assert _leftovers(tmp_path) == ["out"]  # no temporary or old sibling is left


def test_onnx_false_is_refused(model_dirs, tmp_path):
    with pytest.raises(ExportError, match="torch int8 is applied at load time") as err:
        export_model(model_dirs["bert-cls"][0], tmp_path / "out", onnx=False, int8=True)
    _assert_one_line(err)


def test_export_imports_no_higher_layer():
    import subprocess
    import sys

    code = (
        "import sys, lmdistill.export; print(' '.join(m for m in sys.modules if m.startswith('lmdistill')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    higher = ("api", "run", "pipeline", "cli", "engine", "objective", "tasks")
    assert [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in higher] == []
    assert "lmdistill.export.runtime" in loaded
