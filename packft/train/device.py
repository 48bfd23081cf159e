"""Pick the training device (npu > cuda > cpu) without letting an Ascend install break torch.

Why this module exists: with `torch_npu` installed on a host without the CANN toolkit, a plain
`import torch` raises RuntimeError, because torch auto-loads device backends from the
`torch.backends` entry point. `packft/__init__.py` sets `TORCH_DEVICE_BACKEND_AUTOLOAD=0` before
any packft module imports torch, which disables that; then `import torch_npu` itself raises
ImportError (missing libhccl.so), which we treat as "no NPU" together with RuntimeError and
OSError (ecosystem.md section 3). transformers, though, imports an installed torch_npu without a
guard as soon as a model loads, so on such a host `detect_device` stops with one line saying so
(`require_loadable_models`) instead of an ImportError deep inside transformers.

What the chip can do: `npu_chip()` reads the SoC name (`torch.npu.get_device_name`, e.g.
"Ascend910B2") and `torch.npu.is_bf16_supported()` (torch_npu: SoC >= Ascend910B1). The fused
`npu_fusion_attention` is documented for Atlas A2 training products (Ascend910B1-B4) and used by
MindSpeed-LLM on A3 (Ascend910_93xx); on any other chip packed attention falls back to the exact
per-segment SDPA path with one warning (`packft.train.attention.select_backend`). On a chip
without bf16 the default precision is fp32 (one warning) and an explicit --bf16 is refused: fp16
would need loss scaling, which the native loop does not do.

Guarantees: importing packft never imports torch_npu; `detect_device("auto")` returns the first of
npu, cuda, cpu that works; the process-group backend follows the device (hccl, nccl, gloo); the
FSDP2 mesh is built on the training device type, not on torch's default (older torch chose
cuda-or-cpu, a CPU mesh on an NPU host).
Cost: one failed import attempt (~ms) the first time, cached afterwards.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # packft/__init__ already set it

import torch  # noqa: E402

log = logging.getLogger("packft.train")

DEVICE_TYPES = ("auto", "npu", "cuda", "cpu")
BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@functools.cache
def torch_npu_import_error() -> BaseException | None:
    """Why `import torch_npu` failed here; None when it imported or is not installed at all."""
    if importlib.util.find_spec("torch_npu") is None:
        return None
    try:
        import torch_npu  # noqa: F401
    except (ImportError, RuntimeError, OSError) as err:
        return err
    return None


@functools.cache
def npu_available() -> bool:
    """True when torch_npu imports and sees at least one NPU."""
    if importlib.util.find_spec("torch_npu") is None or torch_npu_import_error() is not None:
        return False
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def require_loadable_models() -> None:
    """Fail in one line where an installed but unloadable torch_npu would break transformers.

    transformers (5.24) imports torch_npu without a guard whenever it is installed
    (`is_torch_npu_available`, reached by importing any model), so on a host with torch-npu but
    without CANN no model can load on any device. Probed, not assumed: a transformers release
    that catches the error passes.

    Raises:
        ValueError: torch_npu is installed, does not import, and transformers' probe fails.
    """
    err = torch_npu_import_error()
    if err is None:
        return
    from transformers.utils import import_utils

    try:
        import_utils.is_torch_npu_available()
    except (ImportError, RuntimeError, OSError):
        raise ValueError(
            f"torch_npu is installed but does not load ({type(err).__name__}: {err}), and "
            "transformers imports it unguarded, so no model can load: on an Ascend host source "
            "CANN's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh), elsewhere "
            "`pip uninstall torch-npu`"
        ) from err


def cuda_available() -> bool:
    return torch.cuda.is_available()


def detect_device(requested: str = "auto") -> str:
    """Resolve `auto|npu|cuda|cpu` to a device type that is usable here.

    Raises:
        ValueError: unknown name, an explicitly requested device that is not available, or a
            torch_npu that is installed but cannot load (see `require_loadable_models`).
    """
    if requested not in DEVICE_TYPES:
        raise ValueError(f"--device {requested!r} is not one of {', '.join(DEVICE_TYPES)}")
    require_loadable_models()
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


@dataclass(frozen=True)
class NpuChip:
    """What packft needs to know about an Ascend chip: its SoC name and bf16 support."""

    name: str
    bf16: bool

    @property
    def fused_attention(self) -> bool:
        """True where `npu_fusion_attention` is known to run (A2: Ascend910B<n>; A3: 910_93xx)."""
        return FUSED_ATTENTION_SOC.match(self.name) is not None


# Atlas A2 training (Ascend910B1..B4, B2C, B4_1: the op doc) and A3 (Ascend910_93xx, also named
# Ascend910C<n> by some torch_npu releases: MindSpeed-LLM's platform). Not "Ascend910B" alone,
# which torch_npu's SocVersion lists among the first-generation Ascend 910 chips.
FUSED_ATTENTION_SOC = re.compile(r"^Ascend910(B\d|_93|C\d)")


@functools.cache
def npu_chip(index: int = 0) -> NpuChip:
    """The chip behind NPU ``index`` (torch_npu must have imported: see `npu_available`)."""
    npu = torch.npu  # type: ignore[attr-defined]
    return NpuChip(name=str(npu.get_device_name(index)), bf16=bool(npu.is_bf16_supported()))


def resolve_bf16(device_type: str, requested: bool | None, chip: NpuChip | None = None) -> bool:
    """Whether to train under bf16 autocast: on accelerators by default, never on an NPU without it.

    Raises:
        ValueError: --bf16 was asked for on an NPU whose chip has no bf16.
    """
    if device_type == "npu":
        chip = chip or npu_chip()
        if not chip.bf16:
            if requested:
                raise ValueError(
                    f"--bf16: {chip.name} has no bf16 (torch.npu.is_bf16_supported() is False); "
                    "train with --fp32"
                )
            if requested is None:
                log.warning("%s has no bf16: training in fp32", chip.name)
            return False
    return device_type != "cpu" if requested is None else requested


def data_parallel_mesh(device_type: str, world: int):
    """The 1-D data-parallel DeviceMesh for FSDP2, on the training device type (npu/cuda/cpu)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world,))


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
