"""Difference in differences between two pairs of a finished sweep (docs/findings.md, finding 4: does a change
help more at one student size than at another?).

    python benchmarks/findings_interaction.py SWEEP_DIR --first hidden-1L kd-1L --second hidden-3L uniform-3L

prints ``(acc(A1) - acc(B1)) - (acc(A2) - acc(B2))`` in accuracy points, paired by seed and by test example, with
the two-level bootstrap interval (seeds, then examples) and the paired permutation p-value that `lmdistill
sweep` uses for one difference. It is one difference of two sums, ``[acc(A1) + acc(B2)] - [acc(B1) + acc(A2)]``,
so the same functions apply. Reads the per-example outputs the sweep's leaderboard saved
(``<variant>/seed-<seed>.scores.json``, classification: gold and pred).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lmdistill.report.seeds import seed_example_permutation, seed_example_sets_bootstrap


def _columns(folder: Path, variant: str, seed: int) -> dict:
    data = json.loads((folder / variant / f"seed-{seed}.scores.json").read_text())
    if data.get("kind") != "metric" or set(data["columns"]) != {"gold", "pred"}:
        raise SystemExit(
            f"{folder / variant}: seed {seed} has no gold/pred columns (a classification sweep?)"
        )
    return {k: np.asarray(v) for k, v in data["columns"].items()}


def _two(x: dict, y: dict) -> dict:
    if not np.array_equal(x["gold"], y["gold"]):
        raise SystemExit("the variants were scored on different test examples: no paired difference")
    return {"gold": x["gold"], "p1": x["pred"], "p2": y["pred"]}


def _stat(c: dict) -> np.ndarray:
    return (c["p1"] == c["gold"]).mean(axis=-1) + (c["p2"] == c["gold"]).mean(axis=-1)


def interaction(folder: Path, first: tuple[str, str], second: tuple[str, str], seeds: list[int],
                resamples: int = 1000) -> dict:  # fmt: skip
    a1, b1 = first
    a2, b2 = second
    plus, minus = [], []
    for s in seeds:
        c = {v: _columns(folder, v, s) for v in (a1, b1, a2, b2)}
        plus.append(_two(c[a1], c[b2]))
        minus.append(_two(c[b1], c[a2]))
    ci = seed_example_sets_bootstrap(_stat, plus, minus, same_examples=True, n_resamples=resamples, seed=0)
    p = seed_example_permutation(_stat, plus, minus, n_resamples=resamples, seed=0)
    return {"first": list(first), "second": list(second), "seeds": seeds, "points": 100 * ci.point,
            "low": 100 * ci.low, "high": 100 * ci.high, "p_value": p}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--first", nargs=2, required=True, metavar=("A1", "B1"))
    ap.add_argument("--second", nargs=2, required=True, metavar=("A2", "B2"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    r = interaction(args.folder, tuple(args.first), tuple(args.second), args.seeds, args.resamples)
    print(json.dumps(r))
    print(f"({r['first'][0]} - {r['first'][1]}) - ({r['second'][0]} - {r['second'][1]}): {r['points']:+.2f} "
          f"[{r['low']:+.2f}, {r['high']:+.2f}] points, permutation p = {r['p_value']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
