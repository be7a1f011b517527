"""Load teachers, students and tokenizers (local folders or hub ids) with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

from lmdistill.config import ModelConfig
from lmdistill.errors import ModelError

# model_type -> family note; the encoders whose layers, heads and outputs lmdistill knows.
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert")


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:240]


def load_config_of(name_or_path: str, key: str, revision: str | None = None, trust_remote_code: bool = False):
    """The transformers config of a model, or a one-line ModelError naming the key."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        where = (
            "local folder" if Path(name_or_path).exists() else "local folder or reachable Hugging Face Hub id"
        )
        raise ModelError(
            f"{key}: '{name_or_path}' is not a loadable {where} ({_short(e)}); "
            "give a folder with config.json, or a hub id with a network"
        ) from None


def check_encoder(config, key: str) -> None:
    if config.model_type not in ENCODERS:
        raise ModelError(
            f"{key}: model type '{config.model_type}' is not supported for text classification "
            f"(supported encoders: {', '.join(ENCODERS)})"
        )


def load_tokenizer(name_or_path: str, key: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{key}: no tokenizer could be loaded from '{name_or_path}' ({_short(e)}); "
            f"set {key.rsplit('.', 1)[0]}.tokenizer to a folder or id that has one"
        ) from None


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

    spec = ModelConfig(name_or_path=spec) if isinstance(spec, str) else spec
    path = spec.name_or_path
    config = load_config_of(path, f"{key}.name_or_path", spec.revision, spec.trust_remote_code)
    check_encoder(config, f"{key}.name_or_path")
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            ignore_mismatched_sizes=True,  # a head of another task is replaced by a new one of the right size
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{key}.name_or_path: cannot load weights from '{path}' ({_short(e)})") from None
    tokenizer = load_tokenizer(
        spec.tokenizer or path, f"{key}.tokenizer", spec.revision, spec.trust_remote_code
    )
    return model, tokenizer


def load_saved_classifier(path: str, key: str = "model"):
    """A model saved by lmdistill (or any fine-tuned classifier) as-is: head, labels and tokenizer."""
    from transformers import AutoModelForSequenceClassification

    config = load_config_of(path, key)
    check_encoder(config, key)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        # loading would succeed with a freshly initialised (random) head: refuse instead of scoring noise
        raise ModelError(
            f"{key}: '{path}' has no classification head (architectures: {', '.join(archs)}); fine-tune it "
            "first (lmdistill finetune) or give a fine-tuned classifier; a sentence-embedding model is "
            "evaluated with lmdistill.evaluate_retrieval"
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{key}: cannot load weights from '{path}' ({_short(e)})") from None
    return model, load_tokenizer(path, key)
