"""A sweep's leaderboard figures from its saved per-example test outputs alone, for runs that finished in more than
one sweep folder (e.g. a grid finished in a later session into another folder: docs/transfer.md).

    python benchmarks/scores_board.py DIR [DIR ...] --reference no-kd --seeds 1 2 3 \
        --compare kd-transfer-300:no-kd-300 --compare kd-transfer-15k:kd [--variants V ...] [--out board.json]

Every DIR holds ``<variant>/seed-<seed>.scores.json`` (what `lmdistill sweep` writes next to each run; a later DIR
wins for the same variant and seed). Prints, in accuracy points, every variant's mean over the seeds found with the
95% Student-t interval over seeds, and its paired difference to the reference (and each ``--compare A:B``) over
the seeds both have: the two-level bootstrap interval (seeds, then test examples; 1,000 resamples) and the paired
permutation p-value, with the same functions and seeds as the sweep's leaderboard (so for one folder it gives the
sweep's own figures). Classification scores only (gold and pred columns); runs scored on other test examples
than their counterpart are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lmdistill.report.paired import verdict
from lmdistill.report.seeds import seed_example_permutation, seed_example_sets_bootstrap, t_interval


def load(folders: list[Path], seeds: list[int]) -> dict[tuple[str, int], dict]:
    """``(variant, seed) -> {"gold", "pred", "examples", "source"}`` from every folder (later folders win)."""
    found: dict[tuple[str, int], dict] = {}
    for folder in folders:
        for path in sorted(folder.glob("*/seed-*.scores.json")):
            seed = int(path.name[len("seed-") : -len(".scores.json")])
            if seed not in seeds:
                continue
            data = json.loads(path.read_text())
            if data.get("kind") != "metric" or set(data.get("columns") or ()) != {"gold", "pred"}:
                raise SystemExit(f"{path}: no gold/pred columns (only classification scores are read)")
            cols = {k: np.asarray(v) for k, v in data["columns"].items()}
            found[(path.parent.name, seed)] = {**cols, "examples": data["examples"], "source": str(path)}
    return found


def _accuracy(c: dict) -> np.ndarray:
    return (c["pred"] == c["gold"]).mean(axis=-1)


def compare(found: dict, a: str, b: str, seeds: list[int], resamples: int = 1000) -> dict | None:
    """Paired difference ``acc(a) - acc(b)`` over the seeds both finished (None when there are none)."""
    both = [s for s in seeds if (a, s) in found and (b, s) in found]
    if not both:
        return None
    for s in both:
        if found[(a, s)]["examples"] != found[(b, s)]["examples"]:
            raise SystemExit(
                f"{a} and {b} were scored on other test examples at seed {s}: no paired difference"
            )
    xa = [{k: found[(a, s)][k] for k in ("gold", "pred")} for s in both]
    xb = [{k: found[(b, s)][k] for k in ("gold", "pred")} for s in both]
    same = len({found[(a, s)]["examples"] for s in both}) == 1
    ci = seed_example_sets_bootstrap(_accuracy, xa, xb, same_examples=same, n_resamples=resamples, seed=0)
    p = seed_example_permutation(_accuracy, xa, xb, n_resamples=resamples, seed=0)
    return {"variant": a, "against": b, "seeds": both, "diff": 100 * ci.point, "low": 100 * ci.low,
            "high": 100 * ci.high, "p_value": p, "verdict": verdict(ci, True)}  # fmt: skip


def board(found: dict, reference: str, seeds: list[int], comparisons: list[tuple[str, str]],
          order: list[str] | None = None) -> dict:  # fmt: skip
    variants = order or sorted({v for v, _ in found})
    rows = []
    for v in variants:
        values = [100 * float(_accuracy(found[(v, s)])) for s in seeds if (v, s) in found]
        mean = t_interval(values) if len(values) > 1 else None
        row = {"variant": v, "seeds": [s for s in seeds if (v, s) in found], "per_seed": values,
               "mean": mean.point if mean else values[0], "low": mean.low if mean else None,
               "high": mean.high if mean else None}  # fmt: skip
        if v != reference:
            row["vs_reference"] = compare(found, v, reference, seeds)
        rows.append(row)
    return {"reference": reference, "seeds": seeds, "rows": rows,
            "comparisons": [compare(found, a, b, seeds) for a, b in comparisons]}  # fmt: skip


def _iv(c: dict | None) -> str:
    if c is None:
        return "n/a | | "
    return (f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] | {c['p_value']:.3f} | "
            f"{c['verdict'].replace(' at 95%', '')} ({len(c['seeds'])} seeds)")  # fmt: skip


def markdown(b: dict) -> str:
    lines = [f"| variant | seeds | accuracy mean [95% t over seeds] | diff vs {b['reference']} [95% CI] | p | verdict |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in b["rows"]:
        mean = f"{r['mean']:.2f}" + (f" [{r['low']:.2f}, {r['high']:.2f}]" if r["low"] is not None else "")
        diff = "reference | | " if r["variant"] == b["reference"] else _iv(r.get("vs_reference"))
        lines.append(f"| {r['variant']} | {','.join(map(str, r['seeds']))} | {mean} | {diff} |")
    if b["comparisons"]:
        lines += ["", "| variant | against | diff [95% CI] | p | verdict |", "|---|---|---|---|---|"]
        for c in b["comparisons"]:
            if c is not None:
                lines.append(f"| {c['variant']} | {c['against']} | {_iv(c)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--compare", action="append", default=[], metavar="A:B")
    ap.add_argument("--variants", nargs="+", help="the rows, in this order (default: every variant found)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for folder in args.folders:
        if not folder.is_dir():
            raise SystemExit(
                f"{folder}: not a folder (give folders holding <variant>/seed-<seed>.scores.json)"
            )
    found = load(args.folders, args.seeds)
    pairs = []
    for item in args.compare:
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise SystemExit(f"--compare {item}: give two variants as A:B")
        pairs.append((a, b))
    for v in [args.reference, *(args.variants or ()), *(x for pair in pairs for x in pair)]:
        if not any(name == v for name, _ in found):
            raise SystemExit(f"variant {v}: no scores of it in {', '.join(map(str, args.folders))}")
    b = board(found, args.reference, args.seeds, pairs, args.variants)
    print(markdown(b))
    if args.out:
        b["sources"] = {f"{v}/seed-{s}": x["source"] for (v, s), x in sorted(found.items())}
        args.out.write_text(json.dumps(b, indent=1) + "\n")


if __name__ == "__main__":
    main()
