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

from packft.core.lazy import lazy_getattr

_LAZY = {
    "hf_to_mcore": "convert",
    "mcore_to_hf": "convert",
    "save_hf_as_mcore": "convert",
    "load_mcore_as_hf": "convert",
    "ARCHS": "keys",
    "ConvertError": "keys",
    "ConvertUsageError": "keys",
    "ModelSpec": "keys",
    "iter_mcore_as_hf": "read",
    "HFReader": "io",
    "CorruptCheckpointError": "safe_pickle",
    "UnsafeCheckpointError": "safe_pickle",
    "load_weights_only": "safe_pickle",
    "safe_dcp_load": "torch_dist",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
