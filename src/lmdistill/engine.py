"""THE distillation loop, on Accelerate. Fine-tuning is the same loop with no teacher.

Read top to bottom: set-up (batches, optimizer, schedule, Accelerate, resume), then one loop over batches
in which the frozen teacher produces its signal, the student produces its outputs, the objective turns both
into named loss terms, and the optimizer steps. Loss values stay on the device and are fetched only every
``log_every`` steps, so the loop never waits on the host. Evaluation every ``eval_every`` steps (or each
epoch) keeps the best student through ``on_best`` and can stop early. Checkpoints every ``save_every``
steps hold everything needed to continue bit for bit (see :mod:`lmdistill.checkpoint`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lmdistill import checkpoint
from lmdistill.config import TrainingConfig
from lmdistill.data.sampler import (
    LengthGroupedBatchSampler,
    Mix,
    MixedBatchSampler,
    ProcessShard,
    TokenBudgetBatchSampler,
)
from lmdistill.data.text import BUCKETS, BucketPad
from lmdistill.errors import LmdistillError
from lmdistill.models.precision import choose_mixed_precision, resolve_mixed_precision  # noqa: F401 (re-exported)
from lmdistill.mutual import clip_groups
from lmdistill.objective import Objective
from lmdistill.signals.live import LiveTeacher, SignalSource, TeacherSignal


class NonFiniteLoss(LmdistillError):
    """A loss term became NaN or infinite."""


class OutOfMemory(LmdistillError):
    """The run ran out of memory; the message says what to change."""


def _oom_advice(cfg: TrainingConfig, step: int, error: BaseException) -> OutOfMemory:
    where = "GPU" if isinstance(error, torch.OutOfMemoryError) else "host"
    return OutOfMemory(
        f"out of {where} memory at step {step} with training.batch_size={cfg.batch_size}: lower "
        f"training.batch_size (e.g. {max(1, cfg.batch_size // 2)}) and raise training.gradient_accumulation_steps "
        f"(e.g. {cfg.gradient_accumulation_steps * 2}) to keep the same global batch, lower data.max_length, use "
        "training.mixed_precision=bf16 on a GPU, or run the teacher from a cache (training.teacher_cache=auto)"
    )


class StudentStep(nn.Module):
    """Student + objective as one module, so Accelerate wraps (DDP, autocast) both and learned
    projections inside the objective are trained and synchronised with the student."""

    def __init__(self, student: nn.Module, objective: Objective, compile: bool = False):
        super().__init__()
        self.student = student
        self.objective = objective
        # training.compile: a compiled view of the same student, kept out of the module tree (no duplicate
        # state-dict keys); evaluation calls the plain student, so its shapes never trigger a compile
        self.__dict__["run_student"] = torch.compile(student, dynamic=False) if compile else student

    def forward(self, batch: dict, signal: TeacherSignal | None) -> dict[str, torch.Tensor]:
        out = self.run_student(**batch["student"], output_hidden_states=self.objective.needs_hidden or None)
        tap = self.objective.student_tap
        # loss math in fp32: under autocast the losses' own matmuls (attention relations) would run in bf16
        with torch.autocast(next(self.student.parameters()).device.type, enabled=False):
            return self.objective(out, signal, batch, tap.pop() if tap is not None else None)


@dataclass
class LoopState:
    """Everything about the loop's position that a checkpoint must restore (plain, JSON-able)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    last_eval_step: int = -1
    skipped_batches: int = 0
    running: dict[str, float] = field(default_factory=dict)
    n_running: int = 0
    history: list[dict] = field(default_factory=list)
    signature: dict | None = None
    logged_step: int = 0


@dataclass
class TrainOutcome:
    """What a run did: steps, best validation figure, time, and the logged history."""

    steps: int
    epochs: float
    train_seconds: float
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    skipped_batches: int = 0
    resumed_from: str | None = None
    history: list[dict] = field(default_factory=list)


def make_optimizer(params: list[tuple[str, nn.Parameter]], cfg: TrainingConfig, device: torch.device):
    """AdamW; no weight decay on biases and norms (1-D parameters); fused kernels on CUDA and CPU (one pass
    over each tensor: on a CPU about 5x faster than the per-tensor loop for a MiniLM-sized student)."""
    decay = [p for _, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=device.type in ("cuda", "cpu") or None)


def write_history(path: Path, history: list[dict]) -> None:
    """metrics.csv: one row per log or eval, columns in order of first appearance."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV is the log
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(
    *,
    student: nn.Module,
    objective: Objective,
    train_set: Dataset,
    collate: Callable,
    cfg: TrainingConfig,
    seed: int,
    out_dir: Path,
    log_dir: Path | None = None,
    teacher: nn.Module | None = None,
    teacher_signal: SignalSource | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    greater_is_better: bool = True,
    on_best: Callable[[nn.Module], None] | None = None,
    best_dir: Path | None = None,
    desc: str = "train",
    signature: dict | None = None,
    mix: Mix | None = None,
) -> TrainOutcome:
    """Train ``student`` on ``objective``; returns what happened. ``evaluate`` returns validation metrics;
    ``cfg.metric_for_best`` among them picks the best student (higher is better unless ``greater_is_better``
    is False). ``on_best`` receives the unwrapped student whenever validation improves (or at the end when
    there is no validation); ``best_dir``, the folder ``on_best`` saves to, is kept in every checkpoint and put
    back on resume, so a resumed run that never improves still ends with the best model. ``teacher_signal``
    (e.g. a :class:`~lmdistill.signals.cache.CachedTeacher`) replaces the live teacher for every batch that
    ``objective.prepare_batch`` leaves as it is; new batches (on-policy samples, when
    ``objective.rewrites_batches``) still go to ``teacher``. ``signature`` (the task, the student's shape and the
    config keys that change the trajectory) is saved with every checkpoint, and a checkpoint with another
    signature is refused by ``training.resume``. ``mix`` (a transfer set or augmented copies in the training set)
    makes every batch hold labelled and unlabelled examples in a fixed ratio. Checkpoints go to
    ``out_dir/checkpoints``, the logs (metrics.csv, tensorboard) to ``log_dir`` (default: ``out_dir``)."""
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    # ---- set-up -------------------------------------------------------------------------------
    set_seed(seed)
    # accelerate keeps its state per Python process: forget the previous run's mixed precision and gradient
    # accumulation (a notebook or `compress` may train several times); the process group is kept
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # the sampler draws GLOBAL batches (batch_size x processes) and each process takes its share
    # (ProcessShard), so N processes see exactly the batches one process with N x batch_size would see
    mixed, why = choose_mixed_precision(cfg.mixed_precision, cfg.cpu)
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=cfg.cpu,
        # split_batches also tells the prepared scheduler to step once per optimizer step, not once per process
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if cfg.compile:  # a few fixed lengths, so the compiled student sees a bounded number of shapes
        collate = BucketPad(
            collate,
            min(
                (
                    getattr(m.config, "max_position_embeddings", None) or 10**9
                    for m in (student, teacher)
                    if hasattr(m, "config")
                ),
                default=None,
            ),
        )
        limit = len(BUCKETS) * 2 + 2  # every bucket, each also with the epoch's smaller last batch
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    if teacher_signal is not None:
        collate = teacher_signal.wrap_collate(collate)  # cache look-ups run in the loader, not in the step
    lengths = train_set.lengths() if hasattr(train_set, "lengths") else [1] * len(train_set)
    if mix is not None:  # labelled and unlabelled examples in a fixed ratio in every batch
        if cfg.max_tokens is not None:
            raise LmdistillError(
                "training.max_tokens cannot be combined with a transfer set or augmentation (their batches mix "
                "two pools in a fixed ratio); set training.batch_size instead"
            )
        sampler = MixedBatchSampler(
            mix.labelled,
            mix.unlabelled,
            lengths,
            cfg.batch_size * accelerator.num_processes,
            mix.ratio,
            seed,
            sort=cfg.group_by_length,
        )
    elif cfg.max_tokens is not None:  # token-budget batches: the budget is per process
        if not hasattr(train_set, "lengths") or not getattr(train_set, "known_lengths", True):
            raise LmdistillError(
                "training.max_tokens needs the examples' lengths up front: not with "
                "data.streaming (set training.batch_size instead)"
            )
        sampler = TokenBudgetBatchSampler(lengths, cfg.max_tokens, seed, processes=accelerator.num_processes)
    else:
        sampler = LengthGroupedBatchSampler(
            lengths, cfg.batch_size * accelerator.num_processes, seed, sort=cfg.group_by_length
        )
    # its own generator: creating an epoch's iterator must not draw from the global RNG (dropout), or a
    # resumed run would see other dropout masks than an uninterrupted one
    # each process takes its share of every global batch itself (accelerate's split_batches would skip any
    # batch shorter than batch_size); accelerate then only moves the batches to the device
    loader = DataLoader(
        train_set,
        batch_sampler=ProcessShard(sampler, accelerator.process_index, accelerator.num_processes),
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    loader = prepare_data_loader(
        loader,
        device=accelerator.device,
        num_processes=1,
        process_index=0,
        put_on_device=True,
        non_blocking=accelerator.device.type == "cuda",
    )
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
    total_steps = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    model = StudentStep(student, objective, compile=cfg.compile)
    model.train()
    optimizer = make_optimizer(list(model.named_parameters()), cfg, accelerator.device)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),  # one scheduler step per optimizer step
        num_training_steps=total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    signal_of = None
    # with a cache and batches that are never rewritten the teacher never runs: it stays where it is (no
    # device memory)
    live = (
        teacher is not None
        and objective.needs_teacher
        and (teacher_signal is None or objective.rewrites_batches)
    )
    if live:  # frozen, never wrapped for training (no DDP gradient hooks on it): a replica on every process
        teacher.to(accelerator.device)
    objective.attach(student, teacher)
    if live:
        signal_of = LiveTeacher(teacher, hidden_states=objective.needs_hidden, tap=objective.teacher_tap)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = clip_groups(student, objective) or [trainable]  # mutual learning: each student clipped apart

    state = LoopState(signature=signature)
    resumed_from = checkpoint.find(cfg.resume, out_dir)
    if resumed_from is not None:
        checkpoint.check(resumed_from, signature, accelerator.num_processes)  # before anything is restored
        state = LoopState(**{**checkpoint.load(accelerator, resumed_from), "signature": signature})
        restore = state.best_step is not None and best_dir is not None and accelerator.is_main_process
        if restore and not checkpoint.restore_best(resumed_from, Path(best_dir)):
            raise LmdistillError(
                f"resume: {resumed_from} records a best model (step {state.best_step}) but does not hold "
                "it (a checkpoint of an older lmdistill); pass --overwrite to train again"
            )
    elif cfg.resume:
        print(
            f"resume: no checkpoint in {Path(out_dir) / 'checkpoints'}; training starts at step 0", flush=True
        )
    main = accelerator.is_main_process
    if main:
        print(f"precision: {'fp32' if mixed == 'no' else mixed + ' autocast'} ({why})", flush=True)
    log_dir = Path(log_dir or out_dir)
    writer = _tensorboard(log_dir) if main else None
    progress = tqdm(
        total=total_steps,
        initial=state.step,
        desc=desc,
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    if resumed_from is not None:
        progress.write(f"resumed from {resumed_from} at step {state.step}")
    running = {k: torch.tensor(v, device=accelerator.device) for k, v in state.running.items()}
    log_path = log_dir / "metrics.csv"
    started = time.perf_counter()

    def log(row: dict) -> None:
        state.history.append(row)
        if main:
            write_history(log_path, state.history)
            if writer is not None:
                for k, v in row.items():
                    if k not in ("step", "epoch") and isinstance(v, float) and np.isfinite(v):
                        writer.add_scalar(k, v, row["step"])

    def run_eval() -> bool:
        """Evaluate, keep the best student; True when patience has run out."""
        state.last_eval_step = state.step
        metrics = evaluate(accelerator.unwrap_model(model).student)
        model.train()
        log(
            {
                "step": state.step,
                "epoch": round(state.step / steps_per_epoch, 4),
                **{f"eval/{k}": v for k, v in metrics.items()},
            }
        )
        value = metrics.get(cfg.metric_for_best)
        best = state.best_metric
        if value is not None and (best is None or (value > best if greater_is_better else value < best)):
            state.best_metric, state.best_step = value, state.step
            state.evals_without_gain = 0
            if on_best is not None and main:
                on_best(accelerator.unwrap_model(model).student)
        else:
            state.evals_without_gain += 1
        progress.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return (
            cfg.early_stopping_patience is not None
            and state.evals_without_gain >= cfg.early_stopping_patience
        )

    def check_finite(values: dict[str, float]) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            progress.close()
            term = next((k for k in bad if k != "loss"), "loss")
            first = state.logged_step + 1  # the mean since the last log: the steps it covers
            steps = f"at step {first}" if first == state.step else f"between steps {first} and {state.step}"
            weight = f" (weight {objective.weight_now(term):g})" if term != "loss" else ""
            raise NonFiniteLoss(
                f"loss term '{term}' became {values[term]} {steps}{weight}; the run stopped and what was saved "
                f"before is kept. Check the data and that term's settings, lower training.learning_rate (now "
                f"{scheduler.get_last_lr()[0]:.3g}), or set training.on_nonfinite=skip to skip such batches"
            )

    # ---- the loop -----------------------------------------------------------------------------
    stop = False
    try:
        while state.step < total_steps and not stop and state.epoch < num_epochs:
            loader.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            batches = (
                accelerator.skip_first_batches(loader, state.batches_in_epoch)
                if state.batches_in_epoch
                else loader
            )
            for batch in batches:
                state.batches_in_epoch += 1
                objective.progress = state.step / total_steps
                with accelerator.accumulate(model):
                    source = teacher_signal if objective.needs_teacher else None
                    if (
                        objective.rewrites_batches
                    ):  # e.g. on-policy distillation: the student writes the batch
                        prepared = objective.prepare_batch(batch, accelerator.unwrap_model(model).student)
                        if (
                            prepared is not batch
                        ):  # a new batch: no cache holds it, the live teacher scores it
                            batch, source = prepared, None
                    source = signal_of if source is None else source
                    if source is not None:
                        source.at_step(state.step)  # an ensemble under SKD draws its teacher by the step
                    with accelerator.autocast():  # the live teacher in the student's precision
                        signal = source(batch) if source is not None else None
                    terms = model(batch, signal)
                    loss = objective.total(terms)
                    if cfg.on_nonfinite == "skip" and not torch.isfinite(loss):  # a host sync per step
                        state.skipped_batches += 1
                        loss = loss.detach().nan_to_num(0.0, 0.0, 0.0)
                        terms = {k: v.detach().nan_to_num(0.0, 0.0, 0.0) for k, v in terms.items()}
                    else:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        _clip(accelerator, groups, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in {"loss": loss, **terms}.items():  # summed on the device: no host sync per step
                    running[k] = running.get(k, 0.0) + v.detach().float()
                state.n_running += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                progress.update(1)
                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    # the mean over processes (a collective every log_every steps, never per step)
                    values = {
                        k: accelerator.reduce(v / state.n_running, "mean").item() for k, v in running.items()
                    }
                    running, state.n_running = {}, 0
                    check_finite(values)
                    state.logged_step = state.step
                    log(
                        {
                            "step": state.step,
                            "epoch": round(state.step / steps_per_epoch, 4),
                            "lr": scheduler.get_last_lr()[0],
                            **{("loss" if k == "loss" else f"loss/{k}"): v for k, v in values.items()},
                        }
                    )
                    progress.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
                if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
                    stop = run_eval()
                if stop or state.step >= total_steps:
                    break
                if cfg.save_every and state.step % cfg.save_every == 0:
                    state.running = {k: v.item() for k, v in running.items()}
                    checkpoint.save(
                        accelerator, out_dir, state.__dict__, keep=cfg.save_total_limit, best=best_dir
                    )
            else:  # the epoch ran to its end
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                if evaluate is not None and not cfg.eval_every:
                    stop = run_eval()
        if evaluate is not None and not stop and state.last_eval_step != state.step:
            run_eval()  # the final student is always evaluated
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise _oom_advice(cfg, state.step, e) from None
    finally:
        objective.detach()  # hooks never outlive the run
        progress.close()  # also on an error: its message starts on a line of its own
    if (evaluate is None or state.best_step is None) and on_best is not None and main:
        on_best(accelerator.unwrap_model(model).student)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return TrainOutcome(
        steps=state.step,
        epochs=round(state.step / steps_per_epoch, 4),
        train_seconds=time.perf_counter() - started,
        best_metric=state.best_metric,
        best_step=state.best_step,
        stopped_early=stop,
        skipped_batches=state.skipped_batches,
        resumed_from=str(resumed_from) if resumed_from else None,
        history=state.history,
    )


def _clip(accelerator, groups: list[list[nn.Parameter]], max_norm: float) -> None:
    """Clip the gradients by global norm, each group on its own (one group: accelerate's own call)."""
    if len(groups) == 1:
        accelerator.clip_grad_norm_(groups[0], max_norm)
        return
    accelerator.unscale_gradients()  # once (fp16 loss scaling), then a plain clip per group
    for group in groups:
        torch.nn.utils.clip_grad_norm_(group, max_norm)


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, collate: Callable, batch_size: int, device: torch.device | None = None
) -> np.ndarray:
    """Logits for every example of ``dataset`` in order: ``(N, C)`` float32 numpy. ``model`` is a PyTorch model or
    anything called the same way that returns ``.logits`` (an ONNX Runtime runner: its ``device`` attribute)."""
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    chunks = []
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch["student"].items()}
        chunks.append(model(**inputs).logits.float().cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy()


def model_device(model) -> torch.device:
    """Where a model's inputs go: its ``device`` attribute (transformers models, ONNX Runtime runners), else the
    device of its first parameter."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device
