"""The collectives packft itself issues, in dtypes every backend accepts (HCCL included).

Why: HCCL's allreduce/reduce accept only int8, int16, int32, int64, fp16, fp32 and bf16
(torch_npu ``ProcessGroupHCCL.cpp``, ``checkSupportedDataTypeOfAllReduce``: "HCCL AllReduce &
Reduce: Unsupported data type at::kDouble"); fp64 works only on the newest chip generation, and
bool/uint8 not at all. A float64 all-reduce therefore fails multi-NPU training at step 1 while
gloo and NCCL accept it.

Rule: Python ints (token and sample counts) are summed as int64, so they stay exact at any size;
everything else (loss sums) as fp32. :func:`all_reduce_` refuses any other dtype when the group's
backend is ``hccl`` or the tensor lives on an NPU, exactly as HCCL would but before anything is
sent, so a CPU run under a process group named ``hccl`` (a gloo engine registered under that
name, tests/train/test_devices.py) proves that no fp64 reaches HCCL. DDP's and FSDP2's own
gradient collectives are not routed here; they run in the parameters' dtype (fp32, or bf16
under FSDP2's mixed precision), which HCCL accepts; the same test records them.
Cost: one collective per dtype present (at most two per call).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.distributed as dist

HCCL_ALLREDUCE_DTYPES = frozenset(
    {
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.float32,
        torch.bfloat16,
    }
)


def group_backend(group: dist.ProcessGroup | None = None) -> str | None:
    """The backend name of ``group`` (the default group when None); None when not distributed."""
    return str(dist.get_backend(group)) if dist.is_initialized() else None


def require_reducible(dtype: torch.dtype, backend: str | None, device_type: str) -> None:
    """Refuse, as HCCL would, an all-reduce dtype that HCCL does not accept.

    Raises:
        TypeError: ``backend`` is hccl (or the tensor is on an NPU) and ``dtype`` is not one of
            :data:`HCCL_ALLREDUCE_DTYPES`.
    """
    if (backend == "hccl" or device_type == "npu") and dtype not in HCCL_ALLREDUCE_DTYPES:
        allowed = ", ".join(sorted(str(d).removeprefix("torch.") for d in HCCL_ALLREDUCE_DTYPES))
        raise TypeError(
            f"HCCL AllReduce does not accept {dtype} (it accepts {allowed}); "
            "sum counts as int64 and losses as float32"
        )


def all_reduce_(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` in place over the ranks of ``group`` (a no-op on a single process)."""
    if not dist.is_initialized():
        return tensor
    require_reducible(tensor.dtype, group_backend(group), tensor.device.type)
    dist.all_reduce(tensor, group=group)
    return tensor


def sum_over_ranks(
    values: Sequence[int | float | torch.Tensor], device: torch.device
) -> list[int | float]:
    """Sum each value over ranks: integers (Python or NumPy) exactly as int64, floats and 0-d
    tensors as fp32.

    Returns Python ints for the int entries and floats for the others, in the input order.
    """
    is_int = [isinstance(v, numbers.Integral) for v in values]
    out: list[int | float] = [0] * len(values)
    ints = [i for i, flag in enumerate(is_int) if flag]
    floats = [i for i, flag in enumerate(is_int) if not flag]
    if ints:
        t = torch.tensor([int(values[i]) for i in ints], dtype=torch.int64, device=device)
        for i, x in zip(ints, all_reduce_(t).tolist(), strict=True):
            out[i] = int(x)
    if floats:
        parts = [torch.as_tensor(values[i]).detach().to(device, torch.float32) for i in floats]
        t = torch.stack([p.reshape(()) for p in parts])
        for i, x in zip(floats, all_reduce_(t).tolist(), strict=True):
            out[i] = float(x)
    return out
