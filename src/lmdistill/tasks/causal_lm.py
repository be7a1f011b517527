"""Distillation of causal (GPT / Llama-style) language models: ``task: causal_lm``.

Data (:mod:`lmdistill.data.lm`): raw text packed into blocks of ``lm.block_size`` tokens, prompt/response rows
with no loss on the prompt, or chat rows (``lm.messages_column``) with the loss on assistant turns.

Objective (:mod:`lmdistill.tasks.lm_objective`), two terms, weighted by ``distill.losses``:

* ``kd``: a token-level divergence (``distill.divergence``, also named ``lm.divergence``;
  :mod:`lmdistill.losses.divergences`) between the teacher's and the student's next-token distributions at
  temperature ``distill.temperature``, averaged over the positions whose next token is a target, through
  the one output-level KD path of every task (times ``T**2`` when ``distill.kd_scale_t2``). Chunked over
  positions; ``lm.top_k`` reduces the teacher to its k most likely tokens plus the tail mass;
  ``lm.cross_tokenizer`` distils across tokenizers (ULD, or span-aligned); ``lm.fused`` never makes the
  student's logits.
* ``lm``: next-token cross-entropy on the same positions (chunked the same way).

Teacher-generated data (:mod:`lmdistill.tasks.lm_generation`): sequence-level KD (``lm.seq_kd``) and on-policy
distillation (``lm.on_policy``). LoRA students (``student.lora``): :mod:`lmdistill.models.lora`. See
docs/causal_lm.md for formulas, directions and defaults.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.data.lm import (  # noqa: F401 - the task's data, re-exported
    IGNORE,
    LMCollator,
    LMDataset,
    build_datasets,
    load_documents,
    pad_id_of,
    prompt_response,
    text_blocks,
)
from lmdistill.errors import LmdistillError
from lmdistill.methods.presets import PRESETS
from lmdistill.models.causal import (  # noqa: F401 - re-exported
    check_vocabularies,
    convert_gguf,
    load_causal_lm,
    same_tokenization,
    smollm2_folder,
)
from lmdistill.tasks import lm_generation, lm_setup
from lmdistill.tasks.base import Parts, Task, stage_objective
from lmdistill.tasks.base import make_student as _make_student
from lmdistill.tasks.lm_generation import Generation, continued, generate, prompt_of  # noqa: F401
from lmdistill.tasks.lm_objective import (  # noqa: F401 - re-exported
    CausalLMObjective,
    chunked_topk,
    next_targets,
    next_token_ce,
)


@torch.no_grad()
def perplexity(
    model: nn.Module, dataset: LMDataset, collate: LMCollator, batch_size: int, chunk_size: int = 512
) -> dict[str, float]:
    """``{"loss": mean next-token NLL (nats), "perplexity": exp(loss), "tokens": count}`` over the targets."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits = model(**{k: v.to(device) for k, v in batch["student"].items()}).logits
        targets = next_targets(batch["labels"].to(device))
        n = int((targets != IGNORE).sum())
        total += float(next_token_ce(logits, targets, chunk_size)) * n
        count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(count)}


def sequence_nll(
    model: nn.Module, dataset: LMDataset, collate: LMCollator, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per item of ``dataset``: the summed next-token NLL (nats) over its targets, and their number; the
    inputs of :func:`~lmdistill.report.stats.perplexity_ci`. Exactly :func:`perplexity` when aggregated."""
    from lmdistill.engine import model_device

    device = model_device(model)
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            logits = model(**{k: v.to(device) for k, v in batch["student"].items()}).logits
            targets = next_targets(batch["labels"].to(device))
            for row, tgt in zip(logits, targets):  # one sequence at a time: (T, V) in float32 at most
                keep = tgt != IGNORE
                nll = F.cross_entropy(row[keep].float(), tgt[keep], reduction="sum")
                sums.append(float(nll))
                counts.append(int(keep.sum()))
    model.train(was_training)
    return np.asarray(sums), np.asarray(counts)


# --------------------------------------------------------------------------------------------- the task


def make_student(cfg: Config, teacher, t_tok):
    """``(student, tokenizer)`` as configured in ``student`` (from teacher layers, a config, or pretrained; a
    fresh one sized for its own tokenizer; with LoRA adapters when ``student.lora``)."""
    student, s_tok = _make_student(cfg, teacher, t_tok, load_causal_lm)
    return lm_setup.finish_student(cfg, student, s_tok, t_tok), s_tok


class CausalLMTask(Task):
    """Next-token prediction: a causal LM teacher into a causal LM student (docs/causal_lm.md)."""

    name = "causal_lm"
    loss_terms = ("kd", "lm")
    default_losses = {"kd": 0.5, "lm": 0.5}
    baseline_losses = {"lm": 1.0}
    metrics = {"perplexity": False, "loss": False}
    primary_metric = "perplexity"
    cacheable = True
    presets = PRESETS
    pipeline = "text-generation"
    ensemble_combines = ("mean_probs", "mean_logits", "confidence")

    def ensemble_teacher(self, cfg: Config, key: str):
        from lmdistill.models.causal import load_causal_lm

        return load_causal_lm(cfg.teacher, key.removesuffix(".name_or_path"))

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        lm = cfg.lm
        errors = []
        if not 0.0 <= lm.on_policy <= 1.0:
            errors.append(f"lm.on_policy must be between 0 and 1, got {lm.on_policy}")
        for key in ("top_k", "chunk_size", "max_new_tokens"):
            v = getattr(lm, key)
            if v is not None and v < 1:
                errors.append(f"lm.{key} must be at least 1, got {v}")
        if lm.block_size is not None and lm.block_size < 4:
            errors.append(f"lm.block_size must be at least 4 tokens, got {lm.block_size}")
        if lm.generation_temperature < 0:
            errors.append(
                f"lm.generation_temperature must be 0 (greedy) or more, got {lm.generation_temperature}"
            )
        if (lm.prompt_column is None) != (lm.response_column is None):
            errors.append(
                "lm.prompt_column and lm.response_column go together: set both (prompt/response data) "
                "or neither (raw text in data.text_column)"
            )
        if verb == "finetune" and (lm.seq_kd or lm.on_policy > 0):
            key = "lm.seq_kd" if lm.seq_kd else "lm.on_policy"
            errors.append(
                f"{key} needs a teacher: use `lmdistill distill` (finetune trains on the data alone)"
            )
        if cfg.distill.stages:
            errors.append(
                "distill.stages is not supported for task causal_lm: use distill.losses and matches"
            )
        return errors + lm_setup.check_extras(cfg, verb)

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        lm = cfg.lm
        if lm.messages_column:
            return check_files(cfg.data, {"lm.messages_column": lm.messages_column})
        if lm.prompt_column:
            return check_files(
                cfg.data, {"lm.prompt_column": lm.prompt_column, "lm.response_column": lm.response_column}
            )
        return check_files(cfg.data, {"data.text_column": cfg.data.text_column}, lines_ok=True)

    def objective(
        self, cfg: Config, weights: dict[str, float], student, teacher, vocab_size, tokenizer, cross=None
    ):
        lm = cfg.lm
        gen = Generation(
            lm.max_new_tokens, lm.generation_temperature, pad_id_of(tokenizer), tokenizer.eos_token_id
        )
        stage = StageConfig(
            name="distill", losses=weights, matches=cfg.distill.matches if teacher is not None else []
        )
        return stage_objective(
            cfg,
            stage,
            student,
            teacher,
            "distill",
            CausalLMObjective,
            top_k=lm.top_k,
            chunk_size=lm.chunk_size,
            vocab_size=vocab_size,
            on_policy=lm.on_policy if teacher is not None else 0.0,
            generation=gen,
            cross=cross,
            fused=lm.fused,
        )

    def parts(self, cfg: Config, verb: str) -> Parts:
        if verb == "finetune":
            model, tok = load_causal_lm(cfg.model, "model")
            sets = build_datasets(cfg, tok)
            objective = self.objective(cfg, {"lm": 1.0}, model, None, None, tok)
            return self._parts(cfg, model, tok, None, objective, sets)
        teacher, t_tok = load_causal_lm(cfg.teacher, "teacher")
        student, s_tok = make_student(cfg, teacher, t_tok)
        s_name = cfg.student.tokenizer or cfg.student.name_or_path or cfg.teacher.name_or_path
        t_name = cfg.teacher.tokenizer or cfg.teacher.name_or_path
        if cfg.lm.cross_tokenizer:
            return self._cross_parts(cfg, student, s_tok, teacher, t_tok, (s_name, t_name))
        vocab = check_vocabularies(student, s_tok, teacher, t_tok, s_name, t_name)
        sets = build_datasets(cfg, s_tok, names=(s_name, t_name))
        objective = self.objective(cfg, cfg.distill.losses, student, teacher, vocab, s_tok)
        if cfg.lm.seq_kd:
            gen = Generation(cfg.lm.max_new_tokens, 0.0, pad_id_of(s_tok), s_tok.eos_token_id)
            identity = {
                "teacher": cfg.teacher.name_or_path,
                "teacher_config": teacher.config.to_json_string(),
            }
            teacher.to("cuda" if torch.cuda.is_available() and not cfg.training.cpu else "cpu")
            sets["train"] = lm_generation.sequence_kd(
                teacher,
                sets["train"],
                gen,
                Path(cfg.output_dir) / "seq_kd",
                identity,
                cfg.training.eval_batch_size,
            )
        return self._parts(cfg, student, s_tok, teacher, objective, sets)

    def _cross_parts(self, cfg: Config, student, s_tok, teacher, t_tok, names: tuple[str, str]) -> Parts:
        """Teacher and student with their own tokenizers: training items carry both tokenizations and their KD
        pairs (:mod:`lmdistill.data.alignment`); held-out splits are the student's."""
        from lmdistill.data.alignment import CrossCollator

        mode = cfg.lm.cross_tokenizer
        if mode == "aligned":
            s_ids, t_to_s = lm_setup.shared_vocabulary(s_tok, t_tok, student, teacher)
        else:
            s_ids, t_to_s = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        sets = build_datasets(cfg, s_tok, teacher_tokenizer=t_tok, names=names)
        objective = self.objective(
            cfg, cfg.distill.losses, student, teacher, None, s_tok, cross=(mode, s_ids, t_to_s)
        )
        train_collate = CrossCollator(pad_id_of(s_tok), pad_id_of(t_tok))
        parts = self._parts(cfg, student, s_tok, teacher, objective, sets, train_collate)
        parts.data["teacher_tokenizer"] = t_tok
        parts.extra["cross_tokenizer"] = {"mode": mode, "shared_tokens": int(s_ids.numel())}
        return parts

    def _parts(self, cfg: Config, model, tok, teacher, objective, sets: dict, train_collate=None) -> Parts:
        extra = {
            "task": self.name,
            "split_sizes": {k: len(v) for k, v in sets.items()},
            "split_targets": {k: v.num_targets() for k, v in sets.items()},
        }
        collate = LMCollator(pad_id_of(tok))
        data = {"sets": sets, "collate": collate, "batch_size": cfg.training.eval_batch_size}
        stage = StageConfig(name="distill" if teacher is not None else "finetune")
        return Parts(
            model,
            tok,
            sets["train"],
            train_collate or collate,
            [objective],
            [stage],
            teacher=teacher,
            data=data,
            extra=extra,
        )

    def has_split(self, parts: Parts, split: str) -> bool:
        return split in parts.data["sets"]

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective) -> dict[str, float]:
        d = parts.data
        return perplexity(model, d["sets"][split], d["collate"], d["batch_size"], objective.chunk_size)

    def save(self, model: nn.Module, tokenizer, path: Path, cfg: Config) -> None:
        """A LoRA student as its PEFT adapter (and its base when it exists nowhere else); others whole."""
        from lmdistill.models.lora import is_lora, save_lora

        if is_lora(model):
            save_lora(model, tokenizer, path, Path(cfg.output_dir) / "model")
        else:
            super().save(model, tokenizer, path, cfg)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        from transformers import AutoModelForCausalLM

        from lmdistill.models.lora import ADAPTER, load_lora

        device = next(parts.student.parameters()).device
        if (Path(path) / ADAPTER).is_file():
            return load_lora(path)[0].to(device)
        return AutoModelForCausalLM.from_pretrained(path).to(device)

    def results(self, parts: Parts, best: nn.Module, cfg: Config) -> dict:
        teacher, objective = parts.teacher, parts.objectives[-1]
        used = teacher is not None and (objective.needs_teacher or cfg.lm.seq_kd)
        if not (used and self.has_split(parts, "test")):
            return {"teacher_test": None}
        t_tok = parts.data.get("teacher_tokenizer")
        if t_tok is None:
            return {"teacher_test": self.evaluate(teacher, parts, "test", objective)}
        test = build_datasets(cfg, t_tok, splits=("test",))[
            "test"
        ]  # the teacher's own tokens (not comparable)
        collate = LMCollator(pad_id_of(t_tok))
        return {
            "teacher_test": perplexity(
                teacher, test, collate, cfg.training.eval_batch_size, cfg.lm.chunk_size
            )
        }

    def load_saved(self, path, key: str = "model"):
        from lmdistill.models.lora import ADAPTER, load_lora

        if (Path(path) / ADAPTER).is_file():
            return load_lora(path, key)
        return load_causal_lm(str(path), key)

    def owns(self, config: dict) -> bool:
        return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])

    # ---- the report
    def report_inputs(self, cfg: Config):
        """The test documents as texts (for the speed runs); the split itself is tokenised per model."""
        from lmdistill.tasks.base import ReportInputs

        docs = load_documents(cfg)
        if "test" not in docs:
            raise LmdistillError(
                "report: the data has no test split; set data.test or data.test_size above 0"
            )
        df = docs["test"]
        if cfg.lm.prompt_column:
            texts = [f"{p} {r}" for p, r in zip(df[cfg.lm.prompt_column], df[cfg.lm.response_column])]
            length = cfg.data.max_length
        else:
            texts = [str(t) for t in df[cfg.data.text_column]]
            length = cfg.lm.block_size or cfg.data.block_size or cfg.data.max_length
        note = (
            "Causal LM: a prediction is one forward pass over a text (its next-token distributions at every "
            "position, as in scoring or the prefill of generation); quality is the perplexity on the test "
            "split, lower is better."
        )
        return ReportInputs(None, texts[: cfg.report.speed_texts], length, None, [note])

    def report_quality(self, model, tokenizer, cfg: Config, inputs):
        """Perplexity and mean next-token loss on the test split, 95% intervals resampling whole sequences."""
        from lmdistill.report.stats import bootstrap_ci, perplexity_ci
        from lmdistill.tasks.base import Quality

        test = build_datasets(cfg, tokenizer, splits=("test",))["test"]
        sums, counts = sequence_nll(
            model, test, LMCollator(pad_id_of(tokenizer)), cfg.training.eval_batch_size
        )
        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        ppl = perplexity_ci(sums, counts, **kw)
        loss = bootstrap_ci((sums, counts.astype(float)), lambda s, n: s.sum(-1) / n.sum(-1), **kw)
        metrics = {
            "perplexity": {"value": ppl.point, "low": ppl.low, "high": ppl.high},
            "loss": {"value": loss.point, "low": loss.low, "high": loss.high},
        }
        evaluation = f"test split, {len(test)} sequences, {int(counts.sum()):,} predicted tokens"
        return Quality(metrics, evaluation, nll=(sums, counts))

    def report_compare(self, a, b, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """The perplexity difference with a paired bootstrap over whole test sequences."""
        from lmdistill.report.paired import comparison, paired_perplexity_bootstrap

        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        diff = paired_perplexity_bootstrap(*a.nll, *b.nll, **kw)
        return [comparison(*keys, "perplexity", diff, greater_is_better=False, n=len(a.nll[0]))]

    def evaluate_saved(
        self,
        model,
        *,
        config=None,
        data=None,
        split="test",
        text_column=None,
        batch_size=64,
        overrides=(),
        dtype="fp32",
        **_,
    ):
        """Perplexity (mean next-token NLL over the targets, and its exp) of a saved causal LM, its weights in
        ``dtype`` (fp32 or bf16; the NLL is computed in fp32)."""
        from lmdistill.errors import DataError
        from lmdistill.models.precision import for_inference
        from lmdistill.tasks import load_config
        from lmdistill.tasks.base import EvalResult

        if config is None and data is None:
            raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
        if data is not None:
            section = {"train": str(data), "validation_size": 0.0, "test_size": 0.0}
            if text_column is not None:
                section["text_column"] = text_column
            cfg = load_config({"task": self.name, "data": section, "model": {"name_or_path": str(model)}})
            split_name = "train"
        else:
            cfg = load_config(config, overrides)
            if cfg.task != self.name:
                raise DataError(
                    f"model '{model}' is a causal LM but the config's task is {cfg.task}: give a "
                    "config with task: causal_lm, or --data FILE"
                )
            split_name = split
            if text_column is not None:
                cfg.data.text_column = text_column
        net, tok = load_causal_lm(str(model), "model")
        net = for_inference(net, dtype)
        sets = build_datasets(cfg, tok)
        if split_name not in sets:
            raise DataError(f"split '{split}' is not in the data (available: {', '.join(sets)})")
        metrics = perplexity(net, sets[split_name], LMCollator(pad_id_of(tok)), batch_size, cfg.lm.chunk_size)
        return EvalResult(
            model=str(model),
            split=split if data is None else str(data),
            n=len(sets[split_name]),
            metrics=metrics,
            dtype=dtype,
        )
