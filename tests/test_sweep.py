"""``lmdistill sweep``: variants x seeds through the run driver, restart, failures, the leaderboard and its
statistics; tiny models and data built in code."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmdistill import sweeps
from lmdistill.cli import main
from lmdistill.report.leaderboard import pareto_front
from lmdistill.report.paired import seed_example_bootstrap
from lmdistill.report.seeds import seed_example_permutation, seed_example_sets_bootstrap, t_interval
from lmdistill.report.stats import accuracy


def _config(folder, teacher, csv_path, sweep, **extra) -> dict:
    cfg = {
        "seed": 0,
        "output_dir": str(folder),
        "data": {"train": str(csv_path), "max_length": 32, "validation_size": 0.15, "test_size": 0.15},
        "teacher": {"name_or_path": str(teacher)},
        "student": {"num_layers": 2},
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 16, "learning_rate": 1e-3, "log_every": 1},
        "distill": {"losses": {"kd": 0.5, "ce": 0.5}},
        "sweep": {"latency": False, "bootstrap_resamples": 200, **sweep},
    }
    cfg.update(extra)
    return cfg


def _write(folder, cfg: dict, name: str = "sweep.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


GRID = {"grid": {"distill.temperature": [1.0, 4.0]}, "seeds": [1, 2]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_dir, sentiment_csv):
    """A 2-variant x 2-seed sweep run once through the CLI: (its config file, its folder, the exit status)."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = _config(tmp / "sweep", tiny_bert_dir, sentiment_csv, GRID)
    # a stage with its own epochs: its config.yaml differs from the base's, and a restart must still skip it
    cfg["distill"]["stages"] = [{"name": "kd", "losses": {"kd": 0.5, "ce": 0.5}, "epochs": 2}]
    cfg["sweep"]["comparisons"] = [["temperature=1.0", "temperature=4.0"]]  # the reverse of the reference's
    path = _write(tmp, cfg)
    return path, tmp / "sweep", main(["sweep", path])


def test_two_variants_two_seeds_end_to_end(finished):
    _, out, status = finished
    assert status == 0
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.csv", "leaderboard.json"):
        assert (out / name).is_file()
    assert (out / "quality_vs_latency.png").stat().st_size > 1000
    data = json.loads((out / "leaderboard.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["temperature=1.0", "temperature=4.0"] and data["reference"] == "temperature=1.0"
    for name, row in rows.items():
        accs = [
            json.loads((out / name / f"seed-{s}" / "results.json").read_text())["test"]["accuracy"]
            for s in (1, 2)
        ]
        assert row["seeds_ok"] == 2 and row["per_seed"] == pytest.approx(accs)
        assert row["mean"] == pytest.approx(np.mean(accs))
        assert (row["low"], row["high"]) == pytest.approx(tuple(t_interval(accs))[1:])
        seconds = [
            json.loads((out / name / f"seed-{s}" / "results.json").read_text())["train_seconds"]
            for s in (1, 2)
        ]
        assert row["train_s"] == pytest.approx(np.mean(seconds))
    table = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["variant"] for r in table] == list(rows)
    assert float(table[1]["mean"]) == pytest.approx(rows["temperature=4.0"]["mean"])
    # one teacher cache per seed, shared by the variants; every run a distill run with its own seed
    assert sorted(p.name for p in (out / "teacher_cache").iterdir()) == ["seed-1", "seed-2"]
    saved = yaml.safe_load((out / "temperature=4.0" / "seed-2" / "config.yaml").read_text())
    assert saved["seed"] == 2 and saved["distill"]["temperature"] == 4.0 and saved["sweep"] is None
    assert saved["data"]["split_seed"] == 0  # the config's seed: every run scored on the same test examples
    gold = [
        json.loads((out / v / f"seed-{s}.scores.json").read_text())["columns"]["gold"]
        for v in rows
        for s in (1, 2)
    ]
    assert all(g == gold[0] for g in gold)
    assert saved["training"]["teacher_cache"] == str(out / "teacher_cache" / "seed-2")
    assert "| temperature=4.0" in (out / "leaderboard.md").read_text()


def test_difference_to_reference_is_the_paired_test_of_the_saved_predictions(finished):
    _, out, _ = finished
    data = json.loads((out / "leaderboard.json").read_text())
    a, b = ([json.loads((out / v / f"seed-{s}.scores.json").read_text())["columns"] for s in (1, 2)]
            for v in ("temperature=4.0", "temperature=1.0"))  # fmt: skip
    a = [{k: np.asarray(x) for k, x in c.items()} for c in a]
    b = [{k: np.asarray(x) for k, x in c.items()} for c in b]
    stat = lambda c: accuracy(c["gold"], c["pred"])  # noqa: E731
    ci = seed_example_sets_bootstrap(stat, a, b, same_examples=True, n_resamples=200)
    row = data["rows"][1]
    assert (row["diff"], row["diff_low"], row["diff_high"]) == pytest.approx((ci.point, ci.low, ci.high))
    assert row["p_value"] == pytest.approx(seed_example_permutation(stat, a, b, n_resamples=200))
    # sweep.comparisons: the reference against the other variant, the same test with the sides swapped
    (c,) = data["comparisons"]
    ci = seed_example_sets_bootstrap(stat, b, a, same_examples=True, n_resamples=200)
    assert (c["variant"], c["against"], c["paired_seeds"]) == ("temperature=1.0", "temperature=4.0", 2)
    assert (c["diff"], c["diff_low"], c["diff_high"]) == pytest.approx((ci.point, ci.low, ci.high))
    assert c["diff"] == pytest.approx(-row["diff"])
    assert c["p_value"] == pytest.approx(seed_example_permutation(stat, b, a, n_resamples=200))
    md = (out / "leaderboard.md").read_text()
    assert f"| temperature=1.0 | temperature=4.0 | {c['diff']:+.4f} [{c['diff_low']:+.4f}, " in md
    table = list(csv.DictReader((out / "comparisons.csv").open()))
    assert len(table) == 1 and float(table[0]["diff"]) == pytest.approx(c["diff"])
    assert "<h2>Other comparisons</h2>" in (out / "leaderboard.html").read_text()


def test_restart_skips_finished_runs_and_continues_an_unfinished_one(finished, tmp_path):
    path, out, _ = finished
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    (copy / "temperature=4.0" / "seed-2" / "results.json").unlink()  # as if killed before it published
    calls = []

    def counting(job, verb, resume, overwrite):
        calls.append((job.key, resume, overwrite))
        sweeps.run_in_process(job, verb, resume, overwrite)

    cfg = yaml.safe_load(Path(path).read_text())
    cfg["output_dir"] = str(copy)
    result = sweeps.sweep(cfg, runner=counting)
    assert calls == [("temperature=4.0/seed-2", False, True)]  # no checkpoint to continue: trained again
    assert result.failed == {} and (copy / "temperature=4.0" / "seed-2" / "results.json").is_file()
    assert sweeps.sweep(cfg, runner=counting).failed == {} and len(calls) == 1  # all finished: nothing runs


def test_restart_continues_an_unfinished_run_from_its_checkpoint(tmp_path, tiny_bert_dir, sentiment_csv):
    cfg = _config(tmp_path / "sweep", tiny_bert_dir, sentiment_csv, {"variants": [{"name": "only"}]})
    cfg["training"].update(max_steps=3, save_every=1)
    assert sweeps.sweep(cfg).failed == {}
    run = tmp_path / "sweep" / "only" / "seed-0"
    names = sorted(c.name for c in (run / "checkpoints").iterdir())
    assert names == ["step-00000001", "step-00000002"]  # the last step writes none
    (run / "results.json").unlink()  # as if killed after step 2's checkpoint
    calls = []

    def counting(job, verb, resume, overwrite):
        calls.append((job.key, resume, overwrite))
        sweeps.run_in_process(job, verb, resume, overwrite)

    assert sweeps.sweep(cfg, runner=counting).failed == {}
    results = json.loads((run / "results.json").read_text())
    assert calls == [("only/seed-0", True, False)] and results["steps"] == 3
    assert results["resumed_from"].endswith("step-00000002")


def test_failing_variant_is_reported_and_the_sweep_goes_on(tmp_path, tiny_bert_dir, sentiment_csv, capsys):
    variants = [
        {"name": "bad", "overrides": {"student.num_layers": None, "student.layers": [0, 9]}},
        {"name": "good", "overrides": {}},
    ]
    cfg = _config(
        tmp_path / "sweep", tiny_bert_dir, sentiment_csv, {"variants": variants, "reference": "good"}
    )
    assert main(["sweep", _write(tmp_path, cfg)]) == 1
    message = "student.layers: layer 9 is outside the teacher, which has 4 layers (valid indices 0..3)"
    assert "1 run(s) failed: bad/seed-0" in capsys.readouterr().err
    data = json.loads((tmp_path / "sweep" / "leaderboard.json").read_text())
    bad, good = data["rows"]
    assert bad["errors"] == {"0": message} and bad["seeds_ok"] == 0 and bad["mean"] is None
    assert good["seeds_ok"] == 1 and good["errors"] == {}
    assert f"bad, seed 0: {message}" in (tmp_path / "sweep" / "leaderboard.md").read_text()


def test_separate_processes_run_the_variants_and_report_a_failure(
    tmp_path, tiny_bert_dir, sentiment_csv, capsys
):
    variants = [
        {"name": "bad", "overrides": {"student.num_layers": None, "student.layers": [0, 9]}},
        {"name": "good", "overrides": {}},
    ]
    sweep = {"variants": variants, "reference": "good", "processes": 2}
    cfg = _config(tmp_path / "sweep", tiny_bert_dir, sentiment_csv, sweep)
    cfg["training"]["teacher_cache"] = None  # no shared cache: the two runs may run at once
    assert main(["sweep", _write(tmp_path, cfg)]) == 1
    out = tmp_path / "sweep"
    data = json.loads((out / "leaderboard.json").read_text())
    message = "student.layers: layer 9 is outside the teacher, which has 4 layers (valid indices 0..3)"
    assert data["rows"][0]["errors"] == {"0": message}  # the process's one-line error; its output in the log
    assert f"error: {message}" in (out / "bad" / "seed-0.log").read_text()
    assert data["rows"][1]["seeds_ok"] == 1 and (out / "good" / "seed-0" / "results.json").is_file()
    written = yaml.safe_load((out / "good" / "seed-0.config.yaml").read_text())
    assert written["output_dir"] == str(out / "good" / "seed-0")
    assert written["training"]["teacher_cache"] is None  # the config's null is kept: no shared cache


# --------------------------------------------------------------------------------------------- bad configs


def _one_error(tmp_path, capsys, base_dir, sweep: dict) -> str:
    cfg = _config(tmp_path / "out", base_dir, tmp_path / "train.csv", sweep)
    assert main(["sweep", _write(tmp_path, cfg), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(
    ("sweep", "line"),
    [
        ({"grid": {"distill.temperature": [1, 2]}, "sed": [1]},
         "error: unknown key 'sweep.sed' (did you mean 'sweep.seeds'?)"),
        ({"grid": {}}, "error: sweep.grid is empty: give at least one key with a list of values"),
        ({"grid": {"distill.temperature": [1, 2]}, "metric": "acuracy"},
         "error: sweep.metric 'acuracy' is not a metric of task classification (did you mean 'accuracy'?)"),
        ({"grid": {"distill.temperature": []}},
         "error: sweep.grid.distill.temperature has no values: give a list of one or more values"),
        ({"variants": [{"name": "a"}, {"name": "a", "overrides": {"distill.temperature": 2}}]},
         "error: sweep.variants[1]: variant name 'a' is used twice (also by variant 0); rename one"),
        ({"grid": {"distill.temperature": [1, 2]}, "reference": "temprature=1"},
         "error: sweep.reference 'temprature=1' is not a variant (did you mean 'temperature=1'?); variants: "
         "temperature=1, temperature=2"),
        ({"variants": [{"overrides": {"training.epochz": 2}}]},
         "error: variant epochz=2: unknown key 'training.epochz' (did you mean 'training.epochs'?)"),
        ({"variants": [{"name": "../x"}]}, "error: sweep.variants[0].name '../x' cannot name a folder: use letters, "
         "digits and . _ = + - (not first), at most 80 characters, not teacher_cache"),
        ({"grid": {"distill.temperature": [1, 2]}, "comparisons": [["temperature=2", "temprature=1"]]},
         "error: sweep.comparisons[0]: 'temprature=1' is not a variant (did you mean 'temperature=1'?)"),
        ({"grid": {"distill.temperature": [1, 2]}, "comparisons": [["temperature=2", "temperature=2"]]},
         "error: sweep.comparisons[0] must be two different variants, [variant, against], got ['temperature=2', "
         "'temperature=2']"),
        ({"variants": [{"overrides": {"seed": 3}}]}, "error: sweep.variants[0]: variant 'seed=3' overrides seed, which "
         "the sweep sets for every run (seeds: sweep.seeds; folders: OUTPUT_DIR/<variant>/seed-<seed>)"),
    ],
)  # fmt: skip
def test_bad_sweep_config_is_one_line_and_exit_2(tmp_path, capsys, tiny_bert_dir, sentiment_csv, sweep, line):
    shutil.copy(sentiment_csv, tmp_path / "train.csv")
    assert _one_error(tmp_path, capsys, tiny_bert_dir, sweep) == line
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_no_sweep_section_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "x.csv"}}))
    assert main(["sweep", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: sweep: the config has no sweep section")


def test_dry_run_lists_the_variants(tmp_path, capsys, tiny_bert_dir, sentiment_csv):
    grid = {"grid": {"distill.temperature": [1, 4], "student.num_layers": [1, 2]}, "seeds": [5, 6, 7]}
    cfg = _config(tmp_path / "out", tiny_bert_dir, sentiment_csv, grid)
    assert (
        main(["sweep", _write(tmp_path, cfg), "--dry-run", "sweep.reference=temperature=4_num_layers=1"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"sweep into {tmp_path / 'out'}: 4 variants x 3 seeds = 12 distill runs (seeds 5, 6, 7; "
                      "reference temperature=4_num_layers=1)")  # fmt: skip
    assert out[1:] == [
        "  temperature=1_num_layers=1: distill.temperature=1 student.num_layers=1",
        "  temperature=1_num_layers=2: distill.temperature=1 student.num_layers=2",
        "  temperature=4_num_layers=1 (reference): distill.temperature=4 student.num_layers=1",
        "  temperature=4_num_layers=2: distill.temperature=4 student.num_layers=2",
    ]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- statistics


def test_t_interval_by_hand():
    ci = t_interval([0.8, 0.9, 1.0])
    half = 4.303 * 0.1 / math.sqrt(3)  # t_{0.975, 2} = 4.303, sd = 0.1
    assert tuple(ci) == pytest.approx((0.9, 0.9 - half, 0.9 + half))


def _acc(c):
    return accuracy(c["gold"], c["pred"])


# seed 0: 4 examples, a right on 3, b on 1 (difference 0.5); seed 1: 3 examples, both right on 2 (difference 0)
A = [
    {"gold": np.array([1, 0, 1, 1]), "pred": np.array([1, 0, 1, 0])},
    {"gold": np.array([0, 1, 1]), "pred": np.array([0, 1, 0])},
]
B = [{"gold": np.array([1, 0, 1, 1]), "pred": np.array([0, 1, 1, 0])}, {"gold": np.array([0, 1, 1]), "pred": np.array([1, 1, 1])}]  # fmt: skip


def test_two_level_bootstrap_by_hand():
    ci = seed_example_sets_bootstrap(_acc, A, B, same_examples=False, n_resamples=5, confidence=0.8, seed=7)
    assert ci.point == pytest.approx((0.5 + 0.0) / 2)
    rng = np.random.default_rng(7)  # the documented draws: seeds (R, S), then each seed's examples (R, n_s)
    drawn = rng.integers(0, 2, size=(5, 2))
    idx = [rng.integers(0, 4, size=(5, 4)), rng.integers(0, 3, size=(5, 3))]
    diffs = []
    for r in range(5):
        per_seed = []
        for s in drawn[r]:
            i = idx[s][r]
            right_a = sum(A[s]["gold"][k] == A[s]["pred"][k] for k in i)
            right_b = sum(B[s]["gold"][k] == B[s]["pred"][k] for k in i)
            per_seed.append((right_a - right_b) / len(i))
        diffs.append(sum(per_seed) / 2)
    low, high = np.quantile(diffs, [0.1, 0.9])
    assert (ci.low, ci.high) == pytest.approx((low, high))


def test_two_level_bootstrap_with_one_test_set_is_seed_example_bootstrap():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 40)
    a, b = rng.integers(0, 3, (3, 40)), rng.integers(0, 3, (3, 40))
    mine = seed_example_sets_bootstrap(
        _acc, [{"gold": gold, "pred": x} for x in a], [{"gold": gold, "pred": x} for x in b], same_examples=True,
        n_resamples=300, seed=4,
    )  # fmt: skip
    assert tuple(mine) == pytest.approx(
        tuple(seed_example_bootstrap("accuracy", gold, a, b, n_resamples=300, seed=4))
    )


def test_permutation_p_value_by_hand():
    p = seed_example_permutation(_acc, A, B, n_resamples=6, seed=3)
    rng = np.random.default_rng(3)  # per seed in turn: swap a and b on each example with probability 1/2
    swaps = [rng.random((6, 4)) < 0.5, rng.random((6, 3)) < 0.5]
    far = 0
    for r in range(6):
        t = 0.0
        for s in range(2):
            g, pa, pb = A[s]["gold"], A[s]["pred"], B[s]["pred"]
            xa = [pb[k] if swaps[s][r, k] else pa[k] for k in range(len(g))]
            xb = [pa[k] if swaps[s][r, k] else pb[k] for k in range(len(g))]
            t += (np.mean(np.array(xa) == g) - np.mean(np.array(xb) == g)) / 2
        far += abs(t) >= 0.25
    assert p == pytest.approx((1 + far) / 7)
    assert seed_example_permutation(_acc, A, A, n_resamples=50) == 1.0  # identical models: nothing is far


def test_pareto_front_by_hand():
    # (latency, accuracy): the second is slower and worse than the first; the third is slower but better
    assert pareto_front([(1.0, 0.8), (2.0, 0.7), (3.0, 0.9), (1.0, 0.8)], True) == [True, False, True, True]
    assert pareto_front([(1.0, 5.0), (2.0, 4.0), (3.0, 6.0)], False) == [True, True, False]  # perplexity


def test_leaderboard_files_name_failures_and_unscored_runs(tmp_path):
    from lmdistill.report.leaderboard import write_leaderboard

    row = {"variant": "a", "overrides": "(base)", "seeds_ok": 1, "seeds": 2, "mean": 0.8, "low": 0.7, "high": 0.9,
           "errors": {2: "NaN loss at step 3"}, "notes": {1: "not scored: task mlm has no report"}, "pareto": True,
           "weights_mb": 1.5}  # fmt: skip
    other = {**row, "variant": "b", "mean": 0.6, "low": 0.5, "high": 0.7, "errors": {}, "notes": {}, "diff": -0.2, "diff_low": -0.3,
             "diff_high": -0.1, "p_value": 0.002, "verdict": "worse", "pareto": False}  # fmt: skip
    data = {"title": "t", "task": "classification", "metric": "accuracy", "greater_is_better": True,
            "reference": "a", "seeds": [1, 2], "rows": [row, other], "notes": ["a note"]}  # fmt: skip
    files = write_leaderboard(data, tmp_path)
    md = files["md"].read_text()
    assert "- a, seed 2: NaN loss at step 3" in md and "- a, seed 1: not scored: task mlm has no report" in md
    assert "| b | 1/2 | 0.6000 [0.5000, 0.7000] | -0.2000 [-0.3000, -0.1000] | 0.002 | worse |" in md
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["variant"] for r in rows] == ["a", "b"] and rows[0]["errors"] == "seed 2: NaN loss at step 3"
    assert files["png"].stat().st_size > 1000  # no latency: quality against weights on disk


def test_metrics_given_as_per_example_ratios_are_compared_per_example():
    """QA F1 per question, MRR per query (denominator 1) and entity F1 (2 TP / predicted + gold) reach the
    leaderboard's statistics through ``Quality.ratios``; a metric the task gives no columns for stays None."""
    from lmdistill.sweeps.board import columns_of, statistic
    from lmdistill.tasks.base import Quality

    f1 = np.array([1.0, 0.5, 0.0, 0.25])
    q = Quality(
        {}, ratios={"f1": (f1, np.ones(4)), "entity_f1": (np.array([2.0, 0, 4]), np.array([2.0, 1, 6]))}
    )
    cols, kind = columns_of(q, "f1")
    assert kind == "ratio" and statistic(kind, "f1")({k: v[None] for k, v in cols.items()})[0] == f1.mean()
    cols, kind = columns_of(q, "entity_f1")
    assert statistic(kind, "entity_f1")({k: v[None] for k, v in cols.items()})[0] == pytest.approx(6 / 9)
    assert columns_of(q, "mrr@10") == (None, None)
