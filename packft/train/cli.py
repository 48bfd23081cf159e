"""``packft train`` on the command line: flags from :class:`~packft.train.config.TrainConfig`
(plus ``--fp32`` and ``--config FILE``), then :func:`packft.train.engine.train`, which checks the
settings and runs the engine they name (the native step loop or MindSpeed-LLM's own trainer);
prints its one JSON summary line. torch loads only once a run starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from packft.core.config import add_model_arguments, model_from_args
from packft.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, TrainConfig)
    parser.add_argument(
        "--fp32", dest="bf16", action="store_false", default=argparse.SUPPRESS,
        help="train in float32 (same as --no-bf16)",
    )  # fmt: skip
    parser.add_argument("--config", help="YAML file with any of these options")


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags, then :func:`packft.train.engine.train` (which checks and
    picks the engine); print its one-line JSON summary."""
    cfg = model_from_args(TrainConfig, args)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    from packft.train.engine import train

    summary = train(cfg)
    if summary is not None:
        print(json.dumps(summary), flush=True)
    return 0
