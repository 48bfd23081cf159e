"""Training throughput: padded vs packed+isolated vs packed without isolation, same real tokens.

Every optimizer step trains the same Alpaca samples (real lengths, llama2 tokenizer) in three ways:
  padded          one sample per row, each micro-batch padded to its longest sample, HF `sdpa`
                  with a 2-D padding mask (what a plain HF Trainer does)
  packed_isolated rows of --seq-length packed best-fit-decreasing, packft's varlen attention
                  (causal per sample, positions restart): the exact mode `packft train` uses
  packed_naive    the same rows, plain causal attention over the whole row (contaminated; speed
                  ceiling for packing)
Each mode runs forward + backward + AdamW for --steps timed steps (default 20) after --warmup
steps (2), with the same number of micro-batches per step; the modes of one step run back to
back, and the headline ratios are medians over steps of the per-step ratios (robust to load
bursts on a shared machine; a 3-step mean once gave 0.86x for a 1.48x effect). Prints one JSON object: real tokens/s per mode, padding
fraction, and on CUDA also MFU (model FLOPs on real tokens: 6*N*T + 6*L*d*sum(len^2), over
--peak-tflops) and peak memory; ratios packed_isolated/padded and packed_isolated/packed_naive.

    python benchmarks/bench_train.py                     # CPU, tiny Llama, seq 512, 20 steps
    python benchmarks/bench_train.py --quick             # 5 timed steps
    python benchmarks/bench_train.py --device cuda --model-size 1b --seq-length 4096 \
        --tokens-per-step 32768 --micro-batch-size 2 --steps 5 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from packft.core.constants import IGNORE_INDEX  # noqa: E402
from packft.train import device as devices  # noqa: E402
from packft.train.attention import ATTN_IMPLEMENTATION, packed_model_kwargs  # noqa: E402
from packft.train.data import collate, loss_sum

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"  # see its MANIFEST.md
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
}  # fmt: skip


def alpaca_samples(seq_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real Alpaca samples: [INST] prompt [/INST] answer </s>, prompt labels masked."""
    tok = AutoTokenizer.from_pretrained(ASSETS / "llama2-tokenizer")
    records = json.loads((ASSETS / "alpaca" / "llamafactory_alpaca_en_demo.json").read_text())
    out = []
    for rec in records:
        prompt = rec["instruction"] + ("\n" + rec["input"] if rec["input"] else "")
        p = [tok.bos_token_id] + tok.encode(f"[INST] {prompt} [/INST]", add_special_tokens=False)
        a = tok.encode(rec["output"], add_special_tokens=False) + [tok.eos_token_id]
        ids = (p + a)[: seq_length - 1]
        labels = ([IGNORE_INDEX] * len(p) + a)[: seq_length - 1]
        out.append((np.array(ids), np.array(labels)))
    return out


def pack_bfd(samples, seq_length: int):
    """Best-fit-decreasing rows with neat segment ids; each row keeps >= 1 pad like MindSpeed."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i][0]))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(samples[i][0])
        fits = [r for r in range(len(rows)) if free[r] >= n]
        if fits:
            r = min(fits, key=lambda r: free[r])
            rows[r].append(i)
            free[r] -= n
        else:
            rows.append([i])
            free.append(seq_length - 1 - n)
    packed = []
    for row in rows:
        ids = np.concatenate([samples[i][0] for i in row])
        lab = np.concatenate([samples[i][1] for i in row])
        seg = np.concatenate([np.full(len(samples[i][0]), k + 1) for k, i in enumerate(row)])
        pad = seq_length - len(ids)
        packed.append((np.r_[ids, np.zeros(pad, int)], np.r_[lab, np.full(pad, IGNORE_INDEX)],
                       np.r_[seg, np.zeros(pad, int)]))  # fmt: skip
    return packed


def make_steps(samples, args) -> list[dict[str, list]]:
    """Per step: the samples' padded micro-batches and the packed micro-batches (same count)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    steps, cursor = [], 0
    for _ in range(args.warmup + args.steps):
        chosen, real = [], 0
        while real < args.tokens_per_step:
            s = samples[order[cursor % len(order)]]
            cursor += 1
            chosen.append(s)
            real += len(s[0])
        rows = pack_bfd(chosen, args.seq_length)
        n_micro = max(1, -(-len(rows) // args.micro_batch_size))
        packed = [rows[i::n_micro] for i in range(n_micro)]
        singles = [(i, lab, np.ones(len(i), int)) for i, lab in chosen]
        rng.shuffle(singles)
        n_pad = n_micro
        if args.padded_micro_batch_size:  # cap samples per padded forward (memory)
            n_pad = max(n_micro, -(-len(singles) // args.padded_micro_batch_size))
        padded = [singles[i::n_pad] for i in range(n_pad)]
        steps.append(
            {"packed": [collate(m) for m in packed], "padded": [collate(m) for m in padded]}
        )
    return steps


def flops(n_params: int, layers: int, hidden: int, batches) -> float:
    lengths = np.concatenate([np.diff(b.cu_seqlens.numpy()) for b in batches])
    real = sum(b.real_tokens for b in batches)
    return 6.0 * n_params * real + 6.0 * layers * hidden * float((lengths.astype(float) ** 2).sum())


def train_step(model, opt, mode: str, step: dict, device, autocast) -> None:
    """One optimizer step of `mode` on this step's samples (forward, backward, clip, AdamW)."""
    batches = step["padded" if mode == "padded" else "packed"]
    denom = sum(b.counts["token"] for b in batches)
    for cpu_batch in batches:
        b = cpu_batch.to(device)
        kw: dict = {"input_ids": b.input_ids, "use_cache": False}
        if mode == "packed_isolated":
            kw.update(packed_model_kwargs(cpu_batch.cu_seqlens, cpu_batch.max_seqlen))
            kw.update(position_ids=b.position_ids, cu_seq_lens_q=b.cu_seqlens,
                      cu_seq_lens_k=b.cu_seqlens)  # fmt: skip
        elif mode == "padded":
            kw["attention_mask"] = (b.sample_ids >= 0).long()
        with autocast:
            logits = model(**kw).logits
            loss = loss_sum(logits, b, "token") / denom
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_modes(model, modes: list[str], steps, args, device, autocast) -> dict[str, dict]:
    """Steps outer, modes inner: load from other users of a shared machine hits all modes alike."""
    impl = {m: ATTN_IMPLEMENTATION if m == "packed_isolated" else "sdpa" for m in modes}
    opts = {m: torch.optim.AdamW(model.parameters(), lr=1e-5) for m in modes}
    acc = {m: {"time": 0.0, "real": 0, "total": 0, "flops": 0.0, "peak": 0, "rates": []}
           for m in modes}  # fmt: skip
    for k, step in enumerate(steps):
        for mode in modes:
            model.set_attn_implementation(impl[mode])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            devices.synchronize(device)
            start = time.perf_counter()
            train_step(model, opts[mode], mode, step, device, autocast)
            devices.synchronize(device)
            if k < args.warmup:
                continue
            batches = step["padded" if mode == "padded" else "packed"]
            a = acc[mode]
            seconds = time.perf_counter() - start
            a["time"] += seconds
            a["rates"].append(sum(b.real_tokens for b in batches) / seconds)
            a["real"] += sum(b.real_tokens for b in batches)
            a["total"] += sum(b.num_tokens for b in batches)
            a["flops"] += flops(args.n_params, args.layers, args.hidden, batches)
            a["peak"] = max(a["peak"], devices.peak_memory_bytes(device) or 0)
    out = {}
    for mode, a in acc.items():
        out[mode] = {
            "tokens_per_s": a["real"] / a["time"],
            "tokens_per_s_median_step": float(np.median(a["rates"])),
            "step_rates": [round(r, 1) for r in a["rates"]],
            "step_time_s": a["time"] / args.steps,
            "padding_fraction": 1 - a["real"] / a["total"],
            "micro_batches_per_step": len(steps[0]["padded" if mode == "padded" else "packed"]),
        }
        if device.type == "cuda":
            out[mode]["mfu"] = a["flops"] / a["time"] / (args.peak_tflops * 1e12)
            out[mode]["peak_memory_gb"] = a["peak"] / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=devices.DEVICE_TYPES)
    ap.add_argument("--model-size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--seq-length", type=int, default=512)
    ap.add_argument("--tokens-per-step", type=int, default=2048, help="real tokens per step")
    ap.add_argument("--micro-batch-size", type=int, default=2, help="packed rows per micro-batch")
    ap.add_argument(
        "--padded-micro-batch-size",
        type=int,
        default=0,
        help="max samples per padded micro-batch (default: as many micro-batches as packed)",
    )
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="5 timed steps")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    ap.add_argument("--modes", nargs="+", default=["padded", "packed_isolated", "packed_naive"])
    args = ap.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 20)
    load_start = os.getloadavg()
    device = devices.local_device(devices.detect_device(args.device))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=max(4096, args.seq_length),
                         attn_implementation="sdpa", **SIZES[args.model_size])  # fmt: skip
    model = LlamaForCausalLM(config).to(device)
    args.n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    args.layers, args.hidden = config.num_hidden_layers, config.hidden_size
    bf16 = device.type != "cpu"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    steps = make_steps(alpaca_samples(args.seq_length), args)
    modes = run_modes(model, args.modes, steps, args, device, autocast)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "model_size": args.model_size,
        "params_non_embedding": args.n_params,
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "seq_length": args.seq_length,
        "real_tokens_per_step": int(
            np.mean([sum(b.real_tokens for b in s["packed"]) for s in steps])
        ),
        "timed_steps": args.steps,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "modes": modes,
    }
    # Headline ratios: the median over timed steps of the ratio within each step (the modes of
    # a step run back to back, so a burst of load from other users hits both sides of a ratio);
    # ``*_total`` divides the summed times instead (what a 3-step run reported before).
    for a, b, name in (("packed_isolated", "padded", "ratio_isolated_vs_padded"),
                       ("packed_isolated", "packed_naive", "ratio_isolated_vs_naive")):  # fmt: skip
        if {a, b} <= set(modes):
            per_step = np.array(modes[a]["step_rates"]) / np.array(modes[b]["step_rates"])
            result[name] = round(float(np.median(per_step)), 3)
            result[name + "_total"] = round(modes[a]["tokens_per_s"] / modes[b]["tokens_per_s"], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
