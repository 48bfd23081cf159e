"""Pick the training device (npu > cuda > cpu) without letting an Ascend install break torch.

Why this module exists: with `torch_npu` installed on a host without the CANN toolkit, a plain
`import torch` raises RuntimeError, because torch auto-loads device backends from the
`torch.backends` entry point. Setting `TORCH_DEVICE_BACKEND_AUTOLOAD=0` before torch is imported
disables that; then `import torch_npu` itself raises ImportError (missing libhccl.so), which we
treat as "no NPU" together with RuntimeError and OSError (ecosystem.md section 3).

Guarantees: importing packft never imports torch_npu; `detect_device("auto")` returns the first of
npu, cuda, cpu that works; the process-group backend follows the device (hccl, nccl, gloo).
Cost: one failed import attempt (~ms) the first time, cached afterwards.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # must precede `import torch`

import torch  # noqa: E402

DEVICE_TYPES = ("auto", "npu", "cuda", "cpu")
BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@functools.cache
def npu_available() -> bool:
    """True when torch_npu imports and sees at least one NPU."""
    try:
        import torch_npu  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def cuda_available() -> bool:
    return torch.cuda.is_available()


def detect_device(requested: str = "auto") -> str:
    """Resolve `auto|npu|cuda|cpu` to a device type that is usable here.

    Raises:
        ValueError: unknown name, or an explicitly requested device that is not available.
    """
    if requested not in DEVICE_TYPES:
        raise ValueError(f"--device {requested!r} is not one of {', '.join(DEVICE_TYPES)}")
    if requested == "auto":
        if npu_available():
            return "npu"
        return "cuda" if cuda_available() else "cpu"
    if requested == "npu" and not npu_available():
        raise ValueError(
            "--device npu: torch_npu did not import or sees no NPU. On an Ascend host with CANN "
            "installed run `pip install 'packft[npu]'` (torch-npu matching your torch), "
            "or use --device auto."
        )
    if requested == "cuda" and not cuda_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False; use --device auto")
    return requested


def dist_backend(device_type: str) -> str:
    """Collective backend for a device type: hccl (npu), nccl (cuda), gloo (cpu)."""
    return BACKENDS[device_type]


def local_device(device_type: str, local_rank: int = 0) -> torch.device:
    """The torch.device of this process, selecting the accelerator for `local_rank`."""
    if device_type == "cpu":
        return torch.device("cpu")
    getattr(torch, device_type).set_device(local_rank)
    return torch.device(device_type, local_rank)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are honest."""
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated accelerator memory since start (None on CPU)."""
    if device.type == "cpu":
        return None
    return int(getattr(torch, device.type).max_memory_allocated(device))
