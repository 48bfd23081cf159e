"""One typed config drives the CLI, YAML files and Prefect parameters.

Each step's options are a pydantic model whose field names are the MindSpeed/Megatron flag names
with ``_`` (``seq_length`` <-> ``--seq-length``). :func:`add_model_arguments` turns a model into
argparse flags (help text = the field description), :func:`model_from_args` builds the model from
parsed flags on top of an optional ``--config`` YAML file, and :func:`load_config` reads YAML alone.
Validation reports every problem at once, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from packft.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({error.msg})") from error


def add_model_arguments(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    exclude: tuple[str, ...] = (),
    extra_flags: dict[str, list[str]] | None = None,
) -> None:
    """Add one flag per model field; defaults stay in the model (flags not given are absent).

    Booleans get ``--flag/--no-flag``; ``Literal`` fields get choices; dicts and lists of
    non-strings parse as JSON (``--map-keys '{"prompt": "instruction"}'``); ``list[str]`` takes
    one or more values. ``extra_flags`` maps a field to alias spellings.
    """
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        names = [flag_name(name), *(extra_flags or {}).get(name, [])]
        annotation = _unwrap_optional(info.annotation)
        origin = typing.get_origin(annotation)
        default = info.get_default(call_default_factory=True)
        help_text = (info.description or "").replace("%", "%%")
        if info.is_required():
            help_text += " (required)"
        elif default is not None and not isinstance(default, BaseModel):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = typing.get_args(annotation)
            kwargs["choices"] = choices
            kwargs["type"] = type(choices[0])
        elif origin in (list, tuple) and typing.get_args(annotation)[:1] in ((str,), (Path,)):
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(annotation)[0]
        elif origin in (dict, list, tuple) or annotation in (dict, list):
            kwargs["type"] = _json_value
        elif annotation in (int, float, str, Path):
            kwargs["type"] = annotation
        else:
            kwargs["type"] = str
        parser.add_argument(*names, **kwargs)


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One readable message: each field problem with its flag; a model-level check (which
    already lists its own problems) verbatim."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        names = [part for part in item["loc"] if isinstance(part, str)]
        if not names:
            lines.append(message)
            continue
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"  - {where} ({flag_name(names[-1])}): {message}")
    if len(lines) == 1 and not lines[0].startswith("  - "):
        return f"{model.__name__}: {lines[0]}"
    return "\n".join([f"{error.error_count()} problem(s) in the {model.__name__}:", *lines])


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``model.model_validate`` with every problem listed in one :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model)) from None


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The ``--config`` / flow YAML file does not exist (a usage error: exit 2)."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml  # only a --config file needs it (a command line alone does not pay for it)

    path = Path(path)
    if not path.exists():
        raise ConfigFileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_config(model: type[M], path: str | Path | None = None, **overrides: Any) -> M:
    """Build ``model`` from a YAML file (keys may use ``-`` or ``_``) plus keyword overrides."""
    data = read_yaml(path) if path else {}
    data.update(overrides)
    return validate(model, data)


def model_from_args(model: type[M], args: argparse.Namespace) -> M:
    """The model from parsed flags; a ``--config FILE`` (if the parser has one) is read first."""
    values = vars(args)
    data = read_yaml(values["config"]) if values.get("config") else {}
    data.update({k: v for k, v in values.items() if k in model.model_fields})
    return validate(model, data)
