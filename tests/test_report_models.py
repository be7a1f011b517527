"""The report with any number of models: runtimes, both speed-up columns, paired verdicts, Pareto front."""

from __future__ import annotations

import copy

import pytest

from lmdistill.report import render
from lmdistill.report.render.context import Context

from .test_report import latency_entry, model_entry, rendered, report_data

ENVIRONMENT = {"cpu": "Test CPU", "cpu_logical_cores": 4, "torch_threads": 2, "python": "3.12"}


def table(md: str, column: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The markdown table whose header has ``column``: (header, {first cell: {column: cell}})."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| ") and f" {column} |" in line)
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = dict(zip(header, cells))
    return header, rows


def entry(name: str, accuracy: float, params: int, median: float, weights: int, **fields) -> dict:
    result = model_entry(name, accuracy, params, median)
    result["size"] = {"weights_bytes": weights, "total_bytes": weights + 1000}
    return {**result, **fields}


def five_models() -> dict:
    """Teacher and student as trained and as ONNX int8, and the baseline; latencies chosen so that
    every speed-up differs: 40, 16, 10, 5 and 10 ms at batch 1 (batch 32 takes 8 times as long)."""
    data = report_data()
    data["environment"] = ENVIRONMENT
    int8 = {"runtime": "ONNX Runtime int8", "step": "quantize int8"}
    data["models"] = {
        "teacher": entry("bert-base", 0.92, 109_000_000, 0.040, 436_000_000, runtime="PyTorch fp32"),
        "teacher_int8": entry("teacher.onnx", 0.915, 109_000_000, 0.016, 110_000_000, role="teacher", **int8),
        "student": entry("student-4l", 0.90, 29_000_000, 0.010, 116_000_000),
        "student_int8": entry("student.onnx", 0.895, 29_000_000, 0.005, 29_000_000, role="student", **int8),
        "baseline": entry("baseline-4l", 0.87, 29_000_000, 0.010, 116_000_000),
    }
    return data


LABELS = {
    "teacher": "Teacher",
    "teacher_int8": "Teacher, ONNX Runtime int8",
    "student": "Student (distilled)",
    "student_int8": "Student (distilled), ONNX Runtime int8",
    "baseline": "Baseline (no KD)",
}


def test_five_models_get_speedups_vs_the_teacher_as_trained_and_in_the_same_runtime(tmp_path):
    md, _, _ = rendered(tmp_path, five_models())
    header, rows = table(md, "Latency (median, p10 – p90), batch 1")
    assert list(rows) == list(LABELS.values())
    # teacher as trained: 40 ms / the model's median; same runtime: its own teacher's median over the model's
    as_trained = {
        "teacher": "1.0×",
        "teacher_int8": "2.5×",
        "student": "4.0×",
        "student_int8": "8.0×",
        "baseline": "4.0×",
    }
    same = {
        "teacher": "1.0×",
        "teacher_int8": "1.0×",
        "student": "4.0×",
        "student_int8": "3.2×",
        "baseline": "4.0×",
    }
    for batch in (1, 32):  # throughput ratios at batch 32 are the same (each batch takes 8 × the median)
        for key, label in LABELS.items():
            assert rows[label][f"Speed-up vs teacher as trained, batch {batch}"] == as_trained[key], (
                key,
                batch,
            )
            assert rows[label][f"Speed-up vs teacher in the same runtime, batch {batch}"] == same[key], (
                key,
                batch,
            )
    assert rows["Student (distilled), ONNX Runtime int8"]["Latency (median, p10 – p90), batch 1"] == (
        "5.00 ms (4.50 ms – 6.00 ms)"  # median with p10 – p90
    )
    _, sizes = table(md, "Compression vs teacher in the same runtime (disk)")
    int8 = sizes["Student (distilled), ONNX Runtime int8"]
    assert int8["Compression vs teacher as trained (disk)"] == "15×"  # 436 MB / 29 MB = 15.03
    assert int8["Compression vs teacher in the same runtime (disk)"] == "3.8×"  # 110 MB / 29 MB = 3.79
    assert "teacher as trained (Teacher, PyTorch fp32)" in md


def test_a_runtime_without_its_teacher_says_so_in_the_same_runtime_column(tmp_path):
    data = five_models()
    data["models"]["student_bf16"] = entry(
        "student",
        0.90,
        29_000_000,
        0.008,
        58_000_000,
        role="step",
        runtime="PyTorch bf16",
        label="bf16 student",
    )
    md, _, _ = rendered(tmp_path, data)
    _, rows = table(md, "Latency (median, p10 – p90), batch 1")
    assert rows["bf16 student"]["Speed-up vs teacher as trained, batch 1"] == "5.0×"
    assert rows["bf16 student"]["Speed-up vs teacher in the same runtime, batch 1"] == (
        "n/a (no teacher in PyTorch bf16)"
    )


def test_quality_table_has_a_row_per_model_with_runtime_kept_share_ece_and_agreement(tmp_path):
    data = five_models()
    data["models"]["student"]["calibration"] = {"ece": {"value": 0.032, "low": 0.025, "high": 0.041}}
    data["models"]["student"]["agreement"] = {"value": 0.95, "low": 0.94, "high": 0.96}
    md, _, _ = rendered(tmp_path, data)
    header, rows = table(md, "Checkpoint")
    assert header == [
        "Model",
        "Runtime",
        "Step",
        "Checkpoint",
        "accuracy (primary)",
        "macro_f1",
        "Share of the teacher's accuracy kept",
        "ECE (%, lower is better)",
        "Agreement with the teacher (%)",
    ]
    student = rows["Student (distilled)"]
    assert (student["Runtime"], student["Share of the teacher's accuracy kept"]) == ("PyTorch fp32", "97.8%")
    assert student["ECE (%, lower is better)"] == "3.2 [2.5, 4.1]"
    assert student["Agreement with the teacher (%)"] == "95.0 [94.0, 96.0]"
    assert rows["Teacher, ONNX Runtime int8"]["Share of the teacher's accuracy kept"] == "99.5%"  # 91.5 / 92
    assert (rows["Teacher, ONNX Runtime int8"]["Step"], student["Step"]) == ("quantize int8", "—")
    assert rows["Baseline (no KD)"]["ECE (%, lower is better)"] == "n/a (not given)"


# ----------------------------------------------------------------------------------------- paired verdict


def bootstrap(a: str, b: str, value: float, low: float, high: float, verdict: str) -> dict:
    return {
        "a": a,
        "b": b,
        "metric": "accuracy",
        "difference": {"value": value, "low": low, "high": high},
        "p_value": 0.2,
        "test": "paired bootstrap",
        "verdict": verdict,
        "n": 872,
    }


def gain_sentence(md: str) -> str:
    return next(line for line in md.splitlines() if "Gain over the no-KD baseline" in line)


def test_summary_says_better_only_from_the_paired_comparison(tmp_path):
    data = report_data()  # per-model intervals [88, 92] and [85, 89] overlap
    data["comparisons"] = [
        bootstrap("student", "baseline", 0.03, 0.012, 0.049, "better"),
        {**bootstrap("student", "baseline", 0.03, None, None, "better"), "test": "McNemar exact (accuracy)"},
    ]
    data["comparisons"][1]["p_value"] = 0.0004
    md, _, _ = rendered(tmp_path, data)
    assert gain_sentence(md) == (
        "> Gain over the no-KD baseline in accuracy: +3.0 points. Paired comparison on the same 872 test "
        "examples by paired bootstrap: student − baseline +3.0 [+1.2, +4.9] points; McNemar exact "
        "(accuracy) p < 0.001. Verdict: the distilled student is better."
    )
    assert "the 95% intervals overlap" not in md and "overlap: the gain may be noise" not in md


def test_summary_never_says_better_when_the_paired_comparison_does_not(tmp_path):
    data = report_data()
    data["models"]["baseline"]["metrics"]["accuracy"] = {"value": 0.85, "low": 0.84, "high": 0.86}
    data["models"]["student"]["metrics"]["accuracy"] = {"value": 0.90, "low": 0.89, "high": 0.91}
    data["comparisons"] = [bootstrap("student", "baseline", 0.05, -0.001, 0.1, "not distinguishable at 95%")]
    md, _, _ = rendered(tmp_path, data)  # the per-model intervals do not overlap; the paired test decides
    sentence = gain_sentence(md)
    assert "Verdict: not distinguishable at 95%, the gain may be noise." in sentence
    assert "better" not in sentence and "do not overlap" not in md
    _, rows = table(md, "Paired test, student − baseline")
    assert rows["accuracy"]["Paired test, student − baseline"].startswith("not distinguishable at 95% (+5.0")
    assert rows["macro_f1"]["Paired test, student − baseline"] == "n/a (no paired test of macro_f1 given)"


def test_a_comparison_given_as_baseline_minus_student_is_turned_round(tmp_path):
    data = report_data()
    data["comparisons"] = [bootstrap("baseline", "student", -0.03, -0.049, -0.012, "worse")]
    md, _, _ = rendered(tmp_path, data)
    assert (
        "student − baseline +3.0 [+1.2, +4.9] points; paired bootstrap p = 0.2. Verdict: the distilled student is better."
        in md
    )
    _, rows = table(md, "Verdict for a")
    assert rows["Baseline (no KD) − Student (distilled)"]["Verdict for a"] == "worse"


def test_without_a_comparison_the_summary_falls_back_to_the_intervals(tmp_path):
    md, _, _ = rendered(tmp_path, report_data())
    assert gain_sentence(md).endswith(
        "Student 90.0 [88.0, 92.0] vs baseline 87.0 [85.0, 89.0]: the 95% intervals overlap, so the gain may be noise."
    )
    assert "Paired comparisons" not in md


# ----------------------------------------------------------------------------------------- Pareto front


def test_pareto_front_marks_exactly_the_non_dominated_points():
    #          G     A    B    C    D    E    F    H (= E)
    costs = [0.5, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 4.0]
    quality = [0.4, 0.5, 0.7, 0.6, 0.7, 0.9, 0.8, 0.9]
    # C: B costs the same and is better; D: B is as good and cheaper; F: E is cheaper and better
    assert render.pareto_front(costs, quality) == [0, 1, 2, 5, 7]
    losses = [1 - q for q in quality]  # lower is better: the same front
    assert render.pareto_front(costs, losses, greater_is_better=False) == [0, 1, 2, 5, 7]
    assert render.pareto_front([1.0], [0.3]) == [0] and render.pareto_front([], []) == []


def test_summary_names_the_pareto_front_of_five_models(tmp_path):
    md, _, _ = rendered(tmp_path, five_models())
    # batch-1 latency: student int8 5 ms 89.5, student 10 ms 90.0, baseline 10 ms 87.0 (dominated),
    # teacher int8 16 ms 91.5, teacher 40 ms 92.0
    latency_front = " → ".join(LABELS[k] for k in ("student_int8", "student", "teacher_int8", "teacher"))
    # size: student int8 29 MB, teacher int8 110 MB 91.5, student 116 MB 90.0 (dominated), teacher 436 MB
    size_front = " → ".join(LABELS[k] for k in ("student_int8", "teacher_int8", "teacher"))
    assert f"- accuracy vs CPU latency (batch 1): {latency_front}" in md
    assert f"- accuracy vs weights on disk: {size_front}" in md


# ----------------------------------------------------------------------------------------- old reports


OLD_SIZE = """| Model | Parameters | Without embeddings | Weights on disk | Folder on disk | Compression vs teacher (parameters) | Compression vs teacher (disk) |
|:---|---:|---:|---:|---:|---:|---:|
| Teacher | 109 M | 54.5 M | 436 MB | 436 MB | 1.0× | 1.0× |
| Student (distilled) | 29.0 M | 14.5 M | 116 MB | 116 MB | 3.8× | 3.8× |
| Baseline (no KD) | 29.0 M | 14.5 M | 116 MB | 116 MB | 3.8× | 3.8× |"""
OLD_SPEED = """| Model | Latency (median, p10 – p90), batch 1 | Speed-up vs teacher, batch 1 | Throughput, batch 32 | Speed-up vs teacher, batch 32 | Peak memory | Memory: weights + inference |
|:---|---:|---:|---:|---:|---:|:---|
| Teacher | 40.0 ms (36.0 ms – 48.0 ms) | 1.0× | 100 ex/s | 1.0× | +436 MB | n/a (weights not given) |
| Student (distilled) | 10.0 ms (9.00 ms – 12.0 ms) | 4.0× | 400 ex/s | 4.0× | +116 MB | n/a (weights not given) |
| Baseline (no KD) | 10.0 ms (9.00 ms – 12.0 ms) | 4.0× | 400 ex/s | 4.0× | +116 MB | n/a (weights not given) |"""
OLD_TRAINING = """| Run | Wall time | Energy | CO2 | Power source |
|:---|---:|---:|---:|:---|
| Teacher | n/a (no training run recorded) | n/a | n/a | n/a |
| Student (distilled) | 5.0 min | 10.0 Wh | 4.00 g CO2e | estimated |
| Baseline (no KD) | 5.0 min | 10.0 Wh | 4.00 g CO2e | estimated |"""


def test_an_old_three_role_report_renders_as_before(tmp_path):
    """Tables as the renderer before N models wrote them (copied from its output for report_data())."""
    data = report_data()
    data["environment"] = ENVIRONMENT
    md, _, _ = rendered(tmp_path, data)
    for block in (OLD_SIZE, OLD_SPEED, OLD_TRAINING):
        assert block in md
    assert (
        "> **The student keeps 97.8% of the teacher's accuracy at 4.0× the speed (CPU latency, batch 1), "
        "3.8× smaller (weights on disk).**"
    ) in md
    header, rows = table(md, "Checkpoint")
    assert header[:4] == ["Model", "Checkpoint", "accuracy (primary)", "macro_f1"]  # no runtime column
    assert list(rows) == ["Teacher", "Student (distilled)", "Baseline (no KD)"]
    assert rows["Baseline (no KD)"]["accuracy (primary)"] == "87.0 [85.0, 89.0]"
    assert "Pareto front (no other" not in md and "same runtime" not in md and "ECE" not in md


def test_roles_labels_and_placeholders_resolve_from_keys_and_fields():
    data = {
        "models": {
            "teacher": {},
            "trimmed": {"role": "step", "step": "trim vocabulary"},
            "a": {"role": "student", "runtime": "ONNX Runtime fp32"},
            "b": {"role": "student", "runtime": "ONNX Runtime fp32"},
            "named": {"role": "student", "label": "My student"},
        }
    }
    ctx = Context.build(copy.deepcopy(data))
    assert [ctx.role(k) for k in ctx.keys] == ["teacher", "step", "student", "student", "student"]
    assert [ctx.label(k) for k in ctx.keys] == [
        "Teacher",
        "trimmed",
        "Student (distilled), ONNX Runtime fp32 [a]",
        "Student (distilled), ONNX Runtime fp32 [b]",
        "My student",
    ]
    assert ctx.main("student") == "named"  # the student as trained: in PyTorch fp32
    assert ctx.teacher == "teacher" and ctx.missing_roles == ["baseline"]


def test_missing_roles_get_a_placeholder_row_after_the_models(tmp_path):
    data = five_models()
    del data["models"]["baseline"]
    md, _, _ = rendered(tmp_path, data)
    _, rows = table(md, "Latency (median, p10 – p90), batch 1")
    assert list(rows)[-1] == "Baseline (no KD)"
    assert rows["Baseline (no KD)"]["Latency (median, p10 – p90), batch 1"] == "n/a (model not given)"


@pytest.mark.parametrize("key", ["a", "zzz"])
def test_comparisons_naming_unknown_models_still_render(tmp_path, key):
    data = report_data()
    data["models"]["student"]["latency"].append(latency_entry("cuda", 1, 0.002))
    data["comparisons"] = [
        bootstrap(key, "baseline", 0.01, -0.01, 0.03, "not distinguishable at 95%"),
        "junk",
    ]
    md, _, _ = rendered(tmp_path, data)
    _, rows = table(md, "Verdict for a")
    assert rows[f"{key} − Baseline (no KD)"]["Difference [95% CI]"] == "+1.0 [-1.0, +3.0] points"


def test_default_metric_directions_agree_with_the_task_metrics():
    from lmdistill.tasks.metrics import GREATER_IS_BETTER

    ctx = Context.build({"models": {}})
    assert {m: ctx.greater_is_better(m) for m in GREATER_IS_BETTER} == GREATER_IS_BETTER
    assert ctx.greater_is_better("ece") is False
    assert Context.build({"greater_is_better": {"loss": True}}).greater_is_better("loss") is True
