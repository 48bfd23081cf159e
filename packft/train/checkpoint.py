"""Training checkpoints of `packft train`: what is saved, how it is written, how a run resumes.

What is saved. Every --save-interval steps, `{save}/checkpoints/iter_{step:07d}/` receives:

* model and optimizer state through `torch.distributed.checkpoint` (DCP), written by every rank
  (so DDP and FSDP2 shards alike, via `get_state_dict`);
* `rng_rank{rank:05d}.pt`: each rank's Python, NumPy, torch (and CUDA or NPU) RNG states;
* `trainer_state.pt` (rank 0): step, LR scheduler, data sampler position, world size, config.

`{save}/checkpoints/latest` holds the name of the newest `iter_*` directory. At the end of a
completed run, :func:`save_final` writes full weights as Hugging Face safetensors to `{save}/hf`
(config without packft's attention implementation, plus the tokenizer) and, with --save-mcore,
a Megatron-mcore copy to `{save}/mcore` through the converter.

Atomic write, through :mod:`packft.core.atomic`. A checkpoint is a staged directory
(`.iter_{step:07d}.packft-<writer>.tmp`, whose name rank 0 sends to the other ranks): every rank
writes its files there, rank 0 fsyncs the tree and renames it to its final name (a re-saved step
is swapped in with one rename), and only then is `latest` replaced (temp file + fsync + rename). A
run killed at any moment therefore leaves `latest` naming a complete checkpoint; the next save
removes a killed run's staged directories. `{save}/hf` is likewise a staged directory swapped in
whole (:func:`packft.core.atomic.atomic_dir`).

Exact resume. `--resume` (:func:`load_checkpoint`) restores model, optimizer, scheduler, sampler
and step from `latest`, and each rank's RNG when the world size is unchanged (otherwise the fresh
RNG is kept; data order comes from the sampler state and is unaffected). A run killed after step
k and resumed therefore ends with bit-identical weights to an uninterrupted run
(tests/train/test_train.py).

Nothing is unpickled into code. `trainer_state.pt` and `rng_rank*.pt` hold only tensors and plain
values (the NumPy state as an int64 tensor plus scalars) and are read with
`torch.load(weights_only=True)`; the DCP `.metadata` and non-tensor items go through
:func:`packft.ckpt.torch_dist.safe_dcp_load`. A file carrying any other global (a pickled
`os.system` ...) is refused before it runs (tests/faults/test_unpickling.py).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from packft.ckpt.safe_pickle import load_weights_only
from packft.core.atomic import Stage, atomic_dir, atomic_write_bytes
from packft.core.writers import sweep
from packft.train.lora import export_adapter, lora_enabled

if TYPE_CHECKING:
    from packft.train.config import TrainConfig
    from packft.train.state import DistEnv, Parts

log = logging.getLogger(__name__)


def checkpoint_root(cfg: TrainConfig) -> Path:
    """`{save}/checkpoints`: the `iter_*` directories and the `latest` pointer."""
    return Path(cfg.save) / "checkpoints"


def latest_checkpoint(cfg: TrainConfig) -> str | None:
    """The checkpoint directory `latest` names, or None before the first save."""
    latest = checkpoint_root(cfg) / "latest"
    return str(checkpoint_root(cfg) / latest.read_text().strip()) if latest.exists() else None


ACCELERATOR_RNG = ("cuda", "npu")  # device modules whose per-device generators are saved


def _accelerator_modules() -> list[tuple[str, Any]]:
    """(name, torch.<name>) for each accelerator present (torch.npu exists once torch_npu loads)."""
    found = []
    for name in ACCELERATOR_RNG:
        module = getattr(torch, name, None)
        if module is not None and module.is_available():
            found.append((name, module))
    return found


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from (Python, NumPy, torch, each CUDA or NPU device present; NPU
    dropout draws from the NPU generators), as tensors and plain values only, so the file loads
    with ``torch.load(weights_only=True)``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
        "numpy": {"bit_generator": kind, "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    for name, module in _accelerator_modules():
        state[name] = module.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (or the NumPy tuple that packft <= 0.x stored)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["bit_generator"], key, numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])  # fmt: skip
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    for name, module in _accelerator_modules():
        if name in state:
            module.set_rng_state_all(state[name])


def _legacy_numpy_globals() -> list[Any]:
    """Exactly what an ``np.random.get_state()`` tuple pickles (older packft RNG files): the
    array reconstructor, ``ndarray`` and the uint32 dtype. Nothing else from numpy is allowed."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def barrier() -> None:
    """`dist.barrier()` when distributed; nothing on a single process."""
    if dist.is_initialized():
        dist.barrier()


def trained_only(strict: bool = True) -> Any:
    """DCP state-dict options: the parameters that train (with LoRA the frozen base is not saved;
    it is read again from --model/--load); without LoRA every parameter trains. Loading passes
    ``strict=False`` because the frozen parameters are absent by design; every trained one is
    still required: ``dcp.load`` fails on any key of the template the checkpoint lacks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _shared_path(path: Path | None) -> Path:
    """Rank 0's ``path``, on every rank."""
    if not dist.is_initialized():
        return path  # type: ignore[return-value]
    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def save_checkpoint(cfg: TrainConfig, env: DistEnv, p: Parts, step: int) -> Path:
    """DCP model+optimizer, trainer state and RNG into a staged directory, committed by rank 0,
    then `latest` (see the module doc)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = checkpoint_root(cfg)
    final = root / f"iter_{step:07d}"
    stage = None
    if env.main:
        root.mkdir(parents=True, exist_ok=True)
        sweep(root)  # a killed run's staged checkpoints
        stage = Stage(root, label="train.checkpoint")
    try:
        tmp = _shared_path(stage.make_dir(final) if stage is not None else None)
        msd, osd = get_state_dict(p.model, p.optimizer, options=trained_only())
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
        torch.save(rng_state(), tmp / f"rng_rank{env.rank:05d}.pt")
        barrier()
        if stage is not None:
            trainer = {"step": step, "scheduler": p.scheduler.state_dict(), "world": env.world,
                       "sampler": p.sampler.state_dict(), "config": cfg.model_dump(),
                       "torch_threads": torch.get_num_threads()}  # fmt: skip
            torch.save(trainer, tmp / "trainer_state.pt")
            stage.seal(final)
            stage.commit()
            atomic_write_bytes(root / "latest", final.name.encode())
    except BaseException:
        if stage is not None:
            stage.abort()
        raise
    finally:
        if stage is not None:
            stage.close()
    barrier()
    return final


def load_checkpoint(cfg: TrainConfig, env: DistEnv, p: Parts) -> None:
    """Restore what :func:`save_checkpoint` wrote, from `latest`, into ``p`` (``p.step`` too).

    Raises:
        FileNotFoundError: no checkpoint under --save (the message says how to get one).
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from packft.ckpt.torch_dist import safe_dcp_load

    found = latest_checkpoint(cfg)
    if found is None:
        raise FileNotFoundError(
            f"--resume: {checkpoint_root(cfg) / 'latest'} not found; no checkpoint was saved "
            f"under --save {cfg.save} (use --save-interval N), or drop --resume to start fresh"
        )
    ckpt = Path(found)
    msd, osd = get_state_dict(p.model, p.optimizer, options=trained_only())
    state = {"model": msd, "optim": osd}
    safe_dcp_load(state, ckpt)  # DCP metadata and non-tensor items without arbitrary unpickling
    set_state_dict(
        p.model, p.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
        options=trained_only(strict=False),
    )  # fmt: skip
    trainer = load_weights_only(ckpt / "trainer_state.pt")
    p.scheduler.load_state_dict(trainer["scheduler"])
    p.sampler.load_state_dict(trainer["sampler"])
    p.step = int(trainer["step"])
    threads = trainer.get("torch_threads")
    if threads is not None and threads != torch.get_num_threads():
        # CPU kernels sum in a thread-count-dependent order: the run continues exactly, but not
        # bit-identically to an uninterrupted one (set OMP_NUM_THREADS to match for that).
        log.warning(
            "resuming with %d torch threads; the checkpoint was written with %d, so the weights "
            "will not be bit-identical to an uninterrupted run (set OMP_NUM_THREADS=%d for that)",
            torch.get_num_threads(), threads, threads,
        )  # fmt: skip
    rng = ckpt / f"rng_rank{env.rank:05d}.pt"
    if rng.exists():  # a different world size keeps the fresh RNG (data order is unaffected)
        set_rng_state(load_weights_only(rng, extra_globals=_legacy_numpy_globals()))
    log.info("resumed from %s at step %d", ckpt, p.step)


def save_final(cfg: TrainConfig, env: DistEnv, model: torch.nn.Module) -> str:
    """Full weights as HF safetensors in {save}/hf (and mcore in {save}/mcore with --save-mcore)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=opts)
    out = Path(cfg.save) / "hf"
    if env.main:
        core = model.module if hasattr(model, "module") else model
        if lora_enabled(cfg):  # {save}/adapter alone; {save}/hf gets the merged weights
            state = export_adapter(cfg, core, state)
        with atomic_dir(out, replace=True, label="train.final") as tmp:
            core.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            config = json.loads((tmp / "config.json").read_text())
            config.pop("_attn_implementation", None)  # loadable without packft
            config.pop("attn_implementation", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            if cfg.tokenizer_name_or_path:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(cfg.tokenizer_name_or_path).save_pretrained(tmp)
        if cfg.save_mcore:
            from packft.ckpt.convert import save_hf_as_mcore

            save_hf_as_mcore(out, Path(cfg.save) / "mcore", cfg.tensor_model_parallel_size,
                             cfg.pipeline_model_parallel_size, overwrite=True)  # fmt: skip
    barrier()
    return str(out)
