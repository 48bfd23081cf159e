"""Fine-tuning: a packed dataset and a model in, trained weights, checkpoints and a run record out.

In: a :class:`~packft.train.config.TrainConfig` naming a set written by :mod:`packft.dataset`
(or by MindSpeed) and a Hugging Face model directory or an mcore checkpoint (read through
:mod:`packft.ckpt`). Out: ``{save}/checkpoints/iter_*`` (exact resume), ``{save}/hf`` (and
``{save}/mcore``), ``{save}/train_log.jsonl`` and the run in :mod:`packft.track`.

Modules: :mod:`~packft.train.config` (the options; no torch), :mod:`~packft.train.engine`
(:func:`train`: checks the settings and runs the engine they name; what the CLI and the flows
call), :mod:`~packft.train.summary` (the run summary as a typed result; no torch),
:mod:`~packft.train.cli` (``packft train``), :mod:`~packft.train.loop` (the native step loop),
:mod:`~packft.train.data` (rows -> segments, positions, loss weights; the sampler),
:mod:`~packft.train.attention` (varlen attention per sample), :mod:`~packft.train.device`
(NPU/CUDA/CPU), :mod:`~packft.train.state` (what the loop and the checkpoints share),
:mod:`~packft.train.checkpoint` (atomic save, exact resume, final export),
:mod:`~packft.train.mindspeed` (``--engine mindspeed``), :mod:`~packft.train.history` (what
a run records; ``packft track-import``), :mod:`~packft.train.recompute` (activation
recomputation), :mod:`~packft.train.memory` (the memory plan, ``--dry-run``) and
:mod:`~packft.train.megatron_args` (MindSpeed launch flags: used, checked, ignored). Imports go one way: config and state <- data,
checkpoint, mindspeed <- loop <- engine <- cli.

:class:`TrainConfig` is imported eagerly; the other names load torch, so they load on first use.
"""

from packft.core.lazy import lazy_getattr
from packft.train.config import TrainConfig

_LAZY = {
    "train": "engine",
    "check_engine": "engine",
    "SFTDataset": "data",
    "ShardedSampler": "data",
    "run_mindspeed": "mindspeed",
    "latest_checkpoint": "checkpoint",
}
__all__ = ["TrainConfig", *sorted(_LAZY)]


__getattr__ = lazy_getattr(__name__, _LAZY)
