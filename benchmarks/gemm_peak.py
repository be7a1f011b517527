"""The matrix-product rate a model's own shapes reach, per precision and thread count: the ceiling for MFU.

For a BERT-shaped layer of width H on a batch of M tokens, one training step runs, per linear layer
(in -> out: q, k, v, o: H -> H; FFN up: H -> 4H; down: 4H -> H), the forward product ``(M, in) x (in, out)``,
the input gradient ``(M, out) x (out, in)`` and the weight gradient ``(out, M) x (M, in)``. Each product is
timed on its own (best of a few timed windows after a warm-up) in fp32 and in bf16 (the inputs cast to bf16,
as autocast does); the rate of the set is its total FLOPs over its total time. A 2048^3 square product is
timed too, as the reference of earlier results.

    PYTHONPATH=src python benchmarks/gemm_peak.py --hidden 384 --tokens 1536 --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def layer_products(hidden: int, tokens: int) -> list[tuple[str, int, int, int]]:
    """``(name, m, k, n)`` of every product ``(m, k) x (k, n)`` of one layer's training step."""
    out = []
    for name, fan_in, fan_out in (
        ("qkvo", hidden, hidden),
        ("up", hidden, 4 * hidden),
        ("down", 4 * hidden, hidden),
    ):
        reps = 4 if name == "qkvo" else 1
        out += [(f"{name} forward", tokens, fan_in, fan_out)] * reps
        out += [(f"{name} input grad", tokens, fan_out, fan_in)] * reps
        out += [(f"{name} weight grad", fan_out, tokens, fan_in)] * reps
    return out


def time_product(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.2, windows: int = 3) -> float:
    """FLOP/s of ``(m, k) x (k, n)`` in ``dtype`` on the CPU: the best of ``windows`` timed windows of about
    ``seconds`` each, after one untimed product."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    torch.mm(a, b)
    one = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / one))
    best = 0.0
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def linear_rate(hidden: int, tokens: int, dtype: torch.dtype) -> float:
    """FLOP/s of F.linear on the forward shapes (what the model calls; a check that mm is representative)."""
    x = torch.randn(tokens, hidden, dtype=dtype)
    w = torch.randn(4 * hidden, hidden, dtype=dtype)
    F.linear(x, w)
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        F.linear(x, w)
    return 2 * tokens * hidden * 4 * hidden * reps / (time.perf_counter() - start)


def peaks(
    hidden: int,
    tokens: int,
    threads: list[int],
    precisions=("fp32", "bf16"),
    square: int = 2048,
    forward_only: bool = False,
    windows: int = 3,
) -> dict:
    """``{precision: {threads: {"model_shapes": FLOP/s, "per_product": {...}, "square_N": FLOP/s}}}``; no
    square product when ``square`` is 0, only the forward products with ``forward_only`` (both for CPUs that
    emulate bf16, where one product takes seconds)."""
    before = torch.get_num_threads()
    out: dict = {}
    try:
        for name in precisions:
            dtype = DTYPES[name]
            out[name] = {}
            for t in threads:
                torch.set_num_threads(t)
                flops = seconds = 0.0
                per: dict[str, float] = {}
                for label, m, k, n in layer_products(hidden, tokens):
                    if forward_only and not label.endswith("forward"):
                        continue
                    rate = per.get(label) or time_product(m, k, n, dtype, windows=windows)
                    per[label] = rate
                    flops += 2 * m * k * n
                    seconds += 2 * m * k * n / rate
                out[name][t] = {
                    "model_shapes": flops / seconds,
                    "per_product": per,
                    "linear_up_forward": linear_rate(hidden, tokens, dtype),
                }
                if square:
                    out[name][t][f"square_{square}"] = time_product(
                        square, square, square, dtype, seconds=0.5, windows=2
                    )
    finally:
        torch.set_num_threads(before)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--tokens", type=int, default=1536, help="tokens per batch (batch size x padded length)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--square", type=int, default=2048, help="side of the square reference product (0: none)")
    p.add_argument("--forward-only", action="store_true", help="time only the forward products")
    p.add_argument("--windows", type=int, default=3, help="timed windows per product (the best counts)")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    result = peaks(
        args.hidden,
        args.tokens,
        threads,
        tuple(args.precisions.split(",")),
        args.square,
        args.forward_only,
        args.windows,
    )
    for name, by_threads in result.items():
        for t, r in by_threads.items():
            square = f", square {r[f'square_{args.square}'] / 1e9:.1f} GFLOP/s" if args.square else ""
            print(f"{name} {t} thread(s): model shapes {r['model_shapes'] / 1e9:.2f} GFLOP/s{square}")
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/gemm_peak.py " + " ".join(sys.argv[1:]),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps({"env": env, "peaks": result}))


if __name__ == "__main__":
    main()
