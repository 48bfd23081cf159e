"""Command lines of the flows: a YAML file, the step CLIs' own flags, and ``--set`` overrides.

``python -m flows.pack_dataset [CONFIG.yaml] [packft preprocess flags] [run flags]`` accepts
exactly the flags of ``packft preprocess`` (generated from the same PreprocessConfig) and of the
``run:`` section (``--parallel --task-runner --cluster-address --tracking-uri --work-dir ...``),
so the flow and the CLI share one typed config. Every flow also takes ``--set a.b=VALUE``
(VALUE parsed as JSON when it can be, else kept as text) for any nested field.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from packft.config import add_model_arguments
from packft.pipeline_config import deep_merge


def _set_value(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE (dotted key), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part.replace("-", "_"): value}
    return value


def build_parser(prog: str, sections: dict[str, type[BaseModel]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("config_file", nargs="?", type=Path, help="YAML parameters (deployments/)")
    parser.add_argument("--set", dest="sets", action="append", type=_set_value, default=[],
                        metavar="KEY=VALUE", help="nested override, e.g. run.parallel=4")  # fmt: skip
    for section, model in sections.items():
        group = parser.add_argument_group(f"{section}: ({model.__name__})")
        add_model_arguments(group, model)  # type: ignore[arg-type]
    return parser


def parse_flow_args(
    prog: str, argv: list[str] | None, sections: dict[str, type[BaseModel]] | None = None
) -> tuple[Path | None, dict[str, Any]]:
    """``(config_file, overrides)``: typed flags go to their section, then ``--set`` on top."""
    sections = sections or {}
    args = build_parser(prog, sections).parse_args(argv)
    given = vars(args)
    overrides: dict[str, Any] = {}
    for section, model in sections.items():
        values = {k: v for k, v in given.items() if k in model.model_fields}
        if values:
            overrides = deep_merge(overrides, {section: values})
    for item in args.sets:
        overrides = deep_merge(overrides, item)
    return args.config_file, overrides


def checked_config(
    model: type[BaseModel], config_file: Path | None, overrides: dict[str, Any]
) -> Any:
    """The validated config, or None after printing every problem (before any flow starts)."""
    import sys

    from packft.config import ConfigError
    from packft.pipeline_config import load_flow_config

    try:
        return load_flow_config(model, config_file, overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None
