"""``lm.fused`` against the ordinary (unfused) causal-LM KD loss: peak memory and time per training step.

Work (identical in both modes): a random Llama student and teacher (the body is small; the vocabulary is the
point: 49,152 tokens, SmolLM2's), batch --batch of --length tokens, every position a target,
``distill.losses {kd: 0.5, lm: 0.5}`` with forward KL at T = 1, the live teacher, AdamW. One step is the
teacher's forward pass, the student's forward and backward, and the optimizer step, through
:class:`lmdistill.tasks.lm_objective.CausalLMObjective` as ``task: causal_lm`` runs it.

* unfused: both models make their ``(B, T, V)`` logits; the loss is chunked over positions (``lm.chunk_size``)
  but the logits and their gradient exist whole.
* fused (``lm.fused: true``): neither model's logits are made; the student's head and both losses run chunk by
  chunk from the final hidden states, forward and (recomputed) backward; the teacher's head likewise.

Each mode runs in its own process (so its peak is its own): --warmup untimed steps, then --steps timed ones.
Peak memory: on a CPU the process's peak RSS (``ru_maxrss``), and the peak above the RSS just before the first
step (the models and data are then in memory; AdamW's state is made in the first step, alike in both modes);
on a GPU ``torch.cuda.max_memory_allocated`` and the same difference.

    # CPU (the run in benchmarks/RESULTS.md)
    PYTHONPATH=src python benchmarks/fused_loss.py --out benchmarks/results/fused_loss_cpu.json
    # GPU
    PYTHONPATH=src python benchmarks/fused_loss.py --device cuda --steps 10 --warmup 2 \\
        --out benchmarks/results/fused_loss_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_mode(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmdistill.signals.live import LiveTeacher
    from lmdistill.tasks.lm_objective import CausalLMObjective

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def llama(layers: int, seed: int):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=max(1, args.hidden // 192),
            max_position_embeddings=args.length,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg).to(device)

    student, teacher = llama(args.layers, 0), llama(args.layers * 2, 1).eval()
    teacher.requires_grad_(False)
    obj = CausalLMObjective({"kd": 0.5, "lm": 0.5}, 1.0, fused=args.mode == "fused", chunk_size=args.chunk)
    obj.attach(student, teacher)
    live = LiveTeacher(teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=g).to(device)
    batch = {
        "student": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        "labels": ids.clone(),
    }

    def step() -> dict:
        signal = live(batch)
        out = student(**batch["student"])
        terms = obj(out, signal, batch)
        loss = obj.total(terms)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {k: float(v) for k, v in terms.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, terms = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        terms.append(step())
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mib()
    n_params = sum(p.numel() for p in student.parameters())
    return {
        "mode": args.mode,
        "seconds_per_step": times,
        "mean_seconds_per_step": sum(times) / len(times),
        "peak_mib": peak,
        "before_first_step_mib": base,
        "peak_above_start_mib": peak - base,
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "first_step_terms": terms[0],
        "student_parameters": n_params,
        "logits_bytes_fp32_one_model": args.batch * args.length * args.vocab * 4,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--layers", type=int, default=2, help="student layers (the teacher has twice as many)")
    p.add_argument("--chunk", type=int, default=512, help="lm.chunk_size")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default="unfused,fused")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # a child process: run one mode, print JSON
    p.add_argument("--out")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args)))
        return
    import torch
    import transformers

    results = []
    for mode in args.modes.split(","):
        argv = [a for a in sys.argv[1:]]
        done = subprocess.run(
            [sys.executable, __file__, *argv, "--mode", mode], capture_output=True, text=True, check=False
        )
        if done.returncode:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    record = {
        "command": "python benchmarks/fused_loss.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": __import__("os").cpu_count(),
            "load_average_at_end": list(__import__("os").getloadavg()),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("mode", "out")},
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
