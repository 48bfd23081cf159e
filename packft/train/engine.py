"""The one entry to fine-tuning: :func:`train` checks every setting of the engine the config
names before anything runs, then runs that engine. ``packft train``, the ``finetune`` task and any
caller of the library all go through it, so ``engine: mindspeed`` in a flow or a deployment runs
MindSpeed-LLM, never silently the native trainer.

Engines: ``native`` (:mod:`packft.train.loop`, the step loop here) and ``mindspeed``
(:mod:`packft.train.mindspeed`, MindSpeed-LLM's ``posttrain_gpt.py`` under torchrun). Checking
needs no torch (:func:`check_engine`), so a flow can call it first, before converting a model.
"""

from __future__ import annotations

from typing import Any

from packft.core.errors import PackftError
from packft.train import mindspeed
from packft.train.config import TrainConfig


def engine_problems(cfg: TrainConfig) -> list[str]:
    """Everything wrong with ``cfg`` for its engine, all at once (empty: it can run)."""
    if cfg.engine == "mindspeed":
        return mindspeed.check_config(cfg)
    return []


def check_engine(cfg: TrainConfig) -> None:
    """Raise one error listing every problem of ``cfg`` for its engine (see :func:`train`)."""
    problems = engine_problems(cfg)
    if problems:
        raise ValueError(f"--engine {cfg.engine}: " + "; ".join(problems))


def train(cfg: TrainConfig) -> dict[str, Any] | None:
    """Check, then train with the engine ``cfg.engine`` names; returns the run summary (rank 0;
    None on other ranks of a native run).

    Raises:
        ValueError: a setting the engine cannot run with (nothing has run).
        PackftError: MindSpeed-LLM exited non-zero (its summary is in the message).
    """
    check_engine(cfg)
    if cfg.engine == "mindspeed":
        summary = mindspeed.run_mindspeed(cfg)
        if summary["returncode"] != 0:
            raise PackftError(
                f"MindSpeed-LLM's posttrain_gpt.py exited with {summary['returncode']} after "
                f"{summary['steps']} steps; its log is above (command: packft train --engine "
                "mindspeed)"
            )
        return summary
    from packft.train.loop import train as train_native

    return train_native(cfg)
