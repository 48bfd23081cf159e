"""Activation recomputation (``--recompute-granularity full|selective``, ``--recompute-num-layers N``).

Why: a decoder layer keeps ~``7d + 2d_kv + 4f`` values per token for its backward pass (d hidden,
f FFN width; see :mod:`packft.train.memory`), which at Llama-2-7B, seq 4096 and micro-batch 4 is
~2.6 GB per layer in bf16 and ~85 GB for the model. Recomputation keeps less and runs that part of
the forward pass again during backward (about +1/3 of the step's compute for ``full``).

Algorithm (MindSpeed/Megatron flag names; ``--recompute-method block`` semantics):
  full       each of the first N decoder layers (all when N is not given) runs under
             ``torch.utils.checkpoint`` (non-reentrant): only its input [T, d] is kept and the
             layer is replayed in backward. N = 0 checkpoints nothing.
  selective  the self-attention block of each of the first N layers (q/k/v/o projections, RoPE,
             core attention) is checkpointed; the norms and the MLP keep their activations.
             Megatron's selective recomputes only the core attention; with fused varlen kernels
             that part keeps almost nothing, so packft also drops the projections' outputs.
The wrapping sets an instance ``forward`` on the chosen modules, so parameter names (and
checkpoints, FSDP2's ``fully_shard`` hooks around ``__call__``) are unchanged. RNG state is
preserved by the checkpoint, and under ``torch.no_grad()`` (evaluation) the module simply runs.

Guarantees (tests/train/test_recompute.py, fp32 on CPU): loss and every gradient equal the run
without recomputation; the measured peak memory of a training step falls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint

Granularity = Literal["full", "selective"]
GRANULARITIES = ("full", "selective")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated decoder layers of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no model.layers list of decoder layers; activation "
            "recomputation supports Llama/Mistral/Qwen2-style models (drop --recompute-granularity)"
        )
    return layers


def checkpoint_forward(module: torch.nn.Module) -> None:
    """Make ``module(...)`` keep only its inputs and replay itself in backward."""
    if getattr(module, "_packft_recompute", False):
        return
    forward: Callable[..., Any] = module.forward

    @functools.wraps(forward)
    def recomputed(*args: Any, **kwargs: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed
    module._packft_recompute = True


def recompute_layers(method: str | None, num_layers: int | None) -> int | None:
    """How many leading layers to wrap: ``--recompute-method uniform`` checkpoints every layer
    (Megatron replays groups of N; per-layer checkpoints keep as little), ``block`` the first N."""
    return None if method == "uniform" else num_layers


def apply_recompute(
    model: torch.nn.Module, granularity: Granularity | None, num_layers: int | None = None
) -> int:
    """Checkpoint the first ``num_layers`` layers (all if None) at ``granularity``.

    Returns:
        How many layers were wrapped (0 when ``granularity`` is None).

    Raises:
        ValueError: unknown granularity, or a model without ``model.layers``.
    """
    if granularity is None:
        return 0
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"--recompute-granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}"
        )
    layers = decoder_layers(model)
    chosen = list(layers)[: len(layers) if num_layers is None else num_layers]
    for layer in chosen:
        checkpoint_forward(layer if granularity == "full" else layer.self_attn)
    return len(chosen)
