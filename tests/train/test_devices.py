"""The NPU and CUDA paths as far as a CPU can take them (issue 13).

No NPU and no GPU runs here, so each vendor fact is checked at the seam where packft meets it:
the collectives under a process group named ``hccl`` that refuses what HCCL refuses (real gloo
ranks running the real trainer), the import order with a ``torch_npu`` that fails to load the way
it does without CANN, the bf16 choice for a chip without bf16, the FSDP2 mesh's device type and
the NPU RNG round trip through a checkpoint file with a device module registered the way
torch_npu registers ``torch.npu``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from packft.train import attention, collectives
from packft.train.device import NpuChip, resolve_bf16
from tests.helpers.sft_setup import make_sft_setup
from tests.train.test_attention import emulate_npu_fusion_attention, tiny_model

REPO = Path(__file__).resolve().parents[2]
SEQ = 256


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, cwd=REPO, env=env or dict(os.environ), timeout=300,
    )  # fmt: skip


# ------------------------------------------------------------------ collectives
def test_hccl_dtype_guard_refuses_fp64_as_hccl_does():
    for dtype in (torch.int64, torch.int32, torch.float32, torch.bfloat16, torch.float16):
        collectives.require_reducible(dtype, "hccl", "npu")
    for dtype in (torch.float64, torch.bool, torch.uint8):
        with pytest.raises(TypeError, match="HCCL AllReduce does not accept"):
            collectives.require_reducible(dtype, "hccl", "cpu")
        with pytest.raises(TypeError, match="HCCL AllReduce"):
            collectives.require_reducible(dtype, None, "npu")  # an NPU tensor, whatever the name
    collectives.require_reducible(torch.float64, "gloo", "cpu")  # gloo and nccl take fp64


def test_sum_over_ranks_keeps_counts_exact_and_sums_in_fp32():
    big = 2**53 + 1  # not representable in fp64: int64 keeps it
    out = collectives.sum_over_ranks([big, 3, torch.tensor(0.25), 1.5], torch.device("cpu"))
    assert out == [big, 3, 0.25, 1.5]
    assert [type(x) for x in out] == [int, int, float, float]


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    """A neat-packed set of 8 real Alpaca samples and a tiny random Llama."""
    root = tmp_path_factory.mktemp("devices")
    make_sft_setup(root, llama2_tokenizer_dir, alpaca_en_path, samples=8, seq=SEQ,
                   initializer_range=0.02)  # fmt: skip
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp2"])
def test_trainer_sends_hccl_only_dtypes_it_accepts(train_setup, sharding):
    """2 gloo ranks under a group named hccl run 2 real steps (and a checkpoint): every c10d op
    that reached the group is recorded, fp64 is refused as HCCL refuses it, and none was sent."""
    root = train_setup
    out = root / f"hccl-{sharding}"
    out.mkdir()
    extra = ["--use-torch-fsdp2"] if sharding == "fsdp2" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "tests" / "helpers" / "hccl_sim.py"), str(out), "--",
           "--data-path", str(root / "packed"), "--model", str(root / "model"),
           "--save", str(out / "save"), "--global-batch-size", "2", "--micro-batch-size", "1",
           "--train-iters", "2", "--save-interval", "2", "--lr", "1e-3", "--no-tracking",
           "--device", "cpu", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((out / f"rank{rank}.json").read_text())
        assert result["backend"] == "hccl" and result["rc"] == 0
        assert result["fp64_refused"] is True  # the check bites
        calls = result["calls"]
        sent = {d for _, dtypes in calls for d in dtypes}
        assert "torch.float64" not in sent, calls
        reduced = {tuple(d) for op, d in calls if op.startswith("allreduce")}
        assert ("torch.int64",) in reduced  # the step's token/sample counts, exact
        assert ("torch.float32",) in reduced  # the step loss (and DDP's fp32 gradient buckets)
        if sharding == "fsdp2":
            assert any(op.startswith("_reduce_scatter") for op, _ in calls)
            mesh = result["mesh"]
            assert mesh["mesh_device_types"] == [mesh["env_device_type"]] == ["cpu"]
            assert mesh["mesh_sizes"] == [2] and mesh["mesh_backends"] == ["hccl"]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["world_size"] == 2


# ------------------------------------------------------------------ import order
def broken_torch_npu(root: Path) -> Path:
    """A torch_npu that registers torch's backend entry point but fails to import, exactly as
    torch-npu 2.13 does on a host without CANN (ImportError: libhccl.so ...)."""
    (root / "torch_npu").mkdir(parents=True)
    (root / "torch_npu" / "__init__.py").write_text(
        'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n'
    )
    info = root / "torch_npu-2.13.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.13.0\n")
    (info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    return root


def test_importing_the_trainer_survives_a_torch_npu_without_cann(tmp_path):
    stub = broken_torch_npu(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(stub), str(REPO), env.get("PYTHONPATH", "")])
    plain = run_python("import torch", env)  # the hazard is real in this environment
    assert plain.returncode != 0
    assert "Failed to load the backend extension: torch_npu" in plain.stderr
    trainer = run_python(
        """
        from packft.train import train  # the trainer module imports torch before device.py
        import packft.train.loop, packft.train.checkpoint, packft.train.collectives
        from packft.train import device
        print(device.npu_available(), type(device.torch_npu_import_error()).__name__)
        try:
            device.detect_device("cpu")
        except ValueError as err:
            print(err)
        """,
        env,
    )
    assert trainer.returncode == 0, trainer.stderr[-2000:]
    first, reason = trainer.stdout.splitlines()
    assert first == "False ImportError"
    # transformers then imports torch_npu unguarded when a model loads: said in one line, early
    assert reason.startswith("torch_npu is installed but does not load (ImportError: libhccl.so")
    assert "transformers imports it unguarded" in reason and "pip uninstall torch-npu" in reason
    flows = run_python("import flows.finetune\nfrom tasks.model import finetune\nimport torch", env)
    assert flows.returncode == 0, flows.stderr[-2000:]
    user_value = run_python("import packft, torch", {**env, "TORCH_DEVICE_BACKEND_AUTOLOAD": "1"})
    assert user_value.returncode != 0  # a value the user set is respected, not overridden


# ------------------------------------------------------------------ kernel dtypes and calls
def cann7_npu_kernel(calls: list):
    """The op emulator, refusing what CANN 7.x documents no support for: q, k, v not all fp16 or
    all bf16. Records (dtypes, actual_seq_qlen) per call."""

    def kernel(**kw):
        dtypes = {kw[name].dtype for name in ("query", "key", "value")}
        calls.append((sorted(str(d) for d in dtypes), list(kw["actual_seq_qlen"])))
        if len(dtypes) != 1 or not dtypes <= {torch.float16, torch.bfloat16}:
            raise RuntimeError(f"npu_fusion_attention: q/k/v dtypes {dtypes} are not supported")
        wide = {name: kw[name].float() for name in ("query", "key", "value")}
        out = emulate_npu_fusion_attention(**{**kw, **wide})  # fp32 accumulation, as the kernel
        return (out[0].to(kw["query"].dtype), *out[1:])

    return kernel


HOOK_INPUTS: list[list[str]] = []


def recording_hook(module, query, key, value, *args, **kwargs):
    """packed_attention, recording the dtypes transformers hands it (before packft casts)."""
    HOOK_INPUTS.append([str(t.dtype) for t in (query, key, value)])
    return attention.packed_attention(module, query, key, value, *args, **kwargs)


def test_kernel_gets_the_autocast_dtype_under_bf16_autocast(monkeypatch):
    """A tiny Llama under bf16 autocast: RoPE hands fp32 q/k (and bf16 v) to the attention hook;
    the NPU kernel seam receives all three in bf16, and the logits match the per-segment path."""
    from transformers import AttentionInterface

    AttentionInterface.register("packft_record_dtypes", recording_hook)
    model = tiny_model("llama", 64, "packft_record_dtypes")
    lengths = [5, 11, 4, 12]  # two rows of 16, each holding two samples
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in lengths]).view(2, 16)
    cu = torch.tensor([0, 5, 16, 20, 32])
    calls: list = []
    monkeypatch.setattr(attention, "npu_kernel", lambda: cann7_npu_kernel(calls))
    HOOK_INPUTS.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = {
            backend: model(
                input_ids=ids, position_ids=positions, use_cache=False, packft_backend=backend,
                **attention.packed_model_kwargs(cu, 12),
            ).logits.float()
            for backend in ("npu", "sdpa")
        }  # fmt: skip
    assert HOOK_INPUTS[0] == ["torch.float32", "torch.float32", "torch.bfloat16"]  # the hazard
    assert len(calls) == 2  # one call per layer
    assert all(dtypes == ["torch.bfloat16"] for dtypes, _ in calls), calls
    assert all(ends == [5, 16, 20, 32] for _, ends in calls)
    diff = (logits["npu"] - logits["sdpa"]).abs().mean() / logits["sdpa"].abs().mean()
    # the same attention up to bf16 rounding (measured 1.5e-2; a wrong segment list: 0.15-0.38)
    assert diff < 5e-2, diff
    # the check can fail: without the cast the same call is refused as CANN 7.x refuses it
    monkeypatch.setattr(attention, "kernel_dtype", lambda device_type, query_dtype: query_dtype)
    refused = pytest.raises(RuntimeError, match="not supported")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), refused:
        model(input_ids=ids, position_ids=positions, use_cache=False, packft_backend="npu",
              **attention.packed_model_kwargs(cu, 12))  # fmt: skip


def test_kernel_dtype_without_autocast_is_the_query_dtype():
    assert attention.kernel_dtype("cpu", torch.float32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention.kernel_dtype("cpu", torch.float32) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert attention.kernel_dtype("cpu", torch.float32) == torch.float16


def test_more_than_1024_segments_are_split_into_whole_segment_groups():
    lengths = torch.randint(1, 4, (2500,), generator=torch.Generator().manual_seed(1)).tolist()
    ends = torch.tensor(lengths).cumsum(0).tolist()
    groups = attention.segment_groups(ends, attention.NPU_MAX_SEGMENTS)
    assert attention.NPU_MAX_SEGMENTS == 1024
    assert [len(local) for _, _, local in groups] == [1024, 1024, 452]
    assert [(a, b) for a, b, _ in groups] == [(0, ends[1023]), (ends[1023], ends[2047]),
                                              (ends[2047], ends[-1])]  # fmt: skip
    rebuilt = [a + e for a, _, local in groups for e in local]
    assert rebuilt == ends  # every segment once, in order, cut only at segment ends
    assert attention.segment_groups(ends[:1024], 1024) == [(0, ends[1023], ends[:1024])]


def test_split_calls_equal_one_call(monkeypatch):
    """The calls split at the segment limit give the output and gradients of a single call."""
    monkeypatch.setattr(attention, "NPU_MAX_SEGMENTS", 3)
    ends = [3, 7, 8, 15, 20, 22, 30, 31, 40, 48]
    g = torch.Generator().manual_seed(2)
    q = torch.randn(48, 4, 8, generator=g, requires_grad=True)
    k, v = torch.randn(48, 2, 8, generator=g), torch.randn(48, 2, 8, generator=g)
    calls: list = []

    def kernel(**kw):
        calls.append(list(kw["actual_seq_qlen"]))
        assert kw["query"].shape[0] == kw["actual_seq_qlen"][-1]  # each call is whole segments
        return emulate_npu_fusion_attention(**kw)

    out = attention.npu_varlen(q, k, v, ends, 0.3, kernel=kernel)
    one = emulate_npu_fusion_attention(**attention.npu_fusion_arguments(q, k, v, ends, 0.3))[0]
    assert calls == [[3, 7, 8], [7, 12, 14], [8, 9, 18], [8]]
    assert torch.equal(out, one)
    (grad_split,) = torch.autograd.grad(out.square().sum(), q)
    (grad_one,) = torch.autograd.grad(one.square().sum(), q)
    assert torch.equal(grad_split, grad_one)


# ------------------------------------------------------------------ chip capability
def test_unsupported_chip_falls_back_with_one_warning():
    """torch.npu faked the way torch_npu registers it, reporting a chosen SoC and bf16 support:
    the attention backend and the default precision follow the chip, each said once."""
    code = """
        import logging, torch
        from packft.train import attention, device

        logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")

        class FakeNpu:
            name, bf16 = "Ascend910B2", True
            def is_available(self):
                return True
            def get_device_name(self, index=0):
                return self.name
            def is_bf16_supported(self):
                return self.bf16

        torch.utils.rename_privateuse1_backend("npu")
        torch._register_device_module("npu", FakeNpu())
        npu = torch.device("npu", 0)
        for name, bf16 in [("Ascend910B2", True), ("Ascend910A", False), ("Ascend910_9392", True)]:
            torch.npu.name, torch.npu.bf16 = name, bf16
            device.npu_chip.cache_clear()
            picks = [attention.select_backend(npu, torch.bfloat16, 64) for _ in range(2)]
            print(name, *picks, device.resolve_bf16("npu", None), device.resolve_bf16("npu", False))
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "Ascend910B2 npu npu True False",
        "Ascend910A sdpa sdpa False False",
        "Ascend910_9392 npu npu True False",
    ]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("LOG WARNING")]
    assert len(warnings) == 2, proc.stderr  # one per fallback, not one per call
    assert "not Ascend910A" in warnings[0] and "SDPA" in warnings[0]
    assert "Ascend910A has no bf16: training in fp32" in warnings[1]


def test_bf16_default_follows_the_chip():
    a2, old = NpuChip("Ascend910B2", bf16=True), NpuChip("Ascend910A", bf16=False)
    assert resolve_bf16("npu", None, a2) is True
    assert resolve_bf16("npu", False, a2) is False
    assert resolve_bf16("npu", None, old) is False  # fp32, with one warning
    with pytest.raises(ValueError, match="Ascend910A has no bf16.*--fp32"):
        resolve_bf16("npu", True, old)
    assert resolve_bf16("cpu", None) is False and resolve_bf16("cuda", None) is True
    assert resolve_bf16("cpu", True) is True


def test_fused_attention_chips():
    supported = ["Ascend910B1", "Ascend910B2C", "Ascend910B4_1", "Ascend910_9392", "Ascend910C1"]
    unsupported = ["Ascend910B", "Ascend910A", "Ascend910ProB", "Ascend310P3", "Ascend310B1"]
    assert all(NpuChip(n, True).fused_attention for n in supported)
    assert not any(NpuChip(n, True).fused_attention for n in unsupported)


# ------------------------------------------------------------------ RNG
def test_npu_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    """torch.npu registered as torch_npu registers it (privateuse1 renamed "npu"), its per-device
    generators standing in for the NPU's: a restored state replays the same draws."""
    code = f"""
        import torch
        from packft.ckpt.safe_pickle import load_weights_only
        from packft.train.checkpoint import rng_state, set_rng_state

        class NpuGenerators:
            def __init__(self, n):
                self.gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
            def is_available(self):
                return True
            def get_rng_state_all(self):
                return [g.get_state() for g in self.gens]
            def set_rng_state_all(self, states):
                for g, s in zip(self.gens, states, strict=True):
                    g.set_state(s)

        torch.utils.rename_privateuse1_backend("npu")
        torch._register_device_module("npu", NpuGenerators(2))
        path = {str(tmp_path / "rng.pt")!r}
        state = rng_state()
        assert len(state["npu"]) == 2 and "cuda" not in state
        torch.save(state, path)
        first = [torch.rand(3, generator=g) for g in torch.npu.gens]
        moved = [torch.rand(3, generator=g) for g in torch.npu.gens]
        assert not torch.equal(first[0], moved[0])
        set_rng_state(load_weights_only(path))
        replay = [torch.rand(3, generator=g) for g in torch.npu.gens]
        assert all(torch.equal(a, b) for a, b in zip(first, replay, strict=True))
        print("ok")
    """
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
