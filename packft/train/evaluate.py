"""Validation loss of `packft train` (``--eval-interval``, ``--eval-iters``): the held-out rows of
:mod:`packft.train.split` through the model exactly as training sees them.

Algorithm. An evaluation takes the first ``min(eval_iters x global_batch_size, held-out rows)``
held-out rows, in order, so every evaluation of a run scores the same rows and the curve compares
like with like (Megatron draws fresh validation batches each time; its curve mixes model and
sample noise). They are cut into micro-batches of --micro-batch-size rows; micro-batch j goes to
data-parallel rank ``j mod world``. Each runs under ``torch.no_grad`` and the training autocast,
through the same packed attention (:func:`packft.train.attention.packed_model_kwargs`) and the
same weighted cross-entropy (:func:`packft.train.data.loss_sum`); the sums and the label-token
(or sample, with --loss-reduction sample) counts are all-reduced in float64, so
``valid_loss = sum over held-out label tokens of CE / their count``: the token mean of training,
over the whole evaluated set, the same for 1 and N ranks. Under FSDP2 every rank must run the
same number of forward passes (each all-gathers weights), so a rank short of micro-batches
repeats its first one and does not count it.

It runs every --eval-interval steps and after the last step, on the unwrapped model (DDP's
wrapper is bypassed: no collective in the forward; FSDP2's module is the model itself), in eval
mode (dropout off, LoRA dropout included), and draws from no RNG, so a resumed run evaluates
bit-identically. Cost: a forward pass per evaluated row, no activations kept.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from packft.train.data import Batch, loss_sum

if TYPE_CHECKING:
    from packft.train.config import TrainConfig
    from packft.train.state import DistEnv, Parts

log = logging.getLogger("packft.train")


def eval_due(cfg: TrainConfig, step: int, last: int) -> bool:
    """Evaluate after ``step``: every --eval-interval steps and after the run's last step."""
    return cfg.eval_iters > 0 and (step % cfg.eval_interval == 0 or step == last)


def eval_plan(rows: int, micro: int, rank: int, world: int) -> list[tuple[list[int], bool]]:
    """This rank's (row indices, counted) micro-batches; every rank gets as many (module doc)."""
    batches = [list(range(i, min(i + micro, rows))) for i in range(0, rows, micro)]
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)
    return [(b, True) for b in mine] + [(batches[0], False)] * (rounds - len(mine))


def micro_batch_loss_sum(
    model: torch.nn.Module, batch: Batch, reduction: str, device: torch.device
) -> torch.Tensor:
    """Summed weighted CE of one micro-batch through the packed forward (as the step loop)."""
    from packft.train.attention import packed_model_kwargs  # loads transformers: on first use

    kwargs = packed_model_kwargs(batch.cu_seqlens, batch.max_seqlen)
    batch = batch.to(device)
    kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = batch.cu_seqlens
    logits = model(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs
    ).logits
    return loss_sum(logits, batch, reduction)


@torch.no_grad()
def validation_loss(
    cfg: TrainConfig,
    env: DistEnv,
    model: torch.nn.Module,
    valid: Any,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """The token (or sample) mean loss over the evaluated held-out rows, all ranks together."""
    rows = min(cfg.eval_iters * cfg.global_batch_size, len(valid))
    totals = torch.zeros(2, dtype=torch.float64, device=env.device)  # loss sum, count
    was_training = model.training
    model.eval()
    try:
        for indices, counted in eval_plan(rows, cfg.micro_batch_size, env.rank, env.world):
            batch = valid.batch(indices)
            with autocast or contextlib.nullcontext():
                total = micro_batch_loss_sum(model, batch, cfg.loss_reduction, env.device)
            if counted:
                totals[0] += total.double()
                totals[1] += batch.counts[cfg.loss_reduction]
    finally:
        model.train(was_training)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_total, count = (float(x) for x in totals.tolist())
    return loss_total / count if count else float("nan")


def evaluate_if_due(
    cfg: TrainConfig, env: DistEnv, p: Parts, step: int, last: int, autocast: Any = None
) -> dict[str, float]:
    """``{"valid_loss": x}`` when an evaluation is due after ``step`` (else ``{}``)."""
    if p.valid is None or not eval_due(cfg, step, last):
        return {}
    loss = validation_loss(cfg, env, p.core, p.valid, autocast)
    if env.main:
        log.info("step %d valid_loss %.6f", step, loss)
    return {"valid_loss": loss}
