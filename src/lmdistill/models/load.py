"""Load teachers, students and tokenizers (local folders or hub ids) with errors that say what to fix.

Every model lmdistill reads goes through :func:`load_weights`, which refuses in one line (a
:class:`~lmdistill.errors.ModelError` naming the config key):

- a folder that cannot be read (permissions), is not a model (no config.json), or has no tokenizer files when
  no separate tokenizer is named;
- weights that cannot be read: a truncated or garbage safetensors file, a pickle that is not plain tensors
  (``.bin`` files are read with ``torch.load(weights_only=True)`` by transformers: nothing is executed);
- weights that do not fit the config: missing or unexpected tensors (a config whose layer count disagrees with
  its weights), or tensors of another shape, beyond the task head a loader is allowed to create;
- non-finite weights (NaN or inf).

``revision``, ``trust_remote_code`` and a separate ``tokenizer`` of a :class:`~lmdistill.config.ModelConfig` are
honoured by every loader.
"""

from __future__ import annotations

from pathlib import Path

from lmdistill.config.schema import ModelConfig
from lmdistill.errors import ModelError
from lmdistill.fileio import clip, readable_folder

# model_type -> family note; the encoders whose layers, heads and outputs lmdistill knows.
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
CLASSIFIER_HEAD = ("classifier.", "score.", "pre_classifier.", "pooler.")
"""Tensors a sequence classifier made from a base model may lack: its new head (and a pooler)."""
HEADS = ("classifier.", "score.", "pre_classifier.", "cls.", "lm_head.", "qa_outputs.", "pooler.")
"""Task heads a base encoder (``AutoModel``) leaves unused when it reads a folder of a model with a head."""
OTHER_HEADS = (
    "pooler.",
    "cls.",
    "classifier.",
    "pre_classifier.",
    "qa_outputs.",
    "lm_head.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
    "generator_",
    "discriminator_predictions.",
)
"""Tensors of a pretrained folder a model with a new head may leave unused: the pooler (which RoBERTa's and
MPNet's classifiers and every per-token model lack) and the heads of other tasks (pretraining, span, ...)."""


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def _spec(spec: ModelConfig | str) -> ModelConfig:
    return ModelConfig(name_or_path=str(spec)) if isinstance(spec, (str, Path)) else spec


def _local(path: str) -> Path | None:
    """The local file or folder ``path`` names when it exists (None: a hub id, or nothing there)."""
    p = Path(path).expanduser()
    return p if p.exists() else None


def load_config_of(name_or_path: str, key: str, revision: str | None = None, trust_remote_code: bool = False):
    """The transformers config of a model, or a one-line ModelError naming the key."""
    from transformers import AutoConfig

    local = _local(name_or_path)
    if local is not None:
        readable_folder(local, key, "model folder")
        if not (local / "config.json").is_file():
            raise ModelError(
                clip(f"{key}: '{name_or_path}' has no config.json: it is not a saved model folder")
            )
    try:
        return AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        where = "local folder" if local is not None else "local folder or reachable Hugging Face Hub id"
        raise ModelError(
            clip(
                f"{key}: '{name_or_path}' is not a loadable {where} ({_short(e)}); give a folder with config.json, "
                "or a hub id with a network"
            )
        ) from None


def check_encoder(config, key: str) -> None:
    if config.model_type not in ENCODERS:
        raise ModelError(
            f"{key}: model type '{config.model_type}' is not supported for text classification "
            f"(supported encoders: {', '.join(ENCODERS)})"
        )


def check_tokenizer_files(spec: ModelConfig, key: str) -> None:
    """A local model folder used for its tokenizer must have tokenizer files (else a separate tokenizer key)."""
    if spec.tokenizer:
        return
    local = _local(spec.name_or_path)
    if local is not None and local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            clip(
                f"{key}.name_or_path: '{spec.name_or_path}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, "
                f"...); save the tokenizer with the model, or set {key}.tokenizer to its folder or id"
            )
        )


def load_tokenizer(
    spec: ModelConfig | str, key: str, revision: str | None = None, trust_remote_code: bool = False
):
    """The tokenizer of ``spec`` (its ``tokenizer`` when set, else its model folder or id)."""
    from transformers import AutoTokenizer

    if isinstance(spec, ModelConfig):
        name, revision, trust_remote_code = (
            spec.tokenizer or spec.name_or_path,
            spec.revision,
            spec.trust_remote_code,
        )
    else:
        name = str(spec)
    local = _local(name)
    if local is not None and local.is_dir():
        readable_folder(local, key, "tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            clip(
                f"{key}: no tokenizer could be loaded from '{name}' ({_short(e)}); "
                f"set {key.rsplit('.', 1)[0]}.tokenizer to a folder or id that has one"
            )
        ) from None


def _unreadable(e: BaseException) -> bool:
    """Errors of reading weight files (truncated, garbage, a pickle that is not plain tensors)."""
    import pickle

    names = {"SafetensorError", "HeaderTooLarge", "UnpicklingError"}
    return isinstance(e, (OSError, EOFError, pickle.UnpicklingError)) or type(e).__name__ in names


def load_weights(
    auto_cls,
    spec: ModelConfig | str,
    key: str,
    *,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
    check: bool = True,
    **kwargs,
):
    """``auto_cls.from_pretrained`` of ``spec`` with every check of the module docstring.

    ``allow_missing`` / ``allow_unexpected``: name prefixes of tensors the load may create (a new task head) or
    leave unused (a head a base model does not have); ``check=False`` returns ``(model, loading info)`` unchecked;
    ``kwargs`` go to ``from_pretrained`` (e.g. ``config``, ``ignore_mismatched_sizes``).
    """
    spec = _spec(spec)
    path = spec.name_or_path
    local = _local(path)
    if local is not None:
        readable_folder(local, f"{key}.name_or_path", "model folder")
    try:
        model, info = auto_cls.from_pretrained(
            path,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            output_loading_info=True,
            **kwargs,
        )
    except Exception as e:  # transformers, torch and safetensors raise many types for unreadable weights
        if _unreadable(e) or isinstance(e, (ValueError, RuntimeError, KeyError, TypeError)):
            what = "cannot be read (truncated or damaged?)" if _unreadable(e) else "cannot be loaded"
            raise ModelError(
                clip(f"{key}.name_or_path: the weights of '{path}' {what}: {_short(e)}; save the model again")
            ) from None
        raise
    if not check:
        return model, info
    check_loaded(model, info, path, f"{key}.name_or_path", allow_missing, allow_unexpected)
    return model


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    """``name`` (``bert.pooler.dense.weight`` or ``pooler.dense.weight``) starts with one of ``prefixes``."""
    return bool(prefixes) and any(part.startswith(prefixes) for part in (name, name.split(".", 1)[-1]))


def check_loaded(
    model,
    info: dict,
    path: str,
    key: str,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> None:
    """Refuse weights that do not fit the config (beyond the allowed prefixes) and non-finite weights."""
    import torch

    missing = [k for k in info.get("missing_keys", ()) if not _matches(k, allow_missing)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not _matches(k, allow_unexpected)]
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", ())]
    mismatched = [k for k in mismatched if not _matches(k, allow_missing)]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(v)} {what} (e.g. '{v[0]}')"
            for what, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", mismatched),
            )
            if v
        ]
        layers = getattr(model.config, "num_hidden_layers", None)
        raise ModelError(
            clip(
                f"{key}: the weights of '{path}' do not fit its config.json ({layers} layers): "
                f"{', '.join(parts)} tensors; the config does not describe these weights (layer count or sizes "
                "changed?), or it is a model of another kind: fix config.json or give the right folder"
            )
        )
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(
                clip(f"{key}: '{path}' has non-finite weights (NaN or inf) in '{name}'; it cannot be used")
            )


def load_classifier(
    spec: ModelConfig | str,
    key: str,
    *,
    num_labels: int,
    label_names: list[str] | None = None,
):
    """A sequence classifier (head created when missing). ``num_labels=1`` means regression.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForSequenceClassification

    spec = _spec(spec)
    config = load_config_of(spec.name_or_path, f"{key}.name_or_path", spec.revision, spec.trust_remote_code)
    check_encoder(config, f"{key}.name_or_path")
    check_tokenizer_files(spec, key)
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    model = load_weights(
        AutoModelForSequenceClassification,
        spec,
        key,
        allow_missing=CLASSIFIER_HEAD,
        allow_unexpected=OTHER_HEADS,  # e.g. the pooler of a sentence-transformers MPNet or of roberta-base
        config=config,
        ignore_mismatched_sizes=True,  # a head of another task is replaced by a new one of the right size
    )
    return model, load_tokenizer(spec, f"{key}.tokenizer")


def load_saved_classifier(spec: ModelConfig | str, key: str = "model"):
    """A model saved by lmdistill (or any fine-tuned classifier) as-is: head, labels and tokenizer."""
    from transformers import AutoModelForSequenceClassification

    spec = _spec(spec)
    config = load_config_of(spec.name_or_path, key, spec.revision, spec.trust_remote_code)
    check_encoder(config, key)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        # loading would succeed with a freshly initialised (random) head: refuse instead of scoring noise
        raise ModelError(
            f"{key}: '{spec.name_or_path}' has no classification head (architectures: {', '.join(archs)}); "
            "fine-tune it first (lmdistill finetune) or give a fine-tuned classifier; a sentence-embedding model "
            "is evaluated with lmdistill.evaluate_retrieval"
        )
    check_tokenizer_files(spec, key.removesuffix(".name_or_path"))
    model = load_weights(AutoModelForSequenceClassification, spec, key.removesuffix(".name_or_path"))
    tok_key = key.removesuffix(".name_or_path") + ".tokenizer" if key.endswith(".name_or_path") else key
    return model, load_tokenizer(spec, tok_key)
