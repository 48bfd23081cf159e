"""Benchmark ``packft convert-ckpt`` both ways on a random Llama of a given size.

Writes a random GQA Llama (sharded safetensors + index, like ``save_pretrained``) into a temporary
directory, converts it HF -> mcore (TP x PP) and back, each direction in a fresh subprocess so its
peak RSS (``VmHWM``) is its own, and prints one JSON object. ``import_rss_mb`` is the RSS of a
process that only imported packft.ckpt.convert (torch + safetensors), to subtract.

    .venv/bin/python benchmarks/bench_convert.py --size-gb 1.0 --tp 2 --pp 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
from packft.ckpt.convert import mcore_to_hf, save_hf_as_mcore
kind, src, dst, tp, pp, cfg = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]
t0 = time.perf_counter()
if kind == "hf2mg":
    save_hf_as_mcore(src, dst, int(tp), int(pp))
elif kind == "mg2hf":
    mcore_to_hf(src, dst, hf_cfg_dir=Path(cfg))
seconds = time.perf_counter() - t0
# VmHWM: peak RSS of this process image (ru_maxrss would inherit the parent's through fork/exec)
status = Path("/proc/self/status").read_text()
rss = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1)}))
"""


def write_random_llama(out: Path, size_gb: float, pp: int, shard_mb: int = 500) -> dict:
    """Random bf16 Llama-3-style model of about ``size_gb``; returns shape facts."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    h, ffn, heads, kv, vocab = 1024, 2816, 16, 8, 32000
    hd = h // heads
    per_layer = 2 * (h * h + 2 * h * kv * hd + h * h + 3 * h * ffn + 2 * h)
    ends = 2 * (2 * vocab * h + h)
    layers = max(pp, round((size_gb * 1e9 - ends) / per_layer / pp) * pp)
    cfg = LlamaConfig(
        hidden_size=h,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    out.mkdir(parents=True)
    cfg.save_pretrained(out)
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def tensors():
        yield "model.embed_tokens.weight", rand(vocab, h)
        for i in range(layers):
            p = f"model.layers.{i}."
            yield p + "input_layernorm.weight", rand(h)
            yield p + "post_attention_layernorm.weight", rand(h)
            yield p + "self_attn.q_proj.weight", rand(heads * hd, h)
            yield p + "self_attn.k_proj.weight", rand(kv * hd, h)
            yield p + "self_attn.v_proj.weight", rand(kv * hd, h)
            yield p + "self_attn.o_proj.weight", rand(h, heads * hd)
            yield p + "mlp.gate_proj.weight", rand(ffn, h)
            yield p + "mlp.up_proj.weight", rand(ffn, h)
            yield p + "mlp.down_proj.weight", rand(h, ffn)
        yield "model.norm.weight", rand(h)
        yield "lm_head.weight", rand(vocab, h)

    shards: list[dict] = [{}]
    names, weight_map, total, size = [], {}, 0, 0
    for key, t in tensors():
        if size > shard_mb * 2**20:
            names.append(f"part-{len(names)}.safetensors")
            save_file(shards[-1], out / names[-1], metadata={"format": "pt"})
            shards[-1], size = {}, 0
        shards[-1][key] = t
        weight_map[key] = len(names)
        size += t.numel() * 2
        total += t.numel() * 2
    names.append(f"part-{len(names)}.safetensors")
    save_file(shards[-1], out / names[-1], metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: names[v] for k, v in weight_map.items()},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return {"model_bytes": total, "layers": layers, "hidden": h, "vocab": vocab, "dtype": "bf16"}


def run_child(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def identical(a: Path, b: Path) -> bool:
    """Every tensor of two HF directories equal, compared one tensor at a time."""
    import torch

    from packft.ckpt.io import HFReader

    ra, rb = HFReader(a), HFReader(b)
    return sorted(ra.keys()) == sorted(rb.keys()) and all(
        torch.equal(ra.get(k), rb.get(k))
        for k in ra.keys()  # noqa: SIM118
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="model size in GB (1e9 bytes)")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true", help="skip the tensor-by-tensor check")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: /tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_convert_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        facts = write_random_llama(root / "hf", args.size_gb, args.pp)
        result: dict = {**facts, "tp": args.tp, "pp": args.pp}
        result["write_input_seconds"] = round(time.perf_counter() - t0, 2)
        result["import_rss_mb"] = run_child("none", "-", "-", "0", "0", "-")["peak_rss_mb"]
        result["hf_to_mcore"] = run_child(
            "hf2mg", str(root / "hf"), str(root / "mg"), str(args.tp), str(args.pp), "-"
        )
        result["mcore_to_hf"] = run_child(
            "mg2hf", str(root / "mg"), str(root / "back"), "0", "0", str(root / "hf")
        )
        if not args.no_verify:
            result["round_trip_identical"] = identical(root / "hf", root / "back")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
