"""Checkpoints: Hugging Face <-> Megatron-mcore (MindSpeed "torch" layout), any TP/PP, and the
safe loading of Megatron/torch files.

In: a Hugging Face model directory (``config.json`` + safetensors) or a Megatron-mcore
checkpoint (``iter_*/mp_rank_*/model_optim_rng.pt``, or ``--ckpt-format torch_dist``), and the
target TP/PP. Out: the other format, bit-identical per tensor, written atomically; pickles on
disk are read through an allow-list, never executed.

Modules: :mod:`~packft.ckpt.convert` (``packft convert-ckpt`` and its functions),
:mod:`~packft.ckpt.keys` (architectures, key names, the model spec and stage plan),
:mod:`~packft.ckpt.tensors` (pure tensor transforms: QKV fusion, TP split/merge),
:mod:`~packft.ckpt.read` (mcore -> HF tensors, layer by layer), :mod:`~packft.ckpt.io` (files:
lazy HF reader, rank files, atomic directories), :mod:`~packft.ckpt.torch_dist` (torch
distributed-checkpoint reading) and :mod:`~packft.ckpt.safe_pickle` (the allow-list unpickler).

Every module imports torch, so the names below load on first use: ``import packft.ckpt`` stays
cheap.
"""

import importlib

_LAZY = {
    "hf_to_mcore": "packft.ckpt.convert",
    "mcore_to_hf": "packft.ckpt.convert",
    "save_hf_as_mcore": "packft.ckpt.convert",
    "load_mcore_as_hf": "packft.ckpt.convert",
    "ARCHS": "packft.ckpt.keys",
    "ConvertError": "packft.ckpt.keys",
    "ConvertUsageError": "packft.ckpt.keys",
    "ModelSpec": "packft.ckpt.keys",
    "iter_mcore_as_hf": "packft.ckpt.read",
    "HFReader": "packft.ckpt.io",
    "CorruptCheckpointError": "packft.ckpt.safe_pickle",
    "UnsafeCheckpointError": "packft.ckpt.safe_pickle",
    "load_weights_only": "packft.ckpt.safe_pickle",
    "safe_dcp_load": "packft.ckpt.torch_dist",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:
    """Import the module that defines ``name`` (and torch) when the name is first used."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
