"""LoRA students (student.lora, through PEFT): only the adapters train and are saved, a merged export equals
base + adapters, --resume restores the adapters, and a target module that does not exist is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmdistill.errors import ModelError
from lmdistill.models.lora import apply_lora, load_lora, merge_and_save

from .test_causal_lm import _cfg, tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny Llama teacher and a smaller pretrained student with the same tokenizer, and a text file."""
    import pandas as pd

    from .conftest import make_sentences

    root = tmp_path_factory.mktemp("lora")
    tok = word_tokenizer()
    for name, layers, seed in (("teacher", 4, 0), ("student", 2, 5)):
        tiny_llama(len(tok), layers=layers, seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(120, seed=2)]}).to_csv(
        root / "text.csv", index=False
    )
    return root


def _lora_cfg(tmp_path, dirs, name: str, **training) -> dict:
    return _cfg(
        tmp_path,
        name,
        data={"train": str(dirs / "text.csv")},
        teacher={"name_or_path": str(dirs / "teacher")},
        student={
            "init": "pretrained",
            "name_or_path": str(dirs / "student"),
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        },
        lm={"block_size": 16},
        training={"max_steps": 4, "learning_rate": 1e-2, **training},
    )


def test_only_the_adapters_train_and_are_saved(tmp_path, dirs):
    from lmdistill import api

    api.distill(_lora_cfg(tmp_path, dirs, "run"))
    model_dir = tmp_path / "run" / "model"
    files = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files and "base" not in files  # the base is the pretrained student
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((dirs / "student").resolve())
    assert set(config["target_modules"]) == {"q_proj", "v_proj"} and config["r"] == 4
    adapters = load_file(model_dir / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapters.items())  # B starts at 0: it trained
    peft_model, _ = load_lora(model_dir)
    base = load_file(dirs / "student" / "model.safetensors")
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer.", ".")
            assert torch.equal(value, base[key]), key  # the student's own weights did not change


def test_merged_export_equals_base_plus_adapters(tmp_path, dirs):
    from transformers import AutoModelForCausalLM

    from lmdistill import api

    api.distill(_lora_cfg(tmp_path, dirs, "run"))
    merged_dir = merge_and_save(tmp_path / "run" / "model", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    peft_model, _ = load_lora(tmp_path / "run" / "model")
    peft_model.eval()
    ids = torch.randint(4, len(word_tokenizer()), (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
        plain = AutoModelForCausalLM.from_pretrained(dirs / "student").eval()
        assert (
            plain(input_ids=ids).logits - merged(input_ids=ids).logits
        ).abs().max() > 1e-4  # adapters count
    # weight by weight: W = W0 + (alpha / r) B A on q_proj and v_proj, every other weight W0 exactly
    merged_w = load_file(merged_dir / "model.safetensors")
    base = load_file(dirs / "student" / "model.safetensors")
    lora = load_file(tmp_path / "run" / "model" / "adapter_model.safetensors")
    changed = set()
    for key, w0 in base.items():
        a_key = "base_model.model." + key.replace(".weight", ".lora_A.weight")
        if a_key in lora:
            b = lora[a_key.replace("lora_A", "lora_B")]
            torch.testing.assert_close(merged_w[key], w0 + (8 / 4) * b @ lora[a_key], atol=1e-6, rtol=1e-5)
            changed.add(key.split(".")[-2])
        else:
            assert torch.equal(merged_w[key], w0), key
    assert changed == {"q_proj", "v_proj"}
    with pytest.raises(ModelError, match="exists and is not empty"):
        merge_and_save(tmp_path / "run" / "model", tmp_path / "merged")


def test_resume_restores_the_adapters(tmp_path, dirs, monkeypatch):
    """A run stopped after its step-2 checkpoint and resumed ends with the adapters of an uninterrupted run."""
    from lmdistill import api, checkpoint

    api.distill(_lora_cfg(tmp_path, dirs, "ref", save_every=2))
    real_save = checkpoint.save

    def save_then_crash(accelerator, out_dir, state, keep, **kw):
        real_save(accelerator, out_dir, state, keep, **kw)
        raise RuntimeError("crash after the checkpoint")

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(RuntimeError, match="crash after the checkpoint"):
        api.distill(_lora_cfg(tmp_path, dirs, "crash", save_every=2))
    monkeypatch.setattr(checkpoint, "save", real_save)
    res = api.distill(_lora_cfg(tmp_path, dirs, "crash", save_every=2, resume="auto"))
    assert res.steps == 4
    ref = load_file(tmp_path / "ref" / "model" / "adapter_model.safetensors")
    got = load_file(tmp_path / "crash" / "model" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_a_student_made_from_teacher_layers_saves_its_base(tmp_path, dirs):
    from transformers import AutoModelForCausalLM

    from lmdistill import api

    cfg = _lora_cfg(tmp_path, dirs, "kept")
    cfg["student"] = {"layers": [0, 3], "lora": {"r": 2}}  # PEFT's default targets for Llama
    api.distill(cfg)
    model_dir = tmp_path / "kept" / "model"
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((model_dir / "base").resolve())
    base = AutoModelForCausalLM.from_pretrained(model_dir / "base")
    assert base.config.num_hidden_layers == 2
    loaded = AutoModelForCausalLM.from_pretrained(model_dir)  # transformers' own PEFT loading of the folder
    peft_model, _ = load_lora(model_dir)
    ids = torch.randint(4, len(word_tokenizer()), (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.eval()(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits
        )


def test_a_target_module_that_does_not_exist_is_one_line():
    from lmdistill.config.schema import LoraSection

    model = tiny_llama(39, layers=1)
    with pytest.raises(ModelError) as e:
        apply_lora(model, LoraSection(target_modules=["q_proj", "query"]), None)
    msg = str(e.value)
    assert msg.startswith(
        "student.lora.target_modules: the student (LlamaForCausalLM) has no module 'query'; its linear layers are"
    )
    assert "q_proj" in msg and "\n" not in msg


def test_without_peft_a_lora_student_is_one_line_naming_the_extra(monkeypatch):
    import sys

    from lmdistill.errors import ModelError
    from lmdistill.models.lora import _peft

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(
        ModelError, match=r"student.lora needs the peft package: pip install 'lmdistill\[lora\]'"
    ):
        _peft()


def test_export_merge_writes_the_merged_model_and_its_onnx_graph(tmp_path, dirs, capsys):
    """`lmdistill export RUN/model --merge --onnx`: OUTPUT/merged equals merge_and_save's W0 + alpha/r B A, a
    plain transformers folder; OUTPUT/onnx is its graph; the record names both."""
    from transformers import AutoModelForCausalLM

    from lmdistill import api
    from lmdistill.cli import main

    api.distill(_lora_cfg(tmp_path, dirs, "run"))
    model_dir = tmp_path / "run" / "model"
    out = tmp_path / "export"
    assert main(["export", str(model_dir), "--merge", "--onnx", "--output", str(out)]) == 0
    record = json.loads((out / "lmdistill-export.json").read_text())
    assert list(record["formats"]) == ["merged", "onnx"] and record["kind"] == "causal-lm"
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["formats"]["onnx"]["max_abs_diff_vs_pytorch"] < 1e-4
    reference = merge_and_save(model_dir, tmp_path / "reference")
    got, want = load_file(out / "merged" / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert not (out / "merged" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out / "merged")  # loads with plain transformers, no PEFT
    assert (out / "onnx" / "model.onnx").is_file()


def test_export_of_a_lora_folder_without_merge_and_merge_of_a_plain_folder_are_one_line(
    tmp_path, dirs, capsys
):
    from lmdistill import api
    from lmdistill.cli import main

    api.distill(_lora_cfg(tmp_path, dirs, "run"))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run" / "model"), "--onnx", "--output", str(tmp_path / "o")]) == 2
    assert "is a LoRA adapter folder; add --merge" in capsys.readouterr().err
    assert main(["export", str(dirs / "student"), "--merge", "--output", str(tmp_path / "o")]) == 2
    assert "is not a LoRA adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
