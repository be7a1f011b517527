"""Configuration: dataclasses loaded strictly from YAML, with ``a.b=value`` overrides.

- :mod:`lmdistill.config.schema`: every section and key, its type, default and meaning;
- :mod:`lmdistill.config.load`: YAML read safely, overrides, strict type conversion (an unknown key fails
  with its full path and a "did you mean"), the resolved config written back;
- :mod:`lmdistill.config.checks`: the range and consistency checks that hold for every task.

Each task checks its own keys; the whole loader is :func:`lmdistill.tasks.load_config` (also
``lmdistill.load_config``), which the Python API and the CLI both go through. Every problem is reported at once
(:class:`~lmdistill.errors.ConfigError` carries the list).
"""

from lmdistill.config.load import MAX_INT, apply_overrides, infer_verb, read_yaml, save_config, to_dict
from lmdistill.config.schema import (
    CausalLMConfig,
    Config,
    DataConfig,
    DistillSection,
    EmbeddingConfig,
    MatchConfig,
    ModelConfig,
    QAConfig,
    ReportConfig,
    ScheduleConfig,
    StageConfig,
    StudentConfig,
    TokensConfig,
    TrainingConfig,
    Verb,
)
from lmdistill.errors import ConfigError

__all__ = [
    "MAX_INT",
    "CausalLMConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillSection",
    "EmbeddingConfig",
    "MatchConfig",
    "ModelConfig",
    "QAConfig",
    "ReportConfig",
    "ScheduleConfig",
    "StageConfig",
    "StudentConfig",
    "TokensConfig",
    "TrainingConfig",
    "Verb",
    "apply_overrides",
    "infer_verb",
    "read_yaml",
    "save_config",
    "to_dict",
]
