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
import sys

from packft.core.config import add_model_arguments, model_from_args
from packft.train import megatron_args
from packft.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, TrainConfig)
    parser.add_argument(
        "--fp32", dest="bf16", action="store_false", default=argparse.SUPPRESS,
        help="train in float32 (same as --no-bf16)",
    )  # fmt: skip
    parser.add_argument("--config", help="YAML file with any of these options")
    parser.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS,
        help="print the memory plan per device and whether it fits, then exit (1 if it cannot); "
        "outside torchrun it plans for --nproc-per-node devices",
    )  # fmt: skip
    megatron_args.add_arguments(parser, set(TrainConfig.model_fields))


def run(args: argparse.Namespace) -> int:
    passthrough = megatron_args.take_passthrough(args)
    dry_run = vars(args).pop("dry_run", False)
    cfg = model_from_args(TrainConfig, args)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    check_passthrough(passthrough, cfg, rank)
    if dry_run:
        return print_memory_plan(cfg)
    from packft.train.engine import train

    summary = train(cfg)
    if summary is not None:
        print(json.dumps(summary), flush=True)
    return 0


def check_passthrough(passthrough: megatron_args.Passthrough, cfg: TrainConfig, rank: int) -> None:
    """List the MindSpeed flags once (rank 0) and check the shape flags against the model."""
    from packft.train.memory import model_config

    summary = passthrough.summary()
    if summary is None:
        return
    if rank == 0:
        print(f"packft train: {summary}", file=sys.stderr, flush=True)
    if passthrough.expected_shape() or passthrough.names("shape"):
        config, where = model_config(cfg.model, cfg.load)
        passthrough.check_model(config, where)


def print_memory_plan(cfg: TrainConfig) -> int:
    """``--dry-run``: the plan for WORLD_SIZE (torchrun) or --nproc-per-node devices."""
    from packft.train import device as devices
    from packft.train.memory import require_fit, run_plan

    device_type = devices.detect_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", cfg.nproc_per_node))
    bf16 = cfg.bf16 if cfg.bf16 is not None else device_type != "cpu"
    plan, run = run_plan(cfg, device_type, world, bf16)
    print("\n".join(plan.lines()), flush=True)
    print(f"({world} x {device_type}, micro-batch {run.micro_batch} x seq {run.seq_length}, "
          f"{'bf16' if bf16 else 'fp32'}, {'FSDP2' if run.fsdp else 'DDP'}, "
          f"recompute {run.recompute or 'none'})", flush=True)  # fmt: skip
    require_fit(plan, run)
    return 0
