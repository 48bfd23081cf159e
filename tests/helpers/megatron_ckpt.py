"""Megatron-LM training checkpoints, built the way Megatron-LM saves them, for the converter tests.

What Megatron-LM writes (``megatron/training/checkpointing.py`` at core_v0.12.2, the Megatron that
MindSpeed-LLM 2.x runs on, read with the search tool):

* ``generate_state_dict``: ``args`` (the whole ``argparse.Namespace``: torch dtypes such as
  ``params_dtype``/``main_grads_dtype``, enums such as ``attention_backend: AttnBackend`` and
  ``model_type: ModelType``), ``checkpoint_version`` 3.0, ``iteration``, ``model`` (the model's
  ``state_dict_for_save_checkpoint``, ``_extra_state`` entries included), and unless
  ``--no-save-optim`` ``optimizer`` (``Float16OptimizerWithFloat16Params.state_dict()``: the torch
  optimizer's state dict, ``fp32_from_fp16_params`` main parameters that carry Megatron's tensor
  parallel attributes, ``grad_scaler`` under fp16) and ``opt_param_scheduler``; always
  ``rerun_state_machine`` (``RerunStateMachine.state_dict``: ``RerunMode``/``RerunState`` enums); and
  unless ``--no-save-rng`` ``rng_state``: ``get_rng_state`` returns a list (one per data-parallel
  rank with ``--data-parallel-random-init``) of ``{random_rng_state, np_rng_state (the numpy
  tuple), torch_rng_state, cuda_rng_state, rng_tracker_states}``.
* ``save_checkpoint`` adds ``num_floating_point_operations_so_far`` and, for ``--ckpt-format
  torch``, ``torch.save``s it (default pickle protocol) to
  ``{save}/iter_{n:07d}/mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt``; with
  ``--use-distributed-optimizer`` the optimizer's parameter state goes to ``distrib_optim.pt``
  beside it. The tracker file ``latest_checkpointed_iteration.txt`` holds the iteration, or the
  word ``release`` for a ``release`` directory.

Real megatron-core classes make the objects (enums, ``OptimizerParamScheduler``,
``RerunStateMachine``); only CUDA-bound state is built on CPU (CUDA RNG as a byte tensor of the
same kind). The weights come from packft's own hf->mcore conversion, which megatron-core's
``GPTModel`` loads strictly (tests/test_megatron_interop.py).
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

ITERATION = 500


def megatron_args(ours: argparse.Namespace, **overrides: Any) -> argparse.Namespace:
    """``ours`` (packft's converter args) as a Megatron training run leaves them in a checkpoint:
    without packft's HF config, with dtypes and enums from ``validate_args``."""
    from megatron.core.enums import ModelType
    from megatron.core.transformer.enums import AttnBackend

    args = argparse.Namespace(**vars(ours))
    for name in ("hf_config_json", "model_type_hf"):
        args.__dict__.pop(name, None)
    args.__dict__.update(
        params_dtype=torch.bfloat16, bf16=True, fp16=False, main_grads_dtype=torch.float32,
        main_params_dtype=torch.float32, exp_avg_dtype=torch.float32,
        exp_avg_sq_dtype=torch.float32, attention_backend=AttnBackend.auto,
        model_type=ModelType.encoder_or_decoder, ckpt_format="torch", use_dist_ckpt=False,
        no_save_optim=None, no_save_rng=None, use_distributed_optimizer=False,
        data_parallel_random_init=False, iteration=ITERATION, consumed_train_samples=8 * ITERATION,
        global_batch_size=8, micro_batch_size=1, lr=1e-5, min_lr=1e-6, seed=1234,
        make_vocab_size_divisible_by=128, save="/ckpt", load="/ckpt",
    )  # fmt: skip
    args.__dict__.update(overrides)
    return args


def rng_state() -> list[dict[str, Any]]:
    """``get_rng_state`` for ``--ckpt-format torch``: one entry (no data-parallel random init)."""
    cuda_like = torch.Generator().manual_seed(7).get_state()[:16]  # a CUDA state is 16 bytes
    return [
        {
            "random_rng_state": random.getstate(),
            "np_rng_state": np.random.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": cuda_like.clone(),
            "rng_tracker_states": {"model-parallel-rng": cuda_like.clone()},
        }
    ]


def cosine_scheduler(optimizer: torch.optim.Optimizer) -> Any:
    """megatron-core's ``OptimizerParamScheduler`` as a cosine run from lr 1e-5 to 1e-6 (10
    warm-up, 1000 decay steps, no weight decay): the scheduler these checkpoints record."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=1e-5, min_lr=1e-6, lr_warmup_steps=10, lr_decay_steps=1000,
        lr_decay_style="cosine", start_wd=0.0, end_wd=0.0, wd_incr_steps=1000,
        wd_incr_style="constant",
    )  # fmt: skip


def optimizer_state(model: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``optimizer``, ``opt_param_scheduler``) of one rank: AdamW after a step, Megatron's param
    group keys, fp32 main copies carrying tensor-parallel attributes."""

    params = [
        torch.nn.Parameter(t.detach().float().clone()) for t in model.values() if t is not None
    ]
    group = dict(params=params, wd_mult=1.0, lr_mult=1.0, is_expert_parallel=False,
                 is_decoupled_lr=False, max_lr=1e-5, min_lr=1e-6)  # fmt: skip
    adam = torch.optim.AdamW([group], lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    for p in params:
        p.grad = torch.ones_like(p)
    adam.step()
    scheduler = cosine_scheduler(adam)
    scheduler.step(ITERATION)
    main_params = []
    for p in params:
        main = p.detach().clone()
        main.tensor_model_parallel, main.partition_dim, main.partition_stride = True, 0, 1
        main_params.append(main)
    optimizer = {"optimizer": adam.state_dict(), "fp32_from_fp16_params": [main_params]}
    return optimizer, scheduler.state_dict()


def training_state(
    args: argparse.Namespace, model: dict[str, torch.Tensor], iteration: int = ITERATION
) -> dict[str, Any]:
    """``generate_state_dict`` + ``num_floating_point_operations_so_far`` for one rank."""
    from megatron.core.rerun_state_machine import RerunStateMachine

    state: dict[str, Any] = {"args": args, "checkpoint_version": 3.0, "iteration": iteration}
    state["model"] = model
    if not args.no_save_optim:
        state["optimizer"], state["opt_param_scheduler"] = optimizer_state(model)
    state["rerun_state_machine"] = RerunStateMachine().state_dict(None, "torch")
    if not args.no_save_rng:
        state["rng_state"] = rng_state()
    state["num_floating_point_operations_so_far"] = 1.5e15
    return state


def te_names(model: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The Transformer-Engine spelling of a local-spec state dict: norms fused into the linear
    layers, ``_extra_state`` as ``io.BytesIO`` (what TE's ``get_extra_state`` returns)."""
    out: dict[str, Any] = {}
    for key, value in model.items():
        key = key.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
        key = key.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
        out[key] = value
        if key.endswith(("linear_qkv.weight", "linear_fc1.weight")):
            out[key.replace("weight", "_extra_state")] = io.BytesIO(b"")
    return out


def write_training_checkpoint(
    mcore_dir: Path,
    save: Path,
    *,
    release: bool = False,
    te: bool = False,
    pad_vocab_to: int | None = None,
    distributed_optimizer: bool = False,
    **arg_overrides: Any,
) -> Path:
    """Re-save packft's converted ``mcore_dir`` (any TP/PP) as a Megatron training save in
    ``save``; returns ``save``. ``pad_vocab_to`` pads the embedding/output rows as Megatron's
    ``--make-vocab-size-divisible-by`` does."""
    from packft.ckpt.io import load_mcore_file

    name = "release" if release else f"iter_{ITERATION:07d}"
    for pt in sorted(mcore_dir.glob("iter_0000001/mp_rank_*/model_optim_rng.pt")):
        ours = load_mcore_file(pt)
        if pad_vocab_to and ours["args"].tensor_model_parallel_size != 1:
            raise ValueError("pad_vocab_to pads one TP rank's rows; use it with TP 1")
        overrides = dict(arg_overrides, use_distributed_optimizer=distributed_optimizer)
        if pad_vocab_to:
            overrides.update(padded_vocab_size=pad_vocab_to, vocab_size=None)
        args = megatron_args(ours["args"], **overrides)
        model: dict[str, Any] = {}
        for key, value in ours["model"].items():
            value = value.clone()
            if pad_vocab_to and key in ("embedding.word_embeddings.weight", "output_layer.weight"):
                rows = pad_vocab_to - value.shape[0]
                value = torch.cat([value, torch.zeros(rows, value.shape[1], dtype=value.dtype)])
            model[key] = value
            if key.endswith(
                ("linear_qkv.weight", "linear_proj.weight", "fc1.weight", "fc2.weight")
            ):
                model[key.replace("weight", "_extra_state")] = None  # local spec: no extra state
        model = te_names(model) if te else model
        out = save / name / pt.parent.name / pt.name
        out.parent.mkdir(parents=True)
        torch.save(training_state(args, model), out)
        if distributed_optimizer:
            torch.save({"buckets_coalesced": True, "param_state": torch.zeros(4)},
                       out.parent / "distrib_optim.pt")  # fmt: skip
    (save / "latest_checkpointed_iteration.txt").write_text(
        "release" if release else str(ITERATION)
    )
    return save
