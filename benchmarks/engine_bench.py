"""The distillation engine against TextBrewer and a plain PyTorch loop, on the same work, in one run.

Work (identical in every mode): a BERT-shaped teacher (random weights: speed does not depend on them) and a
student of half its depth, soft-target KL at T=2 + hard-label CE + hidden-state MSE on every student layer
(student layer i <- teacher layer 2i), AdamW, gradient clipping at 1.0, EPOCHS epochs over N examples whose
lengths are log-normal (median 40 tokens, capped at --max-len), batch size --bs.

Modes (each in its own process, so peak memory is its own):
  plain             a plain PyTorch loop: shuffled batches padded to their longest example, eager, SDPA,
                    in --precision (auto: bf16 autocast on a GPU and on a CPU with native bf16, else fp32)
  textbrewer        TextBrewer 0.2.1 GeneralDistiller, batches padded to --max-len (as in its examples); fp32
                    (its only CPU mode; its GPU fp16 needs apex)
  textbrewer_dyn    the same with the plain loop's batches (padded to their longest example)
  plain_grouped, textbrewer_grouped   the plain loop and TextBrewer (dynamic padding) fed exactly the
                    length-grouped batches lmdistill's engine draws (lmdistill.data.sampler.
                    LengthGroupedBatchSampler, same seed and epochs): the engine alone, on identical batches
  lmdistill_live    lmdistill.engine.train with the teacher running live, training.mixed_precision from
                    --precision (auto: lmdistill's own choice, lmdistill.engine.choose_mixed_precision)
  lmdistill_cached  lmdistill.engine.train from a teacher cache (its one-off build is timed apart)
  lmdistill_cached_compile   the same with training.compile (meant for GPUs)

Measured per mode: examples/s, real (non-pad) tokens/s, useful model-FLOP utilisation (6 N_student + 2
N_teacher FLOPs per real token, N = encoder parameters, attention FLOPs not counted; the cached modes do no
teacher work while training) against the matmul peak measured here IN THE PRECISION THE MODE COMPUTES IN
(bf16 8192^3 on a GPU as in shared/anchors/gpu_probe.py; on a CPU 2048^3 in fp32, and in bf16 for the modes
that run under bf16 autocast: a bf16 mode is not credited against the lower fp32 peak), and peak memory (GPU:
max allocated; CPU: peak RSS of the process).

    # CPU, MiniLM-sized (hidden 384, 6 -> 3 layers): a few minutes on 2 cores
    python benchmarks/engine_bench.py --size minilm --n 384 --epochs 2
    # the same with plain and lmdistill forced to bf16 autocast (slower than fp32 where bf16 is emulated)
    python benchmarks/engine_bench.py --size minilm --n 384 --epochs 2 --precision bf16
    # GPU, BERT-base teacher, 6-layer student, batch 256 (the setting of shared/anchors/gpu_probe.py)
    PYTHONPATH=src python benchmarks/engine_bench.py --size bert-base --n 20480 --epochs 2 --bs 256 \\
        --cache-bs 512 --rounds 2 --out benchmarks/results/engine_gpu_bert_base.json \\
        --modes plain,textbrewer,textbrewer_dyn,lmdistill_live,lmdistill_cached,lmdistill_cached_compile

TextBrewer is a benchmark-only dependency, installed outside the main environment:
    pip install --no-deps --target .cache/bench/textbrewer textbrewer==0.2.1
Shim (TextBrewer 0.2.1 with transformers 5 / torch 2.x): its module imports tensorboardX or
torch.utils.tensorboard at import time; when neither is installed a stub SummaryWriter module is put in
sys.modules (it is never used: log_dir=None). Nothing else is patched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, teacher layers, student layers, heads
    "minilm": (384, 6, 3, 12),
    "bert-base": (768, 12, 6, 12),
    "tiny": (64, 4, 2, 4),  # a smoke test of the script itself
}
MODES = (
    "plain",
    "textbrewer",
    "textbrewer_dyn",
    "lmdistill_live",
    "lmdistill_cached",
    "lmdistill_cached_compile",
)
TEMPERATURE = 2.0


# ------------------------------------------------------------------------------------------------ the work


def models(size: str):
    from transformers import BertConfig, BertForSequenceClassification

    hidden, t_layers, s_layers, heads = SIZES[size]

    def make(layers: int, seed: int):
        torch.manual_seed(seed)
        cfg = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            num_labels=2,
            attn_implementation="sdpa",
        )
        return BertForSequenceClassification(cfg)

    return make(t_layers, 0), make(s_layers, 1)


def encoder_params(model) -> int:
    return sum(p.numel() for p in model.bert.encoder.parameters())


def layer_map(student, teacher) -> list[tuple[int, int]]:
    """(student, teacher) indices into hidden_states (0 = embeddings): student layer i <- teacher layer 2i."""
    ratio = teacher.config.num_hidden_layers // student.config.num_hidden_layers
    return [(i, ratio * i) for i in range(1, student.config.num_hidden_layers + 1)]


def examples(n: int, max_len: int, seed: int = 0):
    """Token ids ([CLS] ... [SEP]) with log-normal lengths (median 40, within [6, max_len]) and labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=g) * 0.6 + math.log(40)).round().clamp(6, max_len).long()
    ids = [[101] + torch.randint(1000, 30000, (int(k) - 2,), generator=g).tolist() + [102] for k in lengths]
    labels = torch.randint(0, 2, (n,), generator=g).tolist()
    return ids, labels


def pad(
    ids: list[list[int]], length: int | None = None, multiple: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    length = length or -(-max(len(x) for x in ids) // multiple) * multiple
    out = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros(len(ids), length, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return out, mask


def kd_loss(s_out, t_logits, t_hidden, labels, mask, pairs):
    """0.5 T^2 KL(p_T || p_S) + 0.5 CE + sum of hidden MSEs over real tokens (what lmdistill computes)."""
    s_logits = s_out.logits.float()
    log_p = F.log_softmax(t_logits.float() / TEMPERATURE, -1)
    log_q = F.log_softmax(s_logits / TEMPERATURE, -1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean() * TEMPERATURE**2
    loss = 0.5 * kl + 0.5 * F.cross_entropy(s_logits, labels)
    m = mask.unsqueeze(-1).float()
    for s, t in pairs:
        d = (s_out.hidden_states[s].float() - t_hidden[t].float()).pow(2).mean(-1, keepdim=True)
        loss = loss + (d * m).sum() / m.sum()
    return loss


# ------------------------------------------------------------------------------------------------ modes


def batch_order(args, ids, grouped: bool) -> list[torch.Tensor]:
    """Every epoch's index batches, made before timing: shuffled (seed 0), or exactly the length-grouped
    batches lmdistill's engine draws for seed 0 (its LengthGroupedBatchSampler, epoch by epoch)."""
    if grouped:
        from lmdistill.data.sampler import LengthGroupedBatchSampler

        sampler = LengthGroupedBatchSampler([len(x) for x in ids], args.bs, seed=0)
        return [b for e in range(args.epochs) for b in sampler.batches(e)]
    g = torch.Generator().manual_seed(0)
    return [b for _ in range(args.epochs) for b in torch.randperm(len(ids), generator=g).split(args.bs)]


def run_plain(args, dev, teacher, student, ids, labels, grouped: bool = False) -> dict:
    teacher.to(dev).eval()
    student.to(dev).train()
    pairs = layer_map(student, teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    order = batch_order(args, ids, grouped)
    start = time.perf_counter()
    for idx in order:
        x, mask = pad([ids[i] for i in idx])
        x, mask, y = x.to(dev), mask.to(dev), torch.tensor([labels[i] for i in idx], device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.mixed == "bf16"):
            with torch.no_grad():
                t_out = teacher(input_ids=x, attention_mask=mask, output_hidden_states=True)
            s_out = student(input_ids=x, attention_mask=mask, output_hidden_states=True)
            loss = kd_loss(s_out, t_out.logits, t_out.hidden_states, y, mask, pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    sync(dev)
    return {
        "train_s": time.perf_counter() - start,
        "loss": float(loss),
        "precision": precision_name(args.mixed),
    }


def textbrewer_module(path: str):
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except (
            ImportError
        ):  # shim: TextBrewer imports a SummaryWriter at import time; log_dir=None never uses it
            stub = types.ModuleType("tensorboardX")
            stub.SummaryWriter = type("SummaryWriter", (), {"__init__": lambda self, *a, **k: None})
            sys.modules["tensorboardX"] = stub
    import textbrewer

    return textbrewer


def run_textbrewer(args, dev, teacher, student, ids, labels, dynamic: bool, grouped: bool = False) -> dict:
    tb = textbrewer_module(args.textbrewer)
    teacher.to(dev).eval()
    student.to(dev).train()
    batches = []
    for idx in batch_order(args, ids, grouped):  # the plain loop's batches, made before timing
        x, mask = pad([ids[i] for i in idx], None if dynamic else args.max_len)
        batches.append(
            {"input_ids": x, "attention_mask": mask, "labels": torch.tensor([labels[i] for i in idx])}
        )

    def adaptor(batch, outputs):
        return {
            "logits": outputs.logits,
            "hidden": outputs.hidden_states,
            "inputs_mask": batch["attention_mask"],
            "losses": [outputs.loss],
        }

    matches = [
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        for s, t in layer_map(student, teacher)
    ]
    dcfg = tb.DistillationConfig(
        temperature=TEMPERATURE,
        hard_label_weight=0.5,
        kd_loss_type="ce",
        kd_loss_weight=0.5,
        intermediate_matches=matches,
    )
    out = tempfile.mkdtemp(prefix="tb_out")
    tcfg = tb.TrainingConfig(
        device=str(dev), output_dir=out, log_dir=None, ckpt_frequency=1, ckpt_epoch_frequency=10**6
    )  # checkpoint once, at the last epoch
    teacher.config.output_hidden_states = student.config.output_hidden_states = True
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    distiller = tb.GeneralDistiller(
        train_config=tcfg,
        distill_config=dcfg,
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptor,
        adaptor_S=adaptor,
    )
    start = time.perf_counter()
    with distiller:
        distiller.train(opt, batches, num_epochs=1, max_grad_norm=1.0)  # the list already holds every epoch
    sync(dev)
    return {
        "train_s": time.perf_counter() - start,
        "textbrewer": tb.__version__,
        "padded_to": "batch longest" if dynamic else f"{args.max_len}",
        "precision": "fp32",
    }


def lmdistill_parts(args, dev, teacher, student, ids, labels, compile_: bool = False):
    from lmdistill.config import TrainingConfig
    from lmdistill.data.text import Collator, TextDataset
    from lmdistill.objective import Match, Objective

    matches = [
        Match(f"hidden_mse_s{s - 1}_t{t - 1}", "hidden", "mse", 1.0, t - 1, s - 1)
        for s, t in layer_map(student, teacher)
    ]
    width = student.config.hidden_size
    objective = Objective(
        {"kd": 0.5, "ce": 0.5}, TEMPERATURE, matches=matches, student_width=width, teacher_width=width
    )
    cfg = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.bs,
        learning_rate=5e-5,
        warmup_ratio=0.0,
        log_every=10**6,
        cpu=dev.type == "cpu",
        max_grad_norm=1.0,
        compile=compile_,
        eval_batch_size=args.cache_bs,
        mixed_precision=args.mixed,
    )
    return objective, TextDataset({"input_ids": ids}, labels), Collator(0), cfg


def run_lmdistill(args, dev, teacher, student, ids, labels, cached: bool, compile_: bool = False) -> dict:
    from lmdistill.engine import train
    from lmdistill.signals.cache import open_or_build

    objective, data, collate, cfg = lmdistill_parts(args, dev, teacher, student, ids, labels, compile_)
    out = Path(tempfile.mkdtemp(prefix="lmd_bench"))
    result: dict = {
        "mixed_precision": args.mixed,
        "precision": precision_name(args.mixed),
        "attn": student.config._attn_implementation,
    }
    signal = None
    if cached:
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(result["mixed_precision"])
        start = time.perf_counter()
        signal = open_or_build(
            out / "cache",
            teacher,
            data,
            collate,
            [objective],
            batch_size=args.cache_bs,
            device=dev,
            autocast=amp,  # as lmdistill's own cache build (run.teacher_cache): bf16 also on a CPU
            log=lambda m: None,
        )
        sync(dev)
        result.update(cache_build_s=time.perf_counter() - start, cache_mb=signal.meta["bytes"] / 1e6)
        result["build_peak_gb"] = gpu_peak(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    if compile_:  # warm-up: every bucket compiles once before the timed run
        import copy

        warm = copy.deepcopy(cfg)
        warm.epochs, warm.log_every = 1, 10**6
        train(
            student=student,
            objective=objective,
            train_set=data,
            collate=collate,
            cfg=warm,
            seed=1,
            out_dir=out,
            teacher=teacher,
            teacher_signal=signal,
        )
        sync(dev)
    start = time.perf_counter()
    outcome = train(
        student=student,
        objective=objective,
        train_set=data,
        collate=collate,
        cfg=cfg,
        seed=0,
        out_dir=out,
        teacher=teacher,
        teacher_signal=signal,
    )
    sync(dev)
    result.update(train_s=time.perf_counter() - start, loss=outcome.history[-1]["loss"], steps=outcome.steps)
    return result


# ------------------------------------------------------------------------------------------------ measuring


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def gpu_peak(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None


def resolve_precision(choice: str, dev: torch.device) -> str:
    """``training.mixed_precision`` (no / bf16) of --precision: auto is lmdistill's own choice for ``dev``."""
    from lmdistill.engine import choose_mixed_precision

    if choice == "auto":
        return choose_mixed_precision("auto", cpu=dev.type == "cpu")[0]
    return {"fp32": "no", "bf16": "bf16"}[choice]


def precision_name(mixed: str) -> str:
    return "bf16" if mixed == "bf16" else "fp32"


def matmul_peak(dev: torch.device, precision: str = "fp32", cpu_size: int = 2048) -> tuple[float, str]:
    """FLOP/s of a large square matmul in ``precision`` (``fp32``, or ``bf16`` inputs as autocast feeds them):
    8192^3 on a GPU (gpu_probe.py's method), ``cpu_size``^3 on a CPU (benchmarks/gemm_peak.py: the best of
    three timed windows after a warm-up product)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if dev.type == "cpu":
        from gemm_peak import time_product

        return time_product(
            cpu_size, cpu_size, cpu_size, dtype, seconds=0.5
        ), f"{precision} {cpu_size}^3 matmul"
    n = 8192
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(dev)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(dev)
        best = max(best, 2 * n**3 * 10 / (time.perf_counter() - t))
    return best, f"{precision} {n}^3 matmul"


def worker(args) -> None:
    """One mode in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    args.mixed = resolve_precision(args.precision, dev)
    teacher, student = models(args.size)
    ids, labels = examples(args.n, args.max_len)
    mode = args.worker
    grouped = mode.endswith("_grouped")
    if mode.startswith("plain"):
        r = run_plain(args, dev, teacher, student, ids, labels, grouped=grouped)
    elif mode.startswith("textbrewer"):
        dynamic = mode != "textbrewer"
        r = run_textbrewer(args, dev, teacher, student, ids, labels, dynamic=dynamic, grouped=grouped)
    else:
        r = run_lmdistill(
            args,
            dev,
            teacher,
            student,
            ids,
            labels,
            cached="cached" in mode,
            compile_=mode.endswith("compile"),
        )
    real = sum(len(x) for x in ids) * args.epochs
    n_t, n_s = encoder_params(teacher), encoder_params(student)
    live = "cached" not in mode
    flops = (6 * n_s + (2 * n_t if live else 0)) * real
    r.update(
        mode=mode,
        examples_s=args.n * args.epochs / r["train_s"],
        real_tokens_s=real / r["train_s"],
        useful_tflops=flops / r["train_s"] / 1e12,
        peak_gb=gpu_peak(dev)
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    )
    if not live:  # the teacher pass, paid once, amortised over this run's epochs
        total = r["train_s"] + r["cache_build_s"]
        r["examples_s_incl_build"] = args.n * args.epochs / total
    print("RESULT " + json.dumps(r), flush=True)


def profile(args) -> None:
    """torch.profiler top ops of one mode (what limits it)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with prof(activities=activities) as p:
        worker(args)
    key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(p.key_averages().table(sort_by=key, row_limit=args.top))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "lmdistill"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="minilm")
    p.add_argument("--n", type=int, default=384, help="training examples")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument(
        "--cache-bs", type=int, default=128, help="batch size of the teacher pass that builds the cache"
    )
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="CPU: side of the square matmul whose rate is the peak (2048; smaller where bf16 is emulated: "
        "an emulated bf16 2048^3 product takes over a minute)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="of the plain and lmdistill modes (TextBrewer: fp32). auto: lmdistill's training.mixed_precision "
        "auto (bf16 on a GPU that supports it or a CPU with native bf16, else fp32)",
    )
    p.add_argument("--modes", default="plain,textbrewer,textbrewer_dyn,lmdistill_live,lmdistill_cached")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every mode this many times (in alternating order); the fastest run counts",
    )
    p.add_argument("--textbrewer", default=str(ROOT / ".cache/bench/textbrewer"))
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="with --worker: print torch.profiler's top ops")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    if args.worker:
        return profile(args) if args.profile else worker(args)

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    used = {"fp32", precision_name(resolve_precision(args.precision, dev))}  # TextBrewer: always fp32
    peaks, how = measure_peaks(dev, sorted(used), args.peak_size)
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name()
        if dev.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads of {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f})",
        "versions": versions(),
        "peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "peak_method": how,
        "cpu_bf16": cpu_bf16(),
        "command": " ".join(sys.argv),
        "args": vars(args),
    }
    print(json.dumps(env), flush=True)
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        modes = args.modes.split(",")
        for mode in modes[::-1] if r % 2 else modes:  # alternate the order: a drifting load favours no mode
            cmd = [sys.executable, __file__, "--worker", mode] + [a for a in sys.argv[1:] if a != "--profile"]
            done = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(json.dumps({"mode": mode, "error": (done.stderr or done.stdout)[-2000:]}), flush=True)
                continue
            r = json.loads(line[7:])
            r["mfu"] = r["useful_tflops"] * 1e12 / peaks[r["precision"]]
            print(json.dumps(r), flush=True)
            if mode not in best or r["train_s"] < best[mode]["train_s"]:
                best[mode] = r
    # measured again at the end; the higher (less disturbed) figure counts
    again, _ = measure_peaks(dev, sorted(used), args.peak_size)
    peaks = {k: max(v, again[k]) for k, v in peaks.items()}
    env["peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    for r in best.values():
        r["mfu"] = r["useful_tflops"] * 1e12 / peaks[r["precision"]]
    print(table(best, env))
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "results": best}, indent=2))


def measure_peaks(
    dev: torch.device, precisions: list[str], size: int = 2048
) -> tuple[dict[str, float], dict[str, str]]:
    """:func:`matmul_peak` in each precision: FLOP/s and how each was measured."""
    found = {p: matmul_peak(dev, p, size) for p in precisions}
    return {p: v[0] for p, v in found.items()}, {p: v[1] for p, v in found.items()}


def cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively, in words (lmdistill.models.precision)."""
    from lmdistill.models.precision import cpu_native_bf16

    return cpu_native_bf16()[1]


def table(best: dict[str, dict], env: dict) -> str:
    rows = [
        "| mode | precision | examples/s | real tokens/s | MFU (vs its precision's peak) | peak memory (GB) | "
        "vs textbrewer | vs textbrewer_dyn | vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(mode: str, base: str) -> str:
        return f"{best[mode]['examples_s'] / best[base]['examples_s']:.2f}x" if base in best else "-"

    for mode, r in best.items():
        peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "-"
        rows.append(
            f"| {mode} | {r['precision']} | {r['examples_s']:.1f} | {r['real_tokens_s']:.0f} | {r['mfu']:.1%} | "
            f"{peak} | "
            f"{ratio(mode, 'textbrewer')} | {ratio(mode, 'textbrewer_dyn')} | {ratio(mode, 'plain')} |"
        )
    for mode, r in best.items():
        if "cache_build_s" in r:
            rows.append(
                f"\n{mode}: cache built once in {r['cache_build_s']:.1f} s ({r['cache_mb']:.1f} MB); "
                f"including that build, {r['examples_s_incl_build']:.1f} examples/s over "
                f"{env['args']['epochs']} epochs"
            )
    peaks = (f"{k} {v:.3f} TFLOP/s ({env['peak_method'][k]})" for k, v in env["peak_tflops"].items())
    rows.append("\nmatmul peaks: " + ", ".join(peaks))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
