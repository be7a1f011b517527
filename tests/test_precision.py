"""Mixed precision: native CPU bf16 detected from feature flags (faked both ways here, so no test depends on
this machine's CPU), chosen by ``training.mixed_precision: auto``, reported in run_info.json, a bf16 CPU run
end to end, and bf16 inference in ``lmdistill evaluate``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from lmdistill import api, engine
from lmdistill.cli import main
from lmdistill.errors import LmdistillError
from lmdistill.models import precision

from .conftest import make_sentences

NATIVE = "auto: the CPU multiplies bf16 natively (amx_bf16)"


@pytest.mark.parametrize(
    "flags, found",
    [
        ({"avx512f", "avx512bw", "avx512_bf16"}, "avx512_bf16"),  # Cooper Lake, AMD Zen 4
        ({"amx_tile", "amx_bf16", "amx_int8"}, "amx_bf16"),  # Sapphire Rapids
        ({"AVX512-BF16"}, "avx512_bf16"),  # written with a dash, in capitals
        ({"fp", "asimd", "bf16", "i8mm"}, "bf16"),  # ARM /proc/cpuinfo (Graviton 3)
        ({"sve", "svebf16"}, "svebf16"),  # ARM /proc/cpuinfo name of SVE-BF16
        ({"sve_bf16"}, "sve_bf16"),  # torch.cpu.get_capabilities() name of SVE-BF16
    ],
)
def test_native_bf16_found_by_its_flag(flags, found):
    assert precision.native_bf16(flags) == (True, f"the CPU multiplies bf16 natively ({found})")


@pytest.mark.parametrize(
    "flags",
    [
        {"avx512f", "avx512bw", "avx512vl", "avx512dq"},  # Skylake-SP: oneDNN runs bf16, but emulated
        {"avx2", "fma", "f16c"},  # the AMD EPYC of this session (AVX2, no AVX-512)
        {"fp", "asimd", "sve", "i8mm"},  # ARM without BF16 (Graviton 2 has no sve either)
        set(),
    ],
)
def test_no_native_bf16_without_its_flag(flags):
    native, why = precision.native_bf16(flags)
    assert native is False and "slower than fp32" in why


def test_flags_read_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\nbogomips\t: 4890.80\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve svebf16 i8mm\nCPU implementer\t: 0x41\n"
    assert precision.flags_of_cpuinfo(x86) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert precision.flags_of_cpuinfo(arm) == {"fp", "asimd", "sve", "svebf16", "i8mm"}
    assert precision.flags_of_cpuinfo("") == frozenset()


def test_auto_is_bf16_on_a_native_cpu_and_fp32_elsewhere():
    choose = engine.choose_mixed_precision
    assert choose("auto", cpu=True, flags={"avx2", "amx_bf16"}) == ("bf16", NATIVE)
    mode, why = choose("auto", cpu=True, flags={"avx2", "avx512f"})
    assert mode == "no" and why.startswith("auto: the CPU has no native bf16 products")
    # a choice as set is kept, and said to be slow where it is emulated
    assert choose("no", cpu=True, flags={"amx_bf16"}) == ("no", "training.mixed_precision=no as set")
    mode, why = choose("bf16", cpu=True, flags={"avx2"})
    assert mode == "bf16" and why.startswith("training.mixed_precision=bf16 as set, although the CPU has no")
    assert choose("bf16", cpu=True, flags={"bf16"}) == ("bf16", "training.mixed_precision=bf16 as set")
    with pytest.raises(LmdistillError, match="training.mixed_precision=fp16 needs a GPU"):
        choose("fp16", cpu=True, flags={"amx_bf16"})
    assert engine.resolve_mixed_precision("no", cpu=True) == "no"


def _distill_cfg(tmp_path, sentiment_csv, tiny_bert_dir, **training) -> dict:
    return {
        "seed": 3,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "teacher": {"name_or_path": str(tiny_bert_dir)},
        "student": {"layers": [0, 3]},
        "distill": {
            "losses": {"kd": 0.5, "ce": 0.5},
            # hidden states, and value relations (MiniLM) whose own matmul autocast would take to bf16
            "matches": [
                {"feature": "hidden", "strategy": "uniform"},
                {"feature": "vv", "strategy": "last", "relation_heads": 2},
            ],
        },
        "output_dir": str(tmp_path / "run"),
        "training": {"max_steps": 6, "batch_size": 16, "log_every": 1, "cpu": True, **training},
    }


def test_bf16_cpu_run_end_to_end(tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch, capsys):
    """auto on a (faked) AMX CPU: bf16 autocast for student and live teacher, fp32 loss math, finite logged
    losses, fp32 weights saved; the choice and its reason printed and in run_info.json."""
    from safetensors import safe_open

    from lmdistill.objective import Objective
    from lmdistill.signals.live import LiveTeacher

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    seen: dict[str, set] = {"student": set(), "teacher": set(), "losses": set()}

    def recording(cls, name, key):
        real = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            seen[key].add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    recording(engine.StudentStep, "forward", "student")
    recording(LiveTeacher, "__call__", "teacher")
    recording(Objective, "forward", "losses")

    res = api.distill(_distill_cfg(tmp_path, sentiment_csv, tiny_bert_dir))
    assert seen == {"student": {torch.bfloat16}, "teacher": {torch.bfloat16}, "losses": {False}}
    assert f"precision: bf16 autocast ({NATIVE})" in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["mixed_precision"] == {"configured": "auto", "used": "bf16", "reason": NATIVE}
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["loss"])
    assert logged["step"].tolist() == [1, 2, 3, 4, 5, 6] and res.steps == 6
    terms = [
        "loss",
        "loss/kd",
        "loss/ce",
        "loss/hidden_mse_s0_t1",
        "loss/hidden_mse_s1_t3",
        "loss/vv_kl_s0_t2",
    ]
    assert all(math.isfinite(v) for v in logged[terms].to_numpy().ravel())
    with safe_open(str(tmp_path / "run" / "model" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    assert dtypes == {"F32"}


def test_auto_on_a_cpu_without_native_bf16_trains_in_fp32(
    tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch, capsys
):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512bw"}))
    seen = set()
    real = engine.StudentStep.forward

    def forward(self, batch, signal):
        seen.add(torch.is_autocast_enabled("cpu"))
        return real(self, batch, signal)

    monkeypatch.setattr(engine.StudentStep, "forward", forward)
    api.distill(_distill_cfg(tmp_path, sentiment_csv, tiny_bert_dir, max_steps=2))
    assert seen == {False}
    assert "precision: fp32 (auto: the CPU has no native bf16 products" in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())["mixed_precision"]
    assert info["configured"] == "auto" and info["used"] == "no"


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory, sentiment_csv, tiny_bert_dir):
    out = tmp_path_factory.mktemp("clf") / "run"
    cfg = {
        "seed": 0,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "output_dir": str(out),
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "cpu": True},
    }
    api.finetune(cfg)
    (out / "eval.yaml").write_text(json.dumps({k: cfg[k] for k in ("seed", "data", "model")}))
    return out


def test_evaluate_in_bf16_scores_the_bf16_model(trained_classifier, monkeypatch, capsys, tmp_path):
    """--dtype bf16 evaluates the model with bf16 weights; on a trained model it predicts like fp32."""
    evaluated = []
    real = engine.predict

    def predict(model, *args, **kwargs):
        evaluated.append({p.dtype for p in model.parameters()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(engine, "predict", predict)
    model, cfg = str(trained_classifier / "model"), str(trained_classifier / "eval.yaml")
    outputs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.json"
        preds = tmp_path / f"{dtype}.csv"
        args = ["evaluate", model, "--config", cfg, "--dtype", dtype, "--output", str(out)]
        assert main(args + ["--predictions", str(preds)]) == 0
        outputs[dtype] = (json.loads(out.read_text()), pd.read_csv(preds)["prediction"])
    assert evaluated == [{torch.float32}, {torch.bfloat16}]
    printed = capsys.readouterr().out
    assert f"{model} (bf16) on test (24 examples)" in printed and "dtype bf16: the CPU" in printed
    (full, full_preds), (half, half_preds) = outputs["fp32"], outputs["bf16"]
    assert (full["dtype"], half["dtype"], half["n"]) == ("fp32", "bf16", 24)
    assert full["metrics"]["accuracy"] > 0.75  # trained: the words decide the label
    assert (full_preds == half_preds).mean() >= 0.9
    assert half["metrics"]["accuracy"] == pytest.approx(full["metrics"]["accuracy"], abs=0.1)


def test_load_for_inference_casts_and_says_whether_bf16_is_native(trained_classifier, monkeypatch):
    from lmdistill.tasks import load_for_inference

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    loaded = load_for_inference(trained_classifier / "model")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16} and not loaded.model.training
    assert loaded.native_bf16 is True and loaded.reason == "the CPU multiplies bf16 natively (avx512_bf16)"
    assert loaded.tokenizer("good film")["input_ids"][0] == loaded.tokenizer.cls_token_id
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    loaded = load_for_inference(trained_classifier / "model", dtype="fp32")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32} and loaded.native_bf16 is False
    with pytest.raises(LmdistillError, match="dtype must be one of fp32, bf16, got 'fp16'"):
        load_for_inference(trained_classifier / "model", dtype="fp16")


def test_causal_lm_perplexity_in_bf16_is_close_to_fp32(tmp_path):
    from .test_causal_lm import tiny_llama, word_tokenizer

    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(40, seed=3)]}).to_csv(tmp_path / "t.csv")
    full, half = (
        api.evaluate(tmp_path / "lm", data=tmp_path / "t.csv", batch_size=8, dtype=d)
        for d in ("fp32", "bf16")
    )
    assert (full.dtype, half.dtype) == ("fp32", "bf16") and half.metrics["tokens"] == full.metrics["tokens"]
    assert math.isfinite(half.metrics["loss"])
    assert half.metrics["loss"] == pytest.approx(full.metrics["loss"], rel=0.02)


def test_report_dtype_bf16_adds_the_student_in_bf16(trained_classifier, tmp_path, monkeypatch):
    """`lmdistill report --dtype bf16`: the student is scored and timed a second time with bf16 weights, as
    the entry student_bf16 (runtime "PyTorch bf16") next to the student as trained."""
    scored = []
    real = engine.predict

    def predict(model, *args, **kwargs):
        scored.append({p.dtype for p in model.parameters()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(engine, "predict", predict)
    cfg = json.loads((trained_classifier / "eval.yaml").read_text())
    cfg["report"] = {"latency_repeats": 2, "warmup": 1, "speed_texts": 16, "energy": False}
    (tmp_path / "report.yaml").write_text(json.dumps(cfg))
    args = ["report", "--student", str(trained_classifier), "--config", str(tmp_path / "report.yaml")]
    assert main(args + ["--output", str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(data["models"]) == ["student", "student_bf16"]
    assert scored == [{torch.float32}, {torch.bfloat16}]
    full, half = data["models"]["student"], data["models"]["student_bf16"]
    assert (half["role"], half["runtime"]) == ("student", "PyTorch bf16")
    assert half["metrics"]["accuracy"]["value"] == pytest.approx(
        full["metrics"]["accuracy"]["value"], abs=0.1
    )
    assert {x["batch_size"] for x in half["latency"]} == {1, 32}
    assert all(math.isfinite(x["median_s"]) for x in half["latency"])
    assert "PyTorch bf16" in (tmp_path / "out" / "report.md").read_text()


def test_report_adds_bf16_by_default_only_where_the_cpu_has_it(monkeypatch):
    from lmdistill.reporting import bf16_point

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert (bf16_point(None), bf16_point(False)) == (True, False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert (bf16_point(None), bf16_point(True)) == (False, True)
