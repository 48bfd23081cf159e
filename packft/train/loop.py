"""The native step loop of `packft train`: full-parameter SFT on packed rows, each sample alone.

Algorithm: rows from `packft.train.data` are flattened per micro-batch and run through the
registered varlen attention (`packft.train.attention`), so attention is causal inside each sample
only and RoPE positions restart per sample. The loss is a token mean over the global batch
(MindSpeed's) or a per-sample mean (`--loss-reduction sample`); its denominator is counted before
the backward pass and all-reduced over data-parallel ranks, so 1 rank and N ranks with the same
global batch follow the same curve. AdamW, linear warmup + cosine decay to --min-lr, gradient
accumulation (global = micro x dp x accumulation), gradient clipping, bf16 autocast on accelerators
(fp32 on CPU and on NPUs without bf16; q/k/v reach the attention kernel in the autocast dtype).
Distributed with torchrun: DDP by default, FSDP2 `fully_shard` per decoder layer with
--use-torch-fsdp2, on a mesh of the training device type; backend hccl/nccl/gloo follows the
device, and the loop's own all-reduces are int64 counts and fp32 sums (HCCL refuses fp64).

Checkpoints live in `packft.train.checkpoint`: every --save-interval steps
`{save}/checkpoints/iter_{step:07d}` (written atomically), at the end `{save}/hf` (with
--save-mcore also `{save}/mcore`). `--resume` restores model, optimizer, scheduler, sampler, step
and RNG, so a run killed after step k and resumed ends with bit-identical weights
(tests/train/test_train.py). Per-step metrics go to the tracker (`train/loss`, `train/lr`,
`train/grad_norm`, `train/tokens_per_s`, `train/padding_fraction`: `packft.track.metric_names`) and
to `{save}/train_log.jsonl`. The tracker never blocks a step (`packft.track.tracking_link`): an
unreachable or dying MLflow server costs one warning line, and `packft track-import SAVE`
replays the run later (`packft.train.history`); `--tracking-required` makes it fatal instead.
The command ends by printing one JSON line (steps, first/final loss, real tokens/s, checkpoint).
Measured on this shared 2-core CPU (load ~8): a 2-layer 32-dim Llama with the 32k llama2 vocab
trains 256-512-token rows at ~100-1,000 real tokens/s (the vocab projection dominates); 2 gloo
ranks reproduce the 1-rank loss curve to 1.1e-8 relative (DDP and FSDP2).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch  # noqa: E402, I001
import torch.distributed as dist  # noqa: E402

from packft.core.atomic import atomic_write_bytes
from packft.track import metric_names
from packft.train import collectives, history, memory
from packft.train import device as devices  # packft/__init__ set TORCH_DEVICE_BACKEND_AUTOLOAD
from packft.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_final,
)
from packft.train.config import TrainConfig
from packft.train.data import token_ids
from packft.train.evaluate import evaluate_if_due
from packft.train.lora import apply_lora, trainable_parameters
from packft.train.recompute import apply_recompute, recompute_layers
from packft.train.split import require_valid_data, train_and_valid
from packft.train.state import DistEnv, Parts

log = logging.getLogger("packft.train")


def train(cfg: TrainConfig) -> dict[str, Any] | None:
    """Set up, build, run the step loop, save; returns the summary on rank 0 (None elsewhere)."""
    env = setup_distributed(cfg)
    require_inputs(cfg)  # before any tracking store, run or save dir exists
    memory.announce(cfg, env.device.type, env.world, env.bf16, env.main)  # refuses a misfit
    tracker, status = open_tracker(cfg, env), "FAILED"
    try:
        parts = build(cfg, env)
        summary = fit(cfg, env, parts, tracker)
        if summary["steps"] == cfg.train_iters:
            summary["checkpoint"] = save_final(cfg, env, parts.model)
        if env.main:
            history.finish(tracker, cfg.save, summary)
        status = "FINISHED"
        return summary if env.main else None
    finally:
        tracker.close(status)
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------ setup
def setup_distributed(cfg: TrainConfig) -> DistEnv:
    device_type = devices.detect_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = devices.local_device(device_type, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(devices.dist_backend(device_type))
    rank = dist.get_rank() if dist.is_initialized() else 0
    bf16 = devices.resolve_bf16(device_type, cfg.bf16)
    return DistEnv(rank=rank, world=world, device=device, bf16=bf16)


def require_inputs(cfg: TrainConfig) -> None:
    """A missing dataset or model fails here, before anything is created."""
    from packft.dataset.indexed import require_sft_files

    require_sft_files(cfg.data_path)
    if cfg.model and not (Path(cfg.model) / "config.json").exists():
        raise FileNotFoundError(
            f"--model {cfg.model}: no config.json there; pass a Hugging Face model directory "
            "or --load MCORE_DIR (convert with `packft convert-ckpt`)"
        )
    if cfg.load and not Path(cfg.load).is_dir():
        raise FileNotFoundError(
            f"--load {cfg.load}: no such directory; pass a Megatron-mcore checkpoint directory "
            "(write one with `packft convert-ckpt --save-model-type mg`)"
        )
    require_valid_data(cfg)


def open_tracker(cfg: TrainConfig, env: DistEnv) -> Any:
    """The run's tracker (rank 0); ``{save}/train_config.json`` is written for a later import."""
    from packft.track.tracking import make_tracker, resolve_tracking_uri

    if not env.main:
        return make_tracker(None, cfg.experiment, enabled=False)
    history.write_config(cfg.save, cfg.model_dump(mode="json"))
    uri = resolve_tracking_uri(cfg.tracking_uri) if cfg.tracking else None
    hint = (
        f"; every step is still written to {Path(cfg.save) / history.LOG_FILE}: import "
        f"it later with `packft track-import {cfg.save} --tracking-uri {uri}`"
    )
    tracker = make_tracker(
        uri, cfg.experiment, cfg.run_name, enabled=cfg.tracking,
        required=cfg.tracking_required, untracked_hint=hint,
    )  # fmt: skip
    tracker.log_params(cfg.model_dump())
    return tracker


def load_model(cfg: TrainConfig) -> torch.nn.Module:
    """The HF model in fp32 with packed attention, from --model or (via the converter) --load."""
    from transformers import AutoModelForCausalLM

    from packft.train.attention import ATTN_IMPLEMENTATION

    if cfg.model:
        if not (Path(cfg.model) / "config.json").exists():
            raise FileNotFoundError(
                f"--model {cfg.model}: no config.json there; pass a Hugging Face model directory "
                "or --load MCORE_DIR (convert with `packft convert-ckpt`)"
            )
        return AutoModelForCausalLM.from_pretrained(
            cfg.model, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32
        )
    from packft.ckpt.convert import load_mcore_as_hf

    config, state_dict = load_mcore_as_hf(cfg.load)
    config._attn_implementation = ATTN_IMPLEMENTATION
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state_dict, strict=False)
    model.tie_weights()
    return model


def build(cfg: TrainConfig, env: DistEnv) -> Parts:
    from packft.train.data import SFTDataset, ShardedSampler

    torch.manual_seed(cfg.seed)
    eos, pad = token_ids(cfg)

    def open_dataset(prefix: str) -> SFTDataset:
        return SFTDataset(
            prefix, pack_mode=cfg.pack_mode, eos_id=eos, pad_id=pad, seq_length=cfg.seq_length
        )

    dataset, valid = train_and_valid(cfg, open_dataset(cfg.data_path), open_dataset)
    sampler = ShardedSampler(
        len(dataset), cfg.global_batch_size, cfg.micro_batch_size, env.rank, env.world,
        cfg.seed, cfg.shuffle,
    )  # fmt: skip
    core = apply_lora(load_model(cfg), cfg).to(env.device)
    layers = recompute_layers(cfg.recompute_method, cfg.recompute_num_layers)
    apply_recompute(core, cfg.recompute_granularity, layers)
    model = wrap_model(core, cfg, env)
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    parts = Parts(model, core, optimizer, scheduler, dataset, sampler, step=0, valid=valid)
    if cfg.resume:
        load_checkpoint(cfg, env, parts)
    return parts


def wrap_model(core: torch.nn.Module, cfg: TrainConfig, env: DistEnv) -> torch.nn.Module:
    if env.world == 1:
        return core
    if cfg.use_torch_fsdp2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if env.bf16 else None, reduce_dtype=torch.float32
        )
        mesh = devices.data_parallel_mesh(env.device.type, env.world)  # not torch's default type
        for layer in core.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        return fully_shard(core, mesh=mesh, mp_policy=mp)
    from torch.nn.parallel import DistributedDataParallel

    ids = None if env.device.type == "cpu" else [env.device.index]
    return DistributedDataParallel(core, device_ids=ids)


def lr_lambda(cfg: TrainConfig):
    """Linear warmup to --lr, then cosine to --min-lr at --train-iters (factor of --lr)."""

    def factor(step: int) -> float:
        if step < cfg.lr_warmup_iters:
            return (step + 1) / cfg.lr_warmup_iters
        span = max(1, cfg.train_iters - cfg.lr_warmup_iters)
        progress = min(1.0, (step - cfg.lr_warmup_iters) / span)
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ------------------------------------------------------------------ the step loop
def fit(cfg: TrainConfig, env: DistEnv, p: Parts, tracker: Any) -> dict[str, Any]:
    """Run optimizer steps p.step+1 .. --train-iters (or --exit-interval); return the summary."""
    from packft.train.attention import packed_model_kwargs
    from packft.train.data import loss_sum

    log_path = Path(cfg.save) / "train_log.jsonl"
    if env.main:
        Path(cfg.save).mkdir(parents=True, exist_ok=True)
        keep = log_path.read_text().splitlines()[: p.step] if p.step and log_path.exists() else []
        text = "".join(line + "\n" for line in keep)  # drop steps redone after resume
        atomic_write_bytes(log_path, text.encode())  # a kill here keeps the old log whole
        log_dataset_stats(p.dataset, tracker)
    autocast = (
        torch.autocast(env.device.type, dtype=torch.bfloat16)
        if env.bf16 and not cfg.use_torch_fsdp2
        else contextlib.nullcontext()
    )
    last = min(cfg.train_iters, cfg.exit_interval or cfg.train_iters)
    first_loss = final_loss = valid_loss = None
    real_total, time_total, done = 0, 0.0, 0
    with progress_bar(env.main, p.step, last) as advance:
        for step in range(p.step + 1, last + 1):
            micro = [p.dataset.batch(ix) for ix in p.sampler.next_step()]
            counts = all_reduce_sum(
                [sum(b.counts[cfg.loss_reduction] for b in micro),
                 sum(b.real_tokens for b in micro), sum(b.num_tokens for b in micro)],
                env,
            )  # fmt: skip
            denominator, real_tokens, all_tokens = counts
            p.model.train()
            devices.synchronize(env.device)
            start = time.perf_counter()
            loss_acc = torch.zeros((), device=env.device)
            for i, batch in enumerate(micro):
                kwargs = packed_model_kwargs(batch.cu_seqlens, batch.max_seqlen)
                batch = batch.to(env.device)
                kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = batch.cu_seqlens
                with grad_sync(p.model, i == len(micro) - 1), autocast:
                    logits = p.model(
                        input_ids=batch.input_ids, position_ids=batch.position_ids,
                        use_cache=False, **kwargs,
                    ).logits  # fmt: skip
                    loss = loss_sum(logits, batch, cfg.loss_reduction) / max(denominator, 1)
                (loss * env.world).backward()  # DDP/FSDP average gradients over ranks
                loss_acc += loss.detach()
            max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), max_norm)
            lr = p.optimizer.param_groups[0]["lr"]
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
            step_loss = all_reduce_sum([loss_acc], env)[0]
            devices.synchronize(env.device)
            elapsed = time.perf_counter() - start
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            metrics = {
                "loss": step_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": real_tokens / elapsed,
                "padding_fraction": 1.0 - real_tokens / max(all_tokens, 1),
                "step_time_s": elapsed,
                **evaluate_if_due(cfg, env, p, step, last, autocast),
            }
            first_loss = step_loss if first_loss is None else first_loss
            final_loss = step_loss
            valid_loss = metrics.get("valid_loss", valid_loss)
            if step > p.step + 1 or last == p.step + 1:  # first step includes warm-up costs
                real_total, time_total = real_total + real_tokens, time_total + elapsed
            done = step
            if env.main:
                tracker.log(metric_names.named(metrics, metric_names.STEP), step=step)
                with log_path.open("a") as fh:
                    fh.write(json.dumps({"step": step, **metrics}) + "\n")
                advance(step, metrics, cfg.log_interval)
            if cfg.save_interval and step % cfg.save_interval == 0:
                save_checkpoint(cfg, env, p, step)
    summary = {
        "steps": done,
        "first_loss": first_loss,
        "final_loss": final_loss,
        "valid_loss": valid_loss,
        "tokens_per_s": real_total / time_total if time_total else None,
        "checkpoint": latest_checkpoint(cfg),
        "world_size": env.world,
        "device": env.device.type,
    }
    return summary


def grad_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip gradient all-reduce on all but the last micro-batch of a step."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(values: list, env: DistEnv) -> list[int | float]:
    """Sum over ranks: Python ints exactly (int64), floats / 0-d tensors as fp32 (never fp64,
    which HCCL refuses: :mod:`packft.train.collectives`)."""
    return collectives.sum_over_ranks(values, env.device)


@contextlib.contextmanager
def progress_bar(enabled: bool, start: int, total: int):
    """Rich progress bar on a TTY; plain log lines otherwise. Yields advance(step, metrics, every)."""
    if enabled and sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task("train", total=total, completed=start)

            def advance(step: int, m: dict, every: int) -> None:
                desc = f"loss {m['loss']:.4f} tok/s {m['tokens_per_s']:.0f}"
                bar.update(task, completed=step, description=desc)

            yield advance
        return

    def plain(step: int, m: dict, every: int) -> None:
        if enabled and (step % every == 0 or step == total):
            log.info(
                "step %d/%d loss %.6f lr %.3e grad_norm %.4f tokens/s %.0f padding %.3f",
                step, total, m["loss"], m["lr"], m["grad_norm"], m["tokens_per_s"],
                m["padding_fraction"],
            )  # fmt: skip

    yield plain


def log_dataset_stats(dataset: Any, tracker: Any) -> None:
    """The dataset trained on: sidecar as params, its figures as ``data/*`` metrics."""
    base = {"mode": dataset.mode, "rows": len(dataset), "seq_length": dataset.seq_length,
            **getattr(dataset, "split_counts", {})}  # fmt: skip
    history.log_dataset(tracker, dataset.sidecar(), base)
