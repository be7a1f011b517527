"""benchmarks/scores_board.py: a leaderboard from saved per-example scores of several sweep folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lmdistill.report.seeds import seed_example_sets_bootstrap

_SPEC = importlib.util.spec_from_file_location(
    "scores_board", Path(__file__).resolve().parents[1] / "benchmarks" / "scores_board.py"
)
sb = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sb)

GOLD = [0, 1, 1, 0, 1, 0, 1, 1, 0, 0]


def _write(folder: Path, variant: str, seed: int, pred: list[int], examples: str = "e1") -> None:
    (folder / variant).mkdir(parents=True, exist_ok=True)
    data = {"metric": "accuracy", "kind": "metric", "examples": examples, "value": None,
            "columns": {"gold": GOLD, "pred": pred}}  # fmt: skip
    (folder / variant / f"seed-{seed}.scores.json").write_text(json.dumps(data))


def test_means_and_paired_difference_by_hand(tmp_path):
    ref = {1: [0, 1, 1, 0, 1, 0, 1, 1, 1, 1], 2: [0, 1, 0, 0, 1, 0, 1, 1, 1, 1]}  # 8/10, 7/10 correct
    var = {1: GOLD, 2: [0, 1, 1, 0, 1, 0, 1, 1, 0, 1]}  # 10/10, 9/10 correct
    for s in (1, 2):
        _write(tmp_path, "ref", s, ref[s])
        _write(tmp_path, "var", s, var[s])
    b = sb.board(sb.load([tmp_path], [1, 2]), "ref", [1, 2], [("ref", "var")], ["ref", "var"])
    rows = {r["variant"]: r for r in b["rows"]}
    assert rows["ref"]["per_seed"] == pytest.approx([80.0, 70.0])
    assert rows["ref"]["mean"] == pytest.approx(75.0)
    half = 12.706 * np.std([80.0, 70.0], ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    assert rows["ref"]["low"] == pytest.approx(75.0 - half)
    c = rows["var"]["vs_reference"]
    assert c["diff"] == pytest.approx(20.0)  # (10 - 8 + 9 - 7) / 2 of 10
    stat = lambda x: (x["pred"] == x["gold"]).mean(-1)  # noqa: E731
    cols = lambda p: {"gold": np.asarray(GOLD), "pred": np.asarray(p)}  # noqa: E731
    ci = seed_example_sets_bootstrap(stat, [cols(var[1]), cols(var[2])], [cols(ref[1]), cols(ref[2])],
                                     same_examples=True, n_resamples=1000, seed=0)  # fmt: skip
    assert (c["low"], c["high"]) == pytest.approx((100 * ci.low, 100 * ci.high))
    assert b["comparisons"][0]["diff"] == pytest.approx(-20.0)


def test_later_folder_wins_and_other_examples_are_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _write(first, "ref", 1, [1] * 10)
    _write(first, "var", 1, [1] * 10)
    _write(second, "var", 1, GOLD)  # the same run scored again in the later folder
    found = sb.load([first, second], [1])
    assert found[("var", 1)]["source"].startswith(str(second))
    assert sb.compare(found, "var", "ref", [1])["diff"] == pytest.approx(50.0)
    _write(second, "other", 1, GOLD, examples="e2")
    with pytest.raises(SystemExit, match="other test examples"):
        sb.compare(sb.load([first, second], [1]), "other", "ref", [1])
