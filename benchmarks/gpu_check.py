"""The GPU proof in one command: packed == unpacked per CUDA attention path, and the speed targets.

Two checks, one JSON object on stdout:
  attention  a ~1B Llama (random init, bf16 autocast): the first-step loss of real Alpaca samples
             packed into rows (varlen attention, positions restarting per sample) against the same
             samples run one by one, for each CUDA path packft has (`varlen_attn`, `flash_attn`
             when importable, `flex`). Reported: both losses, their relative difference and the
             tightest tolerance of TOLERANCES it meets; a path passes at <= PASS_TOLERANCE (bf16
             rounds to ~3 significant digits per op, so packing reorders sums at that level).
  bench      benchmarks/bench_train.py at seq 4096 on the same model: padded vs packed-isolated
             vs packed-naive (real tokens/s, MFU, peak memory), then packed-isolated again with
             `--recompute-granularity full`. Targets: isolated >= 2x padded tokens/s and >= 95%
             of naive.
  memory     packft.train.memory's estimate of one training step (micro-batch 2 x seq 4096,
             without and with full recomputation) against torch.cuda.max_memory_allocated
             (reported; the plan's CPU check is tests/train/test_memory.py).
Exit status 0 when every attention path passes and both targets are met, else 1.

    python benchmarks/gpu_check.py            # one H100/H200: about 3-5 minutes (target < 8)
    python benchmarks/gpu_check.py --tiny     # CPU smoke run (tests/train/test_gpu_check.py)
With --tiny the model is a 2-layer Llama, fp32, seq 128 and the CPU path (`sdpa`) is checked;
speed targets are reported but not required (CPU numbers say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from packft.train import device as devices  # noqa: E402
from packft.train.attention import ATTN_IMPLEMENTATION, packed_model_kwargs  # noqa: E402
from packft.train.data import collate, loss_sum  # noqa: E402
from packft.train.memory import ModelShape, RunShape, estimate  # noqa: E402
from packft.train.recompute import apply_recompute  # noqa: E402

TOLERANCES = (1e-5, 1e-4, 1e-3, 5e-3, 1e-2, 2e-2, 5e-2)
PASS_TOLERANCE = {"bf16": 1e-2, "fp32": 1e-5}
TARGET_VS_PADDED, TARGET_VS_NAIVE = 2.0, 0.95


def cuda_backends() -> list[str]:
    """The CUDA attention paths of packft.train.attention that this machine has."""
    from packft.train.attention import _has_flash_attn, _varlen_attn

    paths = ["varlen_attn"] if _varlen_attn() is not None else []
    if _has_flash_attn():
        paths.append("flash_attn")
    return [*paths, "flex"]


def first_step_loss(model, batches, backend: str, device, autocast) -> float:
    """Token-mean loss over ``batches`` (forward only), attention forced to ``backend``."""
    denominator = sum(b.counts["token"] for b in batches)
    total = 0.0
    with torch.no_grad(), autocast:
        for cpu_batch in batches:
            b = cpu_batch.to(device)
            kw = packed_model_kwargs(cpu_batch.cu_seqlens, cpu_batch.max_seqlen)
            kw.update(
                cu_seq_lens_q=b.cu_seqlens, cu_seq_lens_k=b.cu_seqlens, packft_backend=backend
            )
            logits = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False,
                           **kw).logits  # fmt: skip
            total += float(loss_sum(logits, b, "token"))
    return total / denominator


def attention_check(model, samples, backends, seq: int, device, autocast, dtype: str) -> dict:
    """Packed rows vs the same samples alone, per backend."""
    rows = bench_train.pack_bfd(samples, seq)
    packed = [collate(rows[i : i + 2]) for i in range(0, len(rows), 2)]
    alone = [collate([(ids, lab, np.ones(len(ids), np.int64))]) for ids, lab in samples]
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    out = {}
    for backend in backends:
        try:
            p = first_step_loss(model, packed, backend, device, autocast)
            u = first_step_loss(model, alone, backend, device, autocast)
        except Exception as error:  # noqa: BLE001 - a broken path is reported, the rest still run
            out[backend] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
            continue
        rel = abs(p - u) / abs(u)
        met = next((t for t in TOLERANCES if rel <= t), None)
        out[backend] = {"loss_packed": p, "loss_unpacked": u, "rel_diff": rel, "tolerance": met,
                        "ok": rel <= PASS_TOLERANCE[dtype]}  # fmt: skip
    return out


def measured_step_peak(model, batch, device, autocast) -> int:
    """Peak bytes of a training step with AdamW states present (CUDA: max_memory_allocated;
    CPU: torch's MemTracker), as packft's loop runs it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = {"packed": [batch]}
    bench_train.train_step(model, optimizer, "packed_isolated", step, device, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        bench_train.train_step(model, optimizer, "packed_isolated", step, device, autocast)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        bench_train.train_step(model, optimizer, "packed_isolated", step, device, autocast)
    return int(tracker.get_tracker_snapshot("peak")[device]["Total"])


def memory_check(model, config, batch, run, device, autocast, granularity) -> dict:
    """packft.train.memory's plan for this step against the measured peak."""
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    shape = RunShape(micro_batch=len(batch.input_ids), seq_length=run.seq_length,
                     bf16=device.type == "cuda", recompute=granularity,
                     core_attention="fused" if device.type == "cuda" else "sdpa")  # fmt: skip
    estimated = sum(estimate(ModelShape.from_hf_config(config.to_dict()), shape)[:4])
    measured = measured_step_peak(model, batch, device, autocast)
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ratio = estimated / measured
    return {"estimated_bytes": estimated, "measured_peak_bytes": measured, "ratio": ratio,
            "within_25_percent": 0.75 <= ratio <= 1.25}  # fmt: skip


def bench(model, args, device, autocast) -> dict:
    """bench_train's three modes, then packed-isolated with full recomputation."""
    steps = bench_train.make_steps(bench_train.alpaca_samples(args.seq_length), args)
    modes = bench_train.run_modes(
        model, ["padded", "packed_isolated", "packed_naive"], steps, args, device, autocast
    )
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    apply_recompute(model, "full")
    recomputed = bench_train.run_modes(model, ["packed_isolated"], steps, args, device, autocast)
    modes["packed_isolated_recompute_full"] = recomputed["packed_isolated"]
    vs_padded = modes["packed_isolated"]["tokens_per_s"] / modes["padded"]["tokens_per_s"]
    vs_naive = modes["packed_isolated"]["tokens_per_s"] / modes["packed_naive"]["tokens_per_s"]
    return {
        "seq_length": args.seq_length,
        "real_tokens_per_step": args.tokens_per_step,
        "timed_steps": args.steps,
        "modes": modes,
        "ratio_isolated_vs_padded": vs_padded,
        "ratio_isolated_vs_naive": vs_naive,
        "targets_met": {f"isolated_vs_padded>={TARGET_VS_PADDED}": vs_padded >= TARGET_VS_PADDED,
                        f"isolated_vs_naive>={TARGET_VS_NAIVE}": vs_naive >= TARGET_VS_NAIVE},
    }  # fmt: skip


def settings(tiny: bool) -> SimpleNamespace:
    """Sizes of the run: ~1B at seq 4096 on a GPU, a 2-layer model at seq 128 with --tiny."""
    if tiny:
        return SimpleNamespace(size="tiny", seq_length=128, tokens_per_step=256, steps=1,
                               warmup=0, micro_batch_size=2, check_samples=6)  # fmt: skip
    return SimpleNamespace(size="1b", seq_length=4096, tokens_per_step=32768, steps=3, warmup=1,
                           micro_batch_size=2, check_samples=48)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run (2 layers, seq 128)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200)")
    opts = ap.parse_args(argv)
    started = time.perf_counter()
    run = settings(opts.tiny)
    device = devices.local_device(devices.detect_device("cpu" if opts.tiny else "cuda"))
    if device.type != "cuda" and not opts.tiny:
        raise SystemExit("gpu_check: no CUDA device; use --tiny for the CPU smoke run")
    bf16 = device.type == "cuda"
    dtype = "bf16" if bf16 else "fp32"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=max(4096, run.seq_length),
                         attn_implementation="sdpa", **bench_train.SIZES[run.size])  # fmt: skip
    model = LlamaForCausalLM(config).to(device)
    samples = bench_train.alpaca_samples(run.seq_length)[: run.check_samples]
    backends = cuda_backends() if device.type == "cuda" else ["sdpa"]
    attention = attention_check(model, samples, backends, run.seq_length, device, autocast, dtype)
    args = SimpleNamespace(
        warmup=run.warmup, steps=run.steps, tokens_per_step=run.tokens_per_step,
        seq_length=run.seq_length, micro_batch_size=run.micro_batch_size,
        padded_micro_batch_size=0, peak_tflops=opts.peak_tflops,
        n_params=sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n),
        layers=config.num_hidden_layers, hidden=config.hidden_size,
    )  # fmt: skip
    rows = bench_train.pack_bfd(bench_train.alpaca_samples(run.seq_length), run.seq_length)
    plan_batch = collate(rows[: run.micro_batch_size])
    memory = {"none": memory_check(model, config, plan_batch, run, device, autocast, None)}
    speed = bench(model, args, device, autocast)  # ends with full recomputation applied
    memory["full"] = memory_check(model, config, plan_batch, run, device, autocast, "full")
    passed = all(a["ok"] for a in attention.values())
    if not opts.tiny:
        passed = passed and all(speed["targets_met"].values())
    result = {
        "device": torch.cuda.get_device_name(device) if bf16 else "cpu",
        "torch": torch.__version__,
        "model_size": run.size,
        "dtype": dtype,
        "attention": attention,
        "pass_tolerance": PASS_TOLERANCE[dtype],
        "bench": speed,
        "memory_plan": memory,
        "passed": passed,
        "elapsed_s": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=1), flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
