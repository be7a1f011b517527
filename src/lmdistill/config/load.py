"""Loading a config: YAML read safely and strictly, ``a.b=value`` overrides, types converted with every
problem named by its key (all reported at once), and the resolved config written back as YAML.

:func:`raw_config` gives the mapping a user wrote (file, dict or Config, plus overrides);
:func:`build_config` turns a mapping into a :class:`~lmdistill.config.schema.Config` and lists every problem.
The whole loader, with each task's own checks and defaults, is :func:`lmdistill.tasks.load_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmdistill.config.schema import Config, Verb
from lmdistill.errors import ConfigError

MAX_INT = 2**32 - 1  # no count, size or step in a config is larger; bigger values overflow the libraries


def raw_config(source: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The mapping a user gave: a YAML file, a dict or a Config, with ``a.b=value`` overrides applied."""
    if isinstance(source, Config):
        raw = dataclasses.asdict(source)
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_yaml(Path(source))
    return apply_overrides(raw, overrides)


REMOVED = {
    (
        "training",
        "teacher_placement",
    ): "training.teacher_placement was removed: sharding a frozen teacher under "
    "FSDP / DeepSpeed has never run on GPUs here, so every process holds a full teacher (or use "
    "training.teacher_cache); remove the key",
}
"""Keys that existed in earlier versions: a config that still has one gets this line instead of "unknown"."""


def build_config(raw: dict) -> tuple[Config | None, list[str]]:
    """A :class:`Config` from a mapping, and every problem found in its keys and types."""
    errors: list[str] = []
    for (section, key), why in REMOVED.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw = {**raw, section: {k: v for k, v in raw[section].items() if k != key}}
            errors.append(why)
    cfg = _build(Config, raw, "", errors)
    return cfg, errors


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` laid over ``base``: nested mappings merged, anything else in ``top`` wins."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit]


def _show(value: Any, limit: int = 80) -> str:
    """A value as it appears in a message: repr, one line, cut short."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # resolve `<<: *anchor` merges first: a merged key may be overridden
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {_show(key)} appears twice (also on line {seen[key] + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_VALUES = 100_000
"""A config expands to at most this many values (YAML aliases can multiply a small file: "billion laughs")."""


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping safely (no code is ever executed; aliases may not expand it beyond a sane size)."""
    from lmdistill.errors import LmdistillError
    from lmdistill.fileio import readable_file

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError([f"config file '{path}' not found"])
    try:
        readable_file(path, "config file", "YAML file")  # a folder, pipe, device or unreadable file: one line
    except LmdistillError as e:
        raise ConfigError([str(e)]) from None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"config file '{path}' is over {MAX_CONFIG_BYTES:,} bytes: it is not a config"])
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [f"config file '{path}' cannot be read as UTF-8 text ({_one_line(e)}); save it as UTF-8"]
        ) from None
    if "\x00" in text:
        raise ConfigError([f"config file '{path}' contains NUL bytes (saved as UTF-16?); save it as UTF-8"])
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no tag can run code
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or _one_line(e)
        raise ConfigError([f"config file '{path}' is not valid YAML{where}: {what}"]) from None
    except RecursionError:
        raise ConfigError([f"config file '{path}' is nested too deeply to be a config"]) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # a tag such as `!!int 1.5` or `!!timestamp nope` that cannot be built
        raise ConfigError(
            [f"config file '{path}' is not valid YAML: a tagged value cannot be read ({_one_line(e)})"]
        ) from None
    if raw is None:
        raise ConfigError([f"config file '{path}' is empty: it needs at least `data:` and a model"])
    if _expanded_size(raw) > MAX_CONFIG_VALUES:
        raise ConfigError(
            [
                f"config file '{path}' expands (through YAML aliases) to more than {MAX_CONFIG_VALUES:,} values: "
                "it is not a config"
            ]
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"config file '{path}' must be a mapping of keys to values, not {type(raw).__name__}"]
        )
    return raw


def _expanded_size(value, memo: dict | None = None, limit: int = MAX_CONFIG_VALUES + 1) -> int:
    """How many values ``value`` holds once every alias is expanded (counted without expanding: a YAML alias
    is the same object, counted once per use from a memo of its size; stops counting past ``limit``)."""
    memo = {} if memo is None else memo
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = limit  # a cycle counts as too large
    total = 1
    for v in value.values() if isinstance(value, dict) else value:
        total += 1 + _expanded_size(v, memo, limit)
        if total > limit:
            break
    memo[id(value)] = min(total, limit)
    return memo[id(value)]


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `key.sub=value` overrides (value parsed as YAML) to a copy of ``raw``."""
    raw = json.loads(json.dumps(raw, default=str)) if overrides else raw
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                [f"override {_show(item)} must look like key.sub=value (e.g. training.learning_rate=3e-5)"]
            )
        key, _, text = item.partition("=")
        if any(not c.isprintable() for c in key):
            raise ConfigError([f"override {_show(item)} has a key with unprintable characters"])
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError([f"override {_show(item)} has an empty key"])
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except RecursionError:
            raise ConfigError([f"override '{key}' has a value nested too deeply"]) from None
        except (yaml.YAMLError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            value = text
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return raw


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    """Build dataclass ``cls`` from ``raw``, appending one message per problem to ``errors``."""
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where} must be a mapping of keys, got {type(raw).__name__} {_show(raw)}")
        return None if _required(cls) else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    required = _required(cls)
    missing = [n for n in required if n not in raw]
    for n in missing:
        errors.append(f"{_join(path, n)} is required")
    if missing:
        return None
    kwargs = {}
    for key, value in raw.items():
        key_path = _join(path, str(key) if str(key).isprintable() else _show(str(key)))
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = (
                f" (did you mean '{_join(path, close[0])}'?)"
                if close
                else f" (valid keys: {', '.join(names)})"
            )
            errors.append(f"unknown key '{key_path}'{hint}")
            continue
        n_before = len(errors)
        converted = _convert(hints[key], value, key_path, errors)
        if len(errors) == n_before or dataclasses.is_dataclass(converted):
            kwargs[key] = converted  # a section with a bad key inside is still checked
    if any(n not in kwargs for n in required):
        return None  # a required value was wrong: reported above
    return cls(**kwargs)


def _required(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:  # noqa: C901
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path, errors)
        trial: list[str] = []
        for a in inner:
            trial.clear()
            out = _convert(a, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is Literal:
        if isinstance(value, bool) and "no" in args and value is False:
            return "no"  # YAML 1.1 reads an unquoted `no` as false
        if not isinstance(value, bool) and value in args:
            return value
        errors.append(
            f"{path} must be one of {', '.join(map(str, args))}, got {_show(value)}{suggest(str(value), map(str, args))}"
        )
        return None
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
            return None
        n_before = len(errors)
        out = [_convert(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return out if len(errors) == n_before else None
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path} must be a mapping of keys to values, got {_show(value)}")
            return None
        n_before = len(errors)
        out = {
            str(k): _convert(
                args[1], v, _join(path, str(k) if str(k).isprintable() else _show(str(k))), errors
            )
            for k, v in value.items()
        }
        return out if len(errors) == n_before else None
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                errors.append(f"{path} is too large ({_show(value, 30)}); use a value below {MAX_INT:,}")
                return None
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads `1e-5` as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                errors.append(f"{path} must be a finite number, got {_show(value)}")
                return None
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
    return None


def infer_verb(cfg_raw: dict | Config) -> Verb:
    """`compress` when its keys are given (compress, student.vocabulary, student.width); `distill` when a teacher is
    named, `compress` when a model and a student are, else `finetune`."""
    teacher = cfg_raw.teacher.name_or_path if isinstance(cfg_raw, Config) else (cfg_raw.get("teacher") or {})
    if isinstance(teacher, dict):
        teacher = teacher.get("name_or_path")
    student = cfg_raw.get("student") if isinstance(cfg_raw, dict) else None
    chained = isinstance(cfg_raw, dict) and (
        "compress" in cfg_raw
        or (isinstance(student, dict) and ("vocabulary" in student or "width" in student))
    )
    if chained:
        return "compress"  # compress.steps, student.vocabulary and student.width are compress's alone
    if teacher or (cfg_raw.teachers if isinstance(cfg_raw, Config) else cfg_raw.get("teachers")):
        return "distill"  # a teacher, or a teacher ensemble (teachers:)
    return "compress" if student else "finetune"


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path, header: str = "") -> None:
    """Write the resolved config as YAML (loadable again with :func:`lmdistill.tasks.load_config`)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
