"""Command lines of the flows: a YAML file, the step CLIs' own flags, and ``--set`` overrides.

``python -m flows.pack_dataset [CONFIG.yaml] [packft preprocess flags] [run flags]`` accepts
exactly the flags of ``packft preprocess`` (generated from the same PreprocessConfig) and of the
``run:`` section (``--parallel --task-runner --cluster-address --tracking-uri --work-dir ...``),
so the flow and the CLI share one typed config. Every flow also takes ``--set a.b=VALUE``
(VALUE parsed as JSON when it can be, else kept as text) for any nested field.

Errors follow ``packft``'s rule (:mod:`packft.core.errors`): :func:`run_flow_main` prints one line
``python -m flows.X: error: ...`` and exits 2 for a usage or config problem, 1 for a data or run
failure; Prefect's console log keeps its one-line state messages but drops tracebacks.
``PACKFT_DEBUG=1`` re-raises and keeps every traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from packft.cli import OneLineParser, report_error
from packft.core import add_model_arguments
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
    parser = OneLineParser(prog=prog)
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


def drop_console_tracebacks() -> None:
    """Prefect's console handlers print records without their traceback (one line per failure);
    the API log handlers (the Prefect UI) keep them."""

    def strip(handler: logging.Handler) -> None:
        if getattr(handler, "_packft_one_line", False):
            return
        original = handler.format

        def format_without_traceback(record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            try:
                return original(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

        handler.format = format_without_traceback  # type: ignore[method-assign]
        handler._packft_one_line = True  # type: ignore[attr-defined]

    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler):
                strip(handler)


def run_flow_main(
    prog: str,
    argv: list[str] | None,
    model: type[BaseModel],
    body: Callable[[Any], Any],
    sections: dict[str, type[BaseModel]] | None = None,
) -> int:
    """A flow's ``main``: parse flags, validate the config, run ``body(cfg)``; every error is
    one line on stderr with exit 2 (usage, config) or 1 (data, run), see the module docstring."""
    from packft.pipeline_config import load_flow_config

    config_file, overrides = parse_flow_args(prog, argv, sections)
    debug = bool(os.environ.get("PACKFT_DEBUG"))
    try:
        cfg = load_flow_config(model, config_file, overrides)
        if not debug:
            drop_console_tracebacks()
        body(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line; PACKFT_DEBUG=1 shows the traceback
        if debug:
            raise
        return report_error("", error, prog=prog)
    return 0
