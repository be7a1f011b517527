"""Interleaved (round-robin) timing of several models, and the split of report.measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lmdistill.report import measure

from .conftest import bert_tokenizer, tiny_bert

# the keys the report renderer reads from a latency result (render/context.py, render/sections.py)
RENDERER_KEYS = {
    "device",
    "device_name",
    "threads",
    "batch_size",
    "max_length",
    "warmup",
    "n",
    "median_s",
    "p10_s",
    "p90_s",
    "examples_per_s",
}


class FakeClock:
    """Stands in for the ``time`` module in ``measure``: time moves only when a runner runs."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def recording_runners(clock: FakeClock, calls: list[str], seconds: dict[str, float]) -> dict:
    def runner(key: str):
        def run():
            calls.append(key)
            clock.now += seconds[key] * (1 + len(calls) / 1000)  # a slow drift over the whole run

        return run

    return {key: runner(key) for key in seconds}


def test_interleaved_calls_models_round_robin_and_times_each_round(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(measure, "time", clock)
    seconds = {"A": 0.010, "B": 0.020, "C": 0.040}
    results = measure.measure_latency_interleaved(
        recording_runners(clock, calls, seconds), batch_size=1, rounds=4, warmup=2
    )
    assert calls == ["A", "B", "C"] * (2 + 4)
    assert list(results) == ["A", "B", "C"]
    for i, key in enumerate("ABC"):
        timed_calls = [6 + 3 * r + i + 1 for r in range(4)]  # 1-based call numbers after 2 warm-up rounds
        expected = [seconds[key] * (1 + c / 1000) for c in timed_calls]
        result = results[key]
        assert result["times_s"] == pytest.approx(expected) and result["n"] == 4
        assert result["median_s"] == pytest.approx(np.median(expected))
        assert result["p10_s"] == pytest.approx(np.percentile(expected, 10))
        assert result["p90_s"] == pytest.approx(np.percentile(expected, 90))
        assert result["examples_per_s"] == pytest.approx(4 / sum(expected))
        assert result["timing"] == "interleaved" and result["interleaved_with"] == ["A", "B", "C"]


def test_interleaved_result_has_the_keys_the_renderer_reads_like_measure_latency(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(measure, "time", clock)
    results = measure.measure_latency_interleaved(
        recording_runners(clock, calls, {"onnx": 0.01}),
        batch_size=8,
        rounds=3,
        warmup=0,
        max_length=64,
        extra={"onnx": {"threads": 4, "runtime": "ONNX Runtime int8"}},
    )
    result = results["onnx"]
    assert set(result) >= RENDERER_KEYS
    assert (result["batch_size"], result["max_length"], result["warmup"], result["device"]) == (
        8,
        64,
        0,
        "cpu",
    )
    assert result["threads"] == 4 and result["runtime"] == "ONNX Runtime int8"  # extra merged in last
    assert calls == ["onnx"] * 3


class Counting(nn.Module):
    def __init__(self, log: list[str], name: str):
        super().__init__()
        self.linear, self.log, self.name = nn.Linear(4, 2), log, name

    def forward(self, input_ids, attention_mask):
        self.log.append((self.name, self.training, torch.is_inference_mode_enabled(), int(input_ids[0, 0])))
        return self.linear(input_ids.float())


def test_model_and_batches_pairs_run_in_eval_and_inference_mode_with_batches_in_turn():
    log: list = []
    batches = [{"input_ids": torch.full((2, 4), i), "attention_mask": torch.ones(2, 4)} for i in range(3)]
    teacher, student = Counting(log, "t"), Counting(log, "s")
    teacher.train()
    results = measure.measure_latency_interleaved(
        {"t": (teacher, batches), "s": (student, batches[:1])}, batch_size=2, rounds=2, warmup=1
    )
    assert [(n, b) for n, _, _, b in log] == [("t", 0), ("s", 0), ("t", 1), ("s", 0), ("t", 2), ("s", 0)]
    assert all(not training and inference for _, training, inference, _ in log)
    assert teacher.training and not torch.is_inference_mode_enabled()  # modes restored afterwards
    assert results["t"]["padded_tokens_per_batch"] == 8.0 and results["s"]["n"] == 2
    assert results["t"]["threads"] == torch.get_num_threads()


def test_measure_models_interleaved_tokenises_with_each_models_tokenizer(tmp_path):
    full = bert_tokenizer(tmp_path)
    (tmp_path / "trimmed").mkdir()
    trimmed = bert_tokenizer(tmp_path / "trimmed", words=["good", "film"])  # "bad" becomes [UNK]
    models = {"full": (tiny_bert(vocab=len(full)), full), "trimmed": (tiny_bert(vocab=len(trimmed)), trimmed)}
    results = measure.measure_models_interleaved(
        models, ["good film", "bad bad bad"], batch_size=2, rounds=2, warmup=1, max_length=16
    )
    assert list(results) == ["full", "trimmed"]
    assert all(r["n"] == 2 and r["median_s"] > 0 and r["max_length"] == 16 for r in results.values())
    # "bad bad bad" is 3 word pieces + [CLS] + [SEP] with either vocabulary: 2 rows x 5 tokens
    assert results["full"]["padded_tokens_per_batch"] == results["trimmed"]["padded_tokens_per_batch"] == 10


def test_interleaved_rejects_bad_runners_and_unknown_extra():
    with pytest.raises(ValueError, match=r"runners\['x'\] must be a callable"):
        measure.measure_latency_interleaved({"x": ("not", "a model")}, batch_size=1)
    with pytest.raises(ValueError, match="not runners"):
        measure.measure_latency_interleaved({"x": lambda: None}, batch_size=1, extra={"y": {}})
    with pytest.raises(ValueError, match="rounds >= 1"):
        measure.measure_latency_interleaved({"x": lambda: None}, batch_size=1, rounds=0)


def test_old_names_stay_importable_from_measure_and_onnx_files_count_as_weights(tmp_path):
    from lmdistill.report.energy import measure_energy
    from lmdistill.report.environment import environment_info
    from lmdistill.report.memory import peak_memory

    assert measure.measure_energy is measure_energy and measure.environment_info is environment_info
    assert measure.peak_memory is peak_memory and callable(measure.track_energy)
    (tmp_path / "model.onnx").write_bytes(b"x" * 100)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 50)
    (tmp_path / "config.json").write_text("{}")
    assert measure.size_on_disk(tmp_path) == {"weights_bytes": 150, "total_bytes": 152, "weight_files": 2}


def cache_runners(clock: FakeClock, calls: list[str], warm: dict[str, float], cold_extra: float) -> dict:
    """A call right after another runner's call costs ``cold_extra`` more (its caches were evicted)."""

    def runner(key: str):
        def run():
            cold = bool(calls) and calls[-1] != key
            calls.append(key)
            clock.now += warm[key] + (cold_extra if cold else 0.0)

        return run

    return {key: runner(key) for key in warm}


def test_turns_of_consecutive_calls_time_all_but_the_first_call_of_each_turn(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(measure, "time", clock)
    warm = {"teacher": 0.006, "student": 0.0005}
    results = measure.measure_latency_interleaved(
        cache_runners(clock, calls, warm, cold_extra=0.0003),
        batch_size=1,
        rounds=5,
        warmup=1,
        calls_per_turn=3,
    )
    # 1 warm-up round, then turns of 3 (1 untimed + 2 timed) until 5 timed calls: 2 + 2 + 1
    turns = ["teacher"] * 3 + ["student"] * 3
    assert calls == ["teacher", "student"] + turns * 2 + ["teacher"] * 2 + ["student"] * 2
    for key in warm:
        assert results[key]["n"] == 5 and results[key]["times_s"] == pytest.approx([warm[key]] * 5)
        assert results[key]["calls_per_turn"] == 3 and results[key]["timing"] == "interleaved"
    # one call per turn: every timed call follows the other model's and pays for it
    clock2, calls2 = FakeClock(), []
    monkeypatch.setattr(measure, "time", clock2)
    single = measure.measure_latency_interleaved(
        cache_runners(clock2, calls2, warm, cold_extra=0.0003), batch_size=1, rounds=5, warmup=1
    )
    assert calls2 == ["teacher", "student"] * 6 and single["student"]["calls_per_turn"] == 1
    assert single["student"]["median_s"] == pytest.approx(0.0008)
    assert results["student"]["median_s"] == pytest.approx(0.0005)


def test_turns_count_the_tokens_of_the_batches_actually_timed():
    log: list = []
    batches = [
        {"input_ids": torch.full((i + 1, 4), i), "attention_mask": torch.ones(i + 1, 4)} for i in range(7)
    ]
    results = measure.measure_latency_interleaved(
        {"m": (Counting(log, "m"), batches)}, batch_size=1, rounds=3, warmup=1, calls_per_turn=2
    )
    # calls 0 (warm-up), 1 untimed, 2 timed, 3 untimed, 4 timed, 5 untimed, 6 timed: batches 2, 4, 6
    assert [b for _, _, _, b in log] == list(range(7))
    assert results["m"]["padded_tokens_per_batch"] == pytest.approx(4 * (3 + 5 + 7) / 3)
    with pytest.raises(ValueError, match="calls_per_turn >= 1"):
        measure.measure_latency_interleaved({"x": lambda: None}, batch_size=1, calls_per_turn=0)


def test_report_config_refuses_a_turn_of_no_calls():
    from lmdistill.config.checks import check_report
    from lmdistill.config.schema import ReportConfig

    assert check_report(ReportConfig(latency_calls_per_turn=0)) == [
        "report.latency_calls_per_turn must be at least 1, got 0"
    ]
    assert check_report(ReportConfig(latency_calls_per_turn=5)) == []
