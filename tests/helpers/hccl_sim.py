"""Run ``packft train`` on CPU ranks whose process group is named ``hccl``, checking every collective.

Used as a torchrun script: ``python -m torch.distributed.run ... tests/helpers/hccl_sim.py OUT
-- TRAIN_ARGS``. Each rank registers a backend named ``hccl`` whose engine is gloo (so
``dist.get_backend()`` says "hccl", as on an Ascend host), initializes the default group with it,
and runs the real trainer inside :class:`HcclDtypeCheck`, a dispatch mode that sees every c10d
op (packft's own all-reduces, DDP's bucket all-reduces, FSDP2's reduce-scatters, DCP's gathers),
records its name and dtypes, and refuses a reducing op in a dtype HCCL refuses, as torch_npu's
``checkSupportedDataTypeOfAllReduce`` does (the set below is copied from that source, not from
packft). With --use-torch-fsdp2 it first wraps a tiny Llama with the trainer's own ``wrap_model``
and records each parameter's mesh device type and the mesh group's backend name.
Each rank writes ``OUT/rank{r}.json``: {"rc", "backend", "fp64_refused", "calls": [[op,
[dtypes]]], "mesh": {...}}; "fp64_refused" shows the check bites (an fp64 all-reduce, refused).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# torch_npu/csrc/distributed/ProcessGroupHCCL.cpp, checkSupportedDataTypeOfAllReduce
HCCL_REDUCE_DTYPES = {torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                      torch.float32, torch.bfloat16}  # fmt: skip
REDUCING = ("allreduce", "reduce_", "reduce_scatter", "_reduce_scatter_base")


class HcclDtypeCheck(TorchDispatchMode):
    """Record every c10d op with its tensors' dtypes; refuse what HCCL refuses to reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            name = func._schema.name.split("::")[-1]
            dtypes = sorted({t.dtype for t in tree_leaves(args) if isinstance(t, torch.Tensor)},
                            key=str)  # fmt: skip
            if name.startswith(REDUCING) and not set(dtypes) <= HCCL_REDUCE_DTYPES:
                raise RuntimeError(f"HCCL AllReduce & Reduce: Unsupported data type {dtypes}")
            self.calls.append((name, [str(d) for d in dtypes]))  # what reached the group
        return func(*args, **(kwargs or {}))


def gloo_named_hccl(store, rank, size, timeout):
    return dist.ProcessGroupGloo(store, rank, size, timeout)


def mesh_facts(train_args: list[str]) -> dict:
    """Wrap a tiny Llama as the trainer would and report where its FSDP2 mesh lives."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from packft.train.config import TrainConfig
    from packft.train.loop import setup_distributed, wrap_model

    cfg = TrainConfig(data_path="unused", model="unused", save="unused", use_torch_fsdp2=True,
                      device="cpu")  # fmt: skip
    env = setup_distributed(cfg)
    core = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2))  # fmt: skip
    model = wrap_model(core, cfg, env)
    meshes = {p.device_mesh for p in model.parameters()}
    return {
        "env_device_type": env.device.type,
        "mesh_device_types": sorted({m.device_type for m in meshes}),
        "mesh_sizes": sorted({m.size() for m in meshes}),
        "mesh_backends": sorted({str(dist.get_backend(m.get_group())) for m in meshes}),
    }


def main(argv: list[str]) -> int:
    out, train_args = Path(argv[0]), argv[argv.index("--") + 1 :]
    dist.Backend.register_backend("hccl", gloo_named_hccl, devices=["cpu"])
    dist.init_process_group("hccl")
    rank = dist.get_rank()
    result: dict = {"backend": str(dist.get_backend())}
    if "--use-torch-fsdp2" in train_args:
        result["mesh"] = mesh_facts(train_args)
    from packft.cli import main as cli_main

    mode = HcclDtypeCheck()
    with mode:
        try:  # the check bites: a float64 all-reduce is refused before it is sent
            dist.all_reduce(torch.zeros(1, dtype=torch.float64))
            result["fp64_refused"] = False
        except RuntimeError:
            result["fp64_refused"] = True
        result["rc"] = cli_main(["train", *train_args])
    result["calls"] = mode.calls
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    return int(result["rc"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
