"""The compression report: measurements of a tiny random BERT, bootstrap intervals, and the rendering."""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from lmdistill.errors import ModelError
from lmdistill.report import measure, render, stats
from lmdistill.tasks.metrics import classification_metrics, regression_metrics

TEXTS = [
    "the movie was very good",
    "a boring plot",
    "the actor was not great but fun",
    "awful",
    "good fun film",
]
WORDS = sorted({word for text in TEXTS for word in text.split()})
VOCAB, HIDDEN, LAYERS, INTERMEDIATE, POSITIONS, TYPES, LABELS = 100, 32, 2, 37, 64, 2, 3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    # from_pretrained reads vocab.txt on transformers 4 and 5 (5 ignores a vocab_file= argument)
    return BertTokenizerFast.from_pretrained(str(folder))


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        type_vocab_size=TYPES,
        num_labels=LABELS,
    )
    return BertForSequenceClassification(config)


# ----------------------------------------------------------------------------------------- size


def test_count_parameters_matches_a_hand_count():
    embeddings = (VOCAB + POSITIONS + TYPES) * HIDDEN
    layer_norm = 2 * HIDDEN
    attention = 4 * (HIDDEN * HIDDEN + HIDDEN) + layer_norm
    feed_forward = (HIDDEN * INTERMEDIATE + INTERMEDIATE) + (INTERMEDIATE * HIDDEN + HIDDEN) + layer_norm
    head = (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * LABELS + LABELS)  # pooler + classifier
    total = embeddings + layer_norm + LAYERS * (attention + feed_forward) + head
    counts = measure.count_parameters(tiny_bert())
    assert counts == {
        "total": total,
        "embeddings": embeddings,
        "without_embeddings": total - embeddings,
        "trainable": total,
    }


def test_count_parameters_counts_tied_weights_once_and_only_trainable_as_trainable():
    model = nn.ModuleDict(
        {"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False), "norm": nn.LayerNorm(4)}
    )
    model["head"].weight = model["embed"].weight
    model["norm"].bias.requires_grad_(False)
    assert measure.count_parameters(model) == {
        "total": 48,
        "embeddings": 40,
        "without_embeddings": 8,
        "trainable": 44,
    }


def test_size_on_disk_counts_weight_files_and_the_whole_folder(tmp_path):
    tiny_bert().save_pretrained(tmp_path)
    (tmp_path / "training_args.bin").write_bytes(b"x" * 1000)
    weights = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    result = measure.size_on_disk(tmp_path)
    assert result["weights_bytes"] == weights > 0
    assert result["total_bytes"] == sum(f.stat().st_size for f in tmp_path.iterdir())
    assert result["weight_files"] == 1
    with pytest.raises(ModelError, match="not a folder"):
        measure.size_on_disk(tmp_path / "config.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no weight files"):
        measure.size_on_disk(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- speed


def test_prepare_batches_pads_to_the_longest_truncates_and_fills_the_last_batch(tokenizer):
    batches = measure.prepare_batches(tokenizer, TEXTS, batch_size=2, max_length=6, text_pairs=TEXTS[::-1])
    assert len(batches) == 3 and all(len(b["input_ids"]) == 2 for b in batches)
    for batch in batches:
        widths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == widths.max() <= 6
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert torch.equal(batches[2]["input_ids"][1], batches[0]["input_ids"][0])  # cycled to fill
    assert tokenizer.pad_token == "[PAD]"


class FakeClock:
    """Stands in for the ``time`` module in ``measure``: time moves only when the model runs."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class ClockedModel(nn.Module):
    """A model whose first calls take 10 s and later call i takes i ms on the fake clock."""

    def __init__(self, inner: nn.Module, clock: FakeClock, slow_calls: int):
        super().__init__()
        self.inner, self.clock, self.slow_calls, self.calls = inner, clock, slow_calls, 0

    def forward(self, **batch):
        self.calls += 1
        self.clock.now += 10.0 if self.calls <= self.slow_calls else self.calls / 1000
        return self.inner(**batch)


def test_measure_latency_times_only_the_runs_after_warmup(tokenizer, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure, "time", clock)
    model = ClockedModel(tiny_bert(), clock, slow_calls=2)
    model.train()
    result = measure.measure_latency(
        model, tokenizer, TEXTS, batch_size=2, repeats=5, warmup=2, max_length=16
    )
    timed = np.array([3, 4, 5, 6, 7]) / 1000  # calls 3..7; the two 10 s warm-up calls are left out
    assert model.calls == 7 and result["n"] == 5 and model.training  # train mode restored
    assert result["median_s"] == pytest.approx(np.median(timed))
    assert result["p10_s"] == pytest.approx(np.percentile(timed, 10))
    assert result["p90_s"] == pytest.approx(np.percentile(timed, 90))
    assert result["mean_s"] == pytest.approx(timed.mean()) and result["std_s"] == pytest.approx(
        timed.std(ddof=1)
    )
    assert result["examples_per_s"] == pytest.approx(2 * 5 / timed.sum())


def test_measure_latency_returns_finite_positive_figures(tokenizer):
    result = measure.measure_latency(tiny_bert(), tokenizer, TEXTS, batch_size=1, repeats=5, warmup=2)
    for key in ("median_s", "p10_s", "p90_s", "mean_s", "examples_per_s", "padded_tokens_per_batch"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["p10_s"] <= result["median_s"] <= result["p90_s"]
    assert result["std_s"] >= 0 and result["threads"] == torch.get_num_threads()
    assert result["device"] == "cpu" and result["device_name"] and result["warmup"] == 2


def test_measure_latency_throughput_call_with_pairs(tokenizer):
    result = measure.measure_latency(
        tiny_bert(), tokenizer, TEXTS, batch_size=4, repeats=3, warmup=1, text_pairs=TEXTS, max_length=12
    )
    assert result["batch_size"] == 4 and result["examples_per_s"] > 0
    assert result["padded_tokens_per_batch"] <= 4 * 12


def test_peak_memory_sees_an_allocation_and_forgets_earlier_peaks():
    def allocate():
        block = np.ones(8_000_000)  # 64 MB, touched
        return float(block.sum())

    big = measure.peak_memory(allocate)
    small = measure.peak_memory(lambda: np.ones(10).sum())
    assert big["measured"] and big["method"] and big["device"] == "cpu"
    assert big["increase_bytes"] >= 50e6 and big["high_water_bytes"] >= big["before_bytes"]
    assert small["increase_bytes"] < 50e6  # the earlier peak is not reported again


def test_inference_peak_memory_is_weights_plus_what_a_batch_adds_every_time(tokenizer):
    model = tiny_bert()
    texts = [" ".join(WORDS * 3)] * 8
    first, again = (measure.inference_peak_memory(model, tokenizer, texts, batch_size=8) for _ in range(2))
    params = measure.count_parameters(model)["total"]
    for result in (first, again):
        assert result["measured"] and result["batch_size"] == 8
        assert result["weights_bytes"] >= 4 * params  # float32 parameters, plus buffers
        assert result["peak_bytes"] == result["weights_bytes"] + result["increase_bytes"]
    assert again["increase_bytes"] > 0  # memory freed by the first pass does not hide the second's


# ----------------------------------------------------------------------------------------- energy


def test_measure_energy_gives_finite_figures_and_says_how(tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)

    def busy():
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    result = measure.measure_energy(busy, label="test", predictions=100, measure_power_secs=0.1)
    assert result["measured"], result.get("reason")
    for key in (
        "energy_kwh",
        "emissions_kg_co2",
        "duration_s",
        "energy_kwh_per_1000",
        "emissions_kg_co2_per_1000",
    ):
        assert math.isfinite(result[key]) and result[key] >= 0, key
    assert result["energy_kwh_per_1000"] == pytest.approx(result["energy_kwh"] * 10)
    assert isinstance(result["estimated"], bool) and "CPU" in result["method"]
    assert result["wall_time_s"] >= 0.3
    assert list(tmp_path.iterdir()) == []  # codecarbon wrote nothing


def test_measure_energy_without_codecarbon_says_so_and_invents_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    result = measure.measure_energy(lambda: None, label="x", predictions=10)
    assert result["measured"] is False and "not installed" in result["reason"]
    assert "energy_kwh" not in result and result["energy_kwh_per_1000"] is None


def test_environment_info_names_the_machine_and_libraries():
    env = measure.environment_info()
    assert env["cpu"] and env["cpu_logical_cores"] >= 1 and env["python"]
    assert env["libraries"]["torch"] != "not installed" and env["torch_threads"] == torch.get_num_threads()
    assert isinstance(env["command"], str)


# ----------------------------------------------------------------------------------------- stats


def classification_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return labels, np.where(rng.random(n) < 0.8, labels, rng.integers(0, 3, n))


def test_bootstrap_ci_contains_the_point_and_is_deterministic():
    labels, preds = classification_data(400)
    correct = (labels == preds).astype(float)
    ci = stats.bootstrap_ci(correct, seed=3)
    assert ci.low <= ci.point <= ci.high and ci.point == correct.mean()
    assert stats.bootstrap_ci(correct, seed=3) == ci
    assert stats.bootstrap_ci(correct, seed=4) != ci


def test_bootstrap_ci_narrows_with_more_data():
    widths = []
    for n in (50, 2000):
        labels, preds = classification_data(n)
        ci = stats.metric_ci("accuracy", labels, preds, n_resamples=500)
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 3  # about sqrt(2000 / 50) = 6.3 times narrower


def test_paired_metrics_match_the_task_metrics_and_contain_the_point():
    labels, preds = classification_data(300)
    expected = classification_metrics(preds, labels, 3)
    for name in ("accuracy", "macro_f1"):
        ci = stats.metric_ci(name, labels, preds, n_resamples=300)
        assert ci.point == pytest.approx(expected[name]) and ci.low <= ci.point <= ci.high
    rng = np.random.default_rng(1)
    target = np.round(rng.normal(size=200), 1)  # rounded: ties for the rank correlation
    pred = np.round(target + rng.normal(size=200), 1)
    expected = regression_metrics(pred, target)
    for name in ("pearson", "spearman", "mse"):
        ci = stats.metric_ci(name, target, pred, n_resamples=300)
        assert ci.point == pytest.approx(expected[name]) and ci.low <= ci.point <= ci.high


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        stats.bootstrap_ci(([1, 2], [1]), stats.accuracy)
    with pytest.raises(ValueError, match="no bootstrap"):
        stats.metric_ci("bleu", [1], [1])


# ----------------------------------------------------------------------------------------- render


def latency_entry(device: str, batch: int, median: float) -> dict:
    return {
        "device": device,
        "device_name": "Test CPU",
        "threads": 2,
        "batch_size": batch,
        "max_length": 128,
        "warmup": 3,
        "n": 20,
        "median_s": median,
        "p10_s": median * 0.9,
        "p90_s": median * 1.2,
        "mean_s": median,
        "std_s": median / 10,
        "examples_per_s": batch / median,
    }


def energy_entry(kwh: float, predictions: int | None = None) -> dict:
    result = {
        "measured": True,
        "energy_kwh": kwh,
        "emissions_kg_co2": kwh * 0.4,
        "duration_s": 12.0,
        "wall_time_s": 12.1,
        "estimated": True,
        "country_iso_code": "USA",
        "method": "CPU estimated from CPU load x TDP; RAM estimated by codecarbon's RAM power model",
    }
    if predictions:
        result.update(
            predictions=predictions,
            energy_kwh_per_1000=kwh * 1000 / predictions,
            emissions_kg_co2_per_1000=kwh * 400 / predictions,
        )
    return result


def model_entry(name: str, accuracy: float, params: int, median: float, history: list | None = None) -> dict:
    entry = {
        "name": name,
        "metrics": {
            "accuracy": {"value": accuracy, "low": accuracy - 0.02, "high": accuracy + 0.02},
            "macro_f1": {"value": accuracy - 0.01, "low": accuracy - 0.03, "high": accuracy + 0.01},
        },
        "parameters": {"total": params, "without_embeddings": params // 2, "embeddings": params // 2},
        "size": {"weights_bytes": params * 4, "total_bytes": params * 4 + 5000},
        "latency": [latency_entry("cpu", 1, median), latency_entry("cpu", 32, median * 8)],
        "memory": [
            {
                "measured": True,
                "device": "cpu",
                "peak_bytes": params * 8,
                "before_bytes": params * 4,
                "increase_bytes": params * 4,
                "method": "Linux VmHWM",
            }
        ],
        "energy": energy_entry(median * 1e-4, predictions=1000),
    }
    if history:
        entry["training"] = {"wall_time_s": 300.0, "energy": energy_entry(0.01), "history": history}
    return entry


def curve(terms: tuple[str, ...]) -> list[dict]:
    rows = [{"step": s, "loss": 2 / s, **{f"loss/{t}": 1 / s for t in terms}} for s in range(1, 30)]
    return rows + [{"step": 30, "eval/accuracy": 0.9}]  # an eval row has no loss


def report_data() -> dict:
    return {
        "title": "Compression report: SST-2",
        "task": "sst2 (classification)",
        "evaluation": "validation split, 872 examples",
        "primary_metric": "accuracy",
        "models": {
            "teacher": model_entry("bert-base-uncased", 0.92, 109_000_000, 0.040),
            "student": model_entry("student-4l", 0.90, 29_000_000, 0.010, curve(("kd", "ce"))),
            "baseline": model_entry("baseline-4l", 0.87, 29_000_000, 0.010, curve(("ce",))),
        },
        "environment": measure.environment_info(),
        "notes": ["Synthetic figures for a test."],
    }


SECTIONS = ("Summary", "Quality", "Size", "Speed and memory", "Energy and CO2", "Plots", "Environment")
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?\s*(https?:)?//|@import""", re.I)
NON_FINITE = re.compile(r"\b(nan|inf|infinity)\b", re.I)


def rendered(tmp_path: Path, data: dict) -> tuple[str, str, Path]:
    md_path, html_path = render.render_report(data, tmp_path)
    return md_path.read_text(), html_path.read_text(), md_path


def text_of(page: str) -> str:
    """The page without its inline images (base64 can spell 'nan' between '+' and '/')."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


def test_render_report_has_every_section_finite_figures_and_no_external_reference(tmp_path):
    md, page, md_path = rendered(tmp_path, report_data())
    for title in SECTIONS:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    assert (
        "keeps 97.8% of the teacher's accuracy at 4.0× the speed (CPU latency, batch 1), 3.8× smaller" in md
    )
    assert "Gain over the no-KD baseline in accuracy: +3.0 points." in md and "90.0 [88.0, 92.0]" in md
    for text in (md, text_of(page)):
        assert not NON_FINITE.search(text)
    assert not EXTERNAL.search(page) and "Timings vary widely" not in md
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (md_path.parent / name).read_bytes().startswith(b"\x89PNG")


def test_render_report_without_baseline_says_na(tmp_path):
    data = report_data()
    del data["models"]["baseline"]
    md, page, _ = rendered(tmp_path, data)
    assert "Gain over the no-KD baseline: n/a (no baseline given)." in md
    assert "Baseline (no KD): no baseline (a student trained without distillation) given" in md
    assert "| Baseline (no KD) | n/a (model not given) |" in md
    assert 'class="na">n/a' in page and not NON_FINITE.search(text_of(page) + md)


def test_render_report_turns_non_finite_and_missing_figures_into_na(tmp_path):
    data = report_data()
    student = data["models"]["student"]
    student["latency"][0]["median_s"] = float("nan")
    student["latency"][1]["p90_s"] = student["latency"][1]["p10_s"] * 3
    student["size"]["weights_bytes"] = float("inf")
    student["energy"] = {"measured": False, "reason": "codecarbon is not installed"}
    del data["models"]["teacher"]
    md, page, _ = rendered(tmp_path, data)
    assert not NON_FINITE.search(md + text_of(page))
    assert "Summary n/a" in md and "n/a (codecarbon is not installed)" in md
    assert "n/a (not measured)" in md
    assert "Timings vary widely (p90 over p10): Student (distilled) at batch 32 (3.0×)" in md


def test_render_report_with_no_models_does_not_crash(tmp_path):
    md, page, _ = rendered(tmp_path, {"models": {}})
    assert "Summary n/a" in md and "<h2>Quality</h2>" in page and not EXTERNAL.search(page)


def test_render_report_regression_metric_lower_is_better_and_a_gpu(tmp_path):
    data = report_data()
    for role, (pearson, mse) in {
        "teacher": (0.88, 0.40),
        "student": (0.85, 0.50),
        "baseline": (0.80, 0.60),
    }.items():
        entry = data["models"][role]
        entry["metrics"] = {"pearson": [pearson, pearson - 0.02, pearson + 0.02], "mse": {"point": mse}}
        entry["latency"].append({**latency_entry("cuda", 1, 0.002), "device_name": "Test GPU"})
    data["primary_metric"] = "mse"
    md, page, _ = rendered(tmp_path, data)
    assert "The student has 1.25× the teacher's mse (lower is better)" in md
    assert "Gain over the no-KD baseline in mse: 0.1 better (lower is better)." in md
    assert "CUDA: Test GPU" in md and "85.0 [83.0, 87.0]" in md and "0.5000 (no interval)" in md
    assert not NON_FINITE.search(md + text_of(page))


def test_read_history_reads_a_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,loss/kd,eval/accuracy\n1,2.0,1.5,\n2,1.0,0.5,\n2,,,0.8\n")
    rows = render.read_history(path)
    assert rows == [
        {"step": 1, "loss": 2.0, "loss/kd": 1.5},
        {"step": 2, "loss": 1.0, "loss/kd": 0.5},
        {"step": 2, "eval/accuracy": 0.8},
    ]
    data = report_data()
    data["models"]["student"]["training"]["history"] = str(path)
    _, page, _ = rendered(tmp_path, data)
    assert page.count("data:image/png;base64,") == 2


def test_render_report_says_how_the_models_were_interleaved(tmp_path):
    data = report_data()
    for entry in data["models"].values():
        for latency in entry["latency"]:
            latency.update(timing="interleaved", calls_per_turn=1)
    md, _, _ = rendered(tmp_path / "single", data)
    assert "round-robin, one call each per round" in md and "consecutive calls" not in md
    for entry in data["models"].values():
        for latency in entry["latency"]:
            latency["calls_per_turn"] = 5
    md, _, _ = rendered(tmp_path / "turns", data)
    assert "round-robin in turns of 5 consecutive calls of one model, the first untimed" in md
    assert "one call each per round" not in md
