"""Encoders with a per-token head: token classifiers (NER, POS) and extractive question answering (start / end).

Both go through :func:`lmdistill.models.load.load_weights` with every check it makes. :func:`load_new_head`
reads a pretrained encoder and creates the task head when the folder has none (a head of another task, or of
another size, is replaced); :func:`load_saved_head` reads a model trained for the task as it is and refuses a
folder whose ``architectures`` name another head (loading it would create a random head and score noise).
Word alignment and answer offsets need a fast (Rust) tokenizer: :func:`fast_tokenizer` says so in one line.
"""

from __future__ import annotations

from lmdistill.config.schema import ModelConfig
from lmdistill.errors import ModelError
from lmdistill.models.load import (
    ENCODERS,
    OTHER_HEADS,
    _spec,
    check_tokenizer_files,
    load_config_of,
    load_tokenizer,
    load_weights,
)

HEADS = {
    "token_classification": ("ForTokenClassification", ("classifier.",)),
    "question_answering": ("ForQuestionAnswering", ("qa_outputs.",)),
}
"""task -> (the architecture suffix of its models, the tensors a new head may lack)."""


def _auto(task: str):
    import transformers

    return {
        "token_classification": transformers.AutoModelForTokenClassification,
        "question_answering": transformers.AutoModelForQuestionAnswering,
    }[task]


def _check_encoder(config, key: str, task: str) -> None:
    if config.model_type not in ENCODERS:
        raise ModelError(
            f"{key}: model type '{config.model_type}' is not supported for {task} "
            f"(supported encoders: {', '.join(ENCODERS)})"
        )


def fast_tokenizer(tokenizer, key: str, task: str):
    """``tokenizer`` when it is a fast tokenizer (word ids, character offsets), else a one-line ModelError."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{key}: {task} needs a fast tokenizer (tokenizer.json: word ids and character offsets), got "
            f"{type(tokenizer).__name__}; save the model with a fast tokenizer"
        )
    return tokenizer


def load_new_head(spec: ModelConfig | str, key: str, task: str, **config_updates):
    """``(model, tokenizer)``: the encoder of ``spec`` with the head of ``task`` (created when missing);
    ``config_updates`` are set on its config first (e.g. ``num_labels``, ``id2label``)."""
    spec = _spec(spec)
    config = load_config_of(spec.name_or_path, f"{key}.name_or_path", spec.revision, spec.trust_remote_code)
    _check_encoder(config, f"{key}.name_or_path", task)
    check_tokenizer_files(spec, key)
    for name, value in config_updates.items():
        setattr(config, name, value)
    model = load_weights(
        _auto(task),
        spec,
        key,
        allow_missing=HEADS[task][1],
        allow_unexpected=OTHER_HEADS,
        config=config,
        ignore_mismatched_sizes=True,  # a head of another size (other labels) is replaced by a new one
    )
    return model, fast_tokenizer(load_tokenizer(spec, f"{key}.tokenizer"), f"{key}.tokenizer", task)


def load_saved_head(spec: ModelConfig | str, key: str, task: str):
    """``(model, tokenizer)`` of a model trained for ``task`` (head, labels and tokenizer as saved)."""
    spec = _spec(spec)
    base = key.removesuffix(".name_or_path")
    config = load_config_of(spec.name_or_path, key, spec.revision, spec.trust_remote_code)
    _check_encoder(config, key, task)
    suffix = HEADS[task][0]
    archs = getattr(config, "architectures", None) or []
    if not any(str(a).endswith(suffix) for a in archs):
        what = f"architectures: {', '.join(archs)}" if archs else "no architectures in its config.json"
        raise ModelError(
            f"{key}: '{spec.name_or_path}' is not a {task} model ({what}); fine-tune one first "
            f"(lmdistill finetune with task: {task}) or give a folder saved with a ...{suffix} head"
        )
    check_tokenizer_files(spec, base)
    model = load_weights(_auto(task), spec, base)
    tok_key = f"{base}.tokenizer" if key.endswith(".name_or_path") else key
    return model, fast_tokenizer(load_tokenizer(spec, tok_key), tok_key, task)
