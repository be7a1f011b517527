"""LoRA students (``student.lora``) through PEFT: the student's own weights are frozen and low-rank adapters
train (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1: ``h = W0 x + B A x``
scaled by ``alpha / r``, ``B`` initialised to 0 so training starts from the student itself).

A saved LoRA student is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``, the
tokenizer). Its frozen base is the student's ``name_or_path`` for ``student.init: pretrained``; a student made
from the teacher's layers or a fresh config exists nowhere else, so its base is saved beside the adapter in
``base/`` (once: it never changes). ``adapter_config.json`` names the base by absolute path, so
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), FOLDER)`` (or transformers' own PEFT
loading of the folder) works; :func:`merge_and_save` writes a plain model with the adapters merged in (there is no
``lmdistill export --merge`` verb: the CLI has no export verb yet).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmdistill.config.schema import LoraSection
from lmdistill.errors import ModelError
from lmdistill.fileio import short_list

ADAPTER = "adapter_config.json"
BASE = "base"


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every target names a module of ``model`` (a full name or its last part); one line otherwise."""
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ModelError(
                f"student.lora.target_modules: the student ({type(model).__name__}) has no module '{t}'; its "
                f"linear layers are {short_list(_linear_names(model))}"
            )


def _peft():
    """The peft package, or one line saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ModelError(
            "student.lora needs the peft package: pip install 'lmdistill[lora]' (or pip install peft)"
        ) from None
    return peft


def apply_lora(model: nn.Module, lora: LoraSection, base: str | None) -> nn.Module:
    """``model`` wrapped with trainable LoRA adapters (PEFT); every other weight frozen. ``base``: where the
    frozen base lives (None: saved beside the adapter)."""
    peft = _peft()
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model  # noqa: N806

    if lora.target_modules is not None:
        check_targets(model, lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as e:  # e.g. no default target modules for this architecture
        first = " ".join(str(e).split())[:120]
        raise ModelError(
            f"student.lora: PEFT cannot add adapters to the student ({first}); set student.lora.target_modules"
        ) from None
    wrapped.peft_config["default"].base_model_name_or_path = base
    wrapped.__dict__["lmdistill_base"] = base  # None: the base is saved with every adapter
    return wrapped


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base's weights under their own names (no adapter weights, ``base_layer.`` removed)."""
    state = model.get_base_model().state_dict()
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


def save_lora(model: nn.Module, tokenizer, path: Path, final_dir: Path) -> None:
    """The adapter and tokenizer into ``path``; the base into ``path/base`` when it exists nowhere else (its
    absolute final place, ``final_dir/base``, is written into adapter_config.json)."""
    path = Path(path)
    config = model.peft_config["default"]
    if model.__dict__.get("lmdistill_base") is None:
        config.base_model_name_or_path = str((Path(final_dir) / BASE).resolve())
        base = model.get_base_model()
        base.save_pretrained(path / BASE, state_dict=_base_state(model), safe_serialization=True)
        tokenizer.save_pretrained(path / BASE)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def load_lora(path: str | Path, key: str = "model"):
    """``(PeftModel, tokenizer)`` of a saved LoRA student (its base from ``path/base`` or the adapter's
    ``base_model_name_or_path``)."""
    import json

    from transformers import AutoModelForCausalLM

    PeftModel = _peft().PeftModel  # noqa: N806

    from lmdistill.models.load import load_tokenizer

    path = Path(path)
    inside = path / BASE
    base = (
        str(inside)
        if inside.is_dir()
        else json.loads((path / ADAPTER).read_text()).get("base_model_name_or_path")
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = " ".join(str(e).split())[:120]
        raise ModelError(
            f"{key}: cannot load the LoRA adapter '{path}' on its base '{base}' ({first})"
        ) from None
    return model, load_tokenizer(str(path), f"{key}.tokenizer")


def merge_and_save(model_dir: str | Path, dest: str | Path) -> Path:
    """A plain transformers model folder ``dest`` with the LoRA adapter of ``model_dir`` merged into its base
    (``W0 + (alpha / r) B A``), and the tokenizer. Returns ``dest``."""
    dest = Path(dest)
    if not (Path(model_dir) / ADAPTER).is_file():
        raise ModelError(f"merge_and_save: '{model_dir}' is not a LoRA adapter folder (no {ADAPTER})")
    if dest.exists() and any(dest.iterdir()):
        raise ModelError(f"merge_and_save: '{dest}' exists and is not empty; give a new folder")
    model, tokenizer = load_lora(model_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
