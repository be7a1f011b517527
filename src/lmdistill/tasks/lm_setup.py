"""Set-up pieces of ``task: causal_lm`` beyond the basics: the checks of the chat, cross-tokenizer, fused and LoRA
keys, the student (its own vocabulary, LoRA adapters), and the shared vocabulary of two tokenizers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmdistill.config.schema import Config, Verb
from lmdistill.errors import ModelError


def check_extras(cfg: Config, verb: Verb | None) -> list[str]:
    """One line per problem of ``lm.messages_column`` / ``train_on``, ``lm.cross_tokenizer``, ``lm.fused``
    and ``student.lora``."""
    from lmdistill.knowledge import FEATURES

    lm, errors = cfg.lm, []
    if lm.messages_column and lm.prompt_column:
        errors.append(
            "lm.messages_column and lm.prompt_column are both set: chat rows or prompt/response, not both"
        )
    if lm.train_on != "assistant" and not lm.messages_column:
        errors.append(f"lm.train_on ({lm.train_on}) applies to chat data: set lm.messages_column")
    if lm.cross_tokenizer:
        key = f"lm.cross_tokenizer ({lm.cross_tokenizer})"
        if verb == "finetune":
            errors.append(f"{key} needs a teacher: use `lmdistill distill`")
        for i, m in enumerate(cfg.distill.matches):
            if m.feature in FEATURES and not FEATURES[m.feature].sentence:
                errors.append(
                    f"distill.matches[{i}] ({m.feature}) is token-level, which needs one tokenizer: with {key} "
                    "the two models' positions differ; use a sentence-level feature (cls, mean) or remove it"
                )
        for on, what in (
            (lm.on_policy > 0, "lm.on_policy"),
            (lm.seq_kd, "lm.seq_kd"),
            (lm.fused, "lm.fused"),
        ):
            if on:
                errors.append(f"{what} is not supported with {key} yet: set one of them off")
        if cfg.student.init == "from_teacher" and cfg.student.tokenizer:
            errors.append(
                "student.tokenizer with student.init from_teacher: the kept layers carry the teacher's embeddings; "
                "use student.init config (a fresh model for the new vocabulary) or pretrained"
            )
    lora = cfg.student.lora
    if lora is not None:
        if verb == "finetune":
            errors.append(
                "student.lora applies to distill (the student); finetune trains model.name_or_path whole"
            )
        if lora.r < 1:
            errors.append(f"student.lora.r must be at least 1, got {lora.r}")
        if not lora.alpha > 0:
            errors.append(f"student.lora.alpha must be above 0, got {lora.alpha}")
        if not 0.0 <= lora.dropout < 1.0:
            errors.append(f"student.lora.dropout must be in [0, 1), got {lora.dropout}")
        if lora.target_modules is not None and not lora.target_modules:
            errors.append("student.lora.target_modules is empty: name modules, or null for PEFT's default")
    return errors


def fit_vocabulary(model: nn.Module, tokenizer) -> None:
    """A fresh student for its own tokenizer: embeddings (and head) resized to ``len(tokenizer)`` and the
    special ids taken from it."""
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(cfg, key, getattr(tokenizer, key))


def finish_student(cfg: Config, student: nn.Module, s_tok, t_tok) -> nn.Module:
    """The student of ``make_student`` for its own tokenizer (``init: config``) and with LoRA adapters."""
    from lmdistill.models.causal import same_tokenization

    if cfg.student.init == "config" and not same_tokenization(s_tok, t_tok):
        fit_vocabulary(student, s_tok)
    lora = cfg.student.lora
    if lora is None:
        return student
    from lmdistill.models.lora import apply_lora

    base = None
    if cfg.student.init == "pretrained":
        local = Path(cfg.student.name_or_path).expanduser()
        base = str(local.resolve()) if local.exists() else cfg.student.name_or_path
    return apply_lora(student, lora, base)


def shared_vocabulary(
    s_tok, t_tok, student: nn.Module, teacher: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_ids, t_to_s)`` of the tokens both vocabularies hold, by vocabulary string, within both models'
    outputs (:func:`lmdistill.losses.cross_vocab.vocab_map`)."""
    from lmdistill.losses.cross_vocab import vocab_map

    sv, tv = s_tok.get_vocab(), t_tok.get_vocab()
    common = sorted(set(sv) & set(tv), key=lambda w: sv[w])
    s_size = student.get_output_embeddings().weight.shape[0]
    t_size = teacher.get_output_embeddings().weight.shape[0]
    if not common:
        raise ModelError(
            "lm.cross_tokenizer aligned: the two vocabularies share no token; use lm.cross_tokenizer uld"
        )
    return vocab_map([sv[w] for w in common], [tv[w] for w in common], s_size, t_size)
