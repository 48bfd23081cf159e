"""Tokenize throughput: packft's tokenize step against a plain batched fast-tokenizer encode.

Builds two JSON-lines inputs from tests/assets, each repeated to ``--samples`` records:
``alpaca`` (the en + zh Alpaca demos) and ``sharegpt`` (the glaive tool-call and FastChat
files); the k-th repeat of a record gets " (k)" appended to its first user text, so repeats are
distinct strings (the tokenize step dedupes identical pieces within a batch, which would
otherwise flatter it). For each it runs, every measurement in a fresh subprocess so peak RSS is its own:

* ``floor``: one ``tokenizer(texts, add_special_tokens=False)`` call over one string per sample
  (the sample's system, tools and turn texts joined by newlines), Rust using all cores. Its
  output for 200k samples is several GiB of Python lists, so ``chunked_seconds`` also reports
  the bounded-memory equivalent: the Rust backend's ``encode_batch_fast`` + ``.ids`` per 2048
  texts (what packft itself calls).
* ``workers_1``, ``workers_2``: :func:`packft.tokenize.encode.tokenize_file` with the ``llama2``
  template, ``--append-eod``, ``--seq-length 4096`` (read, validate, render, encode, assemble,
  write the shard), start to end, including process start-up of the workers.

Prints ONE JSON object: seconds, CPU seconds, samples/s, tokens/s and peak RSS (MiB; the process
itself and, separately, its largest child) per dataset and configuration, ratios to the floor
(wall and CPU), and the 1-minute load average around each run: the development box is shared,
so ``--repeat N`` keeps the fastest of N runs.
``--samples 20000`` is the quick development mode.

Usage: ``.venv/bin/python benchmarks/bench_tokenize.py [--samples 200000] [--workers 1,2]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"  # see its MANIFEST.md
TOKENIZER = ASSETS / "llama2-tokenizer"
DATASETS = {
    "alpaca": (
        "alpaca",
        ["alpaca/llamafactory_alpaca_en_demo.json", "alpaca/llamafactory_alpaca_zh_demo.json"],
    ),
    "sharegpt": (
        "sharegpt",
        [
            "sharegpt/llamafactory_glaive_toolcall_en_demo.json",
            "sharegpt/fastchat_dummy_conversation_with_system.json",
        ],
    ),
}


def _rss_mib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": round(own, 1), "peak_rss_child_mib": round(child, 1)}


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_input(name: str, samples: int, out_dir: Path) -> Path:
    """``samples`` records cycled from the dataset's shared files, as JSON lines."""
    records = []
    for rel in DATASETS[name][1]:
        records.extend(json.loads((ASSETS / rel).read_text()))
    path = out_dir / f"{name}_{samples}.jsonl"
    with path.open("w") as f:
        for i, rec in enumerate(itertools.islice(itertools.cycle(records), samples)):
            copy = i // len(records)
            if copy:  # make repeats distinct texts, so no step can dedupe whole samples
                rec = json.loads(json.dumps(rec))
                if "conversations" in rec:
                    rec["conversations"][0]["value"] += f" ({copy})"
                else:
                    rec["instruction"] += f" ({copy})"
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def _texts(path: Path) -> list[str]:
    out = []
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            if "conversations" in r:
                parts = [r.get("system", ""), r.get("tools", "")]
                parts += [m["value"] for m in r["conversations"]]
            else:
                parts = [r["instruction"], r["input"], r["output"]]
            out.append("\n".join(p for p in parts if p))
    return out


def child_floor(path: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    texts = _texts(path)
    t0, c0 = time.perf_counter(), _cpu()
    enc = tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    tokens = sum(map(len, enc))
    del enc
    backend = tok._tokenizer
    t0 = time.perf_counter()
    for i in range(0, len(texts), 2048):
        ids = [
            e.ids for e in backend.encode_batch_fast(texts[i : i + 2048], add_special_tokens=False)
        ]
    del ids
    chunked = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": round(cpu, 2),
        "chunked_seconds": chunked,
        "samples": len(texts),
        "tokens": tokens,
    }


def child_tokenize(path: Path, fmt: str, workers: int, out_dir: Path) -> dict:
    from packft.tokenize.encode import TokenizeOptions, tokenize_file
    from packft.tokenize.templates import load_tokenizer

    load_tokenizer(TOKENIZER, "llama2")  # import transformers untimed, as the floor does
    opts = TokenizeOptions(seq_length=4096, append_eod=True, workers=workers)
    t0, c0 = time.perf_counter(), _cpu()
    stats = tokenize_file(
        path,
        out_dir / f"{path.stem}_w{workers}.arrow",
        fmt=fmt,
        tokenizer_path=str(TOKENIZER),
        template="llama2",
        options=opts,
    )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": round(_cpu() - c0, 2),
        "samples": stats.valid,
        "tokens": stats.tokens,
        "rejected": sum(stats.rejected.values()),
        "truncated": stats.truncated,
    }


def _run_child(args: list[str]) -> dict:
    """One measurement in a fresh interpreter; records the machine's load average around it."""
    cmd = [sys.executable, __file__, "--child", *args]
    before = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--datasets", default="alpaca,sharegpt")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per measurement; the fastest is kept"
    )
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, path, *rest = args.child
        if kind == "floor":
            result = child_floor(Path(path))
        else:
            result = child_tokenize(Path(path), rest[0], int(rest[1]), Path(rest[2]))
        result.update(_rss_mib())
        print(json.dumps(result))
        return

    report: dict = {
        "samples": args.samples,
        "tokenizer": "llama2",
        "template": "llama2",
        "cpus": len(os.sched_getaffinity(0)),
    }
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        tmp_dir = Path(tmp)
        for name in args.datasets.split(","):
            fmt = DATASETS[name][0]
            path = build_input(name, args.samples, tmp_dir)
            floor = _best(["floor", str(path)], args.repeat)
            entry: dict = {"floor": _rates(floor)}
            for w in (int(x) for x in args.workers.split(",")):
                res = _best(["tokenize", str(path), fmt, str(w), str(tmp_dir)], args.repeat)
                res = _rates(res)
                res["x_floor"] = round(res["seconds"] / floor["seconds"], 2)
                res["x_floor_cpu"] = round(res["cpu_seconds"] / floor["cpu_seconds"], 2)
                res["x_floor_chunked"] = round(res["seconds"] / floor["chunked_seconds"], 2)
                entry[f"workers_{w}"] = res
            report[name] = entry
    print(json.dumps(report))


def _best(args: list[str], repeat: int) -> dict:
    """The fastest of ``repeat`` runs (the box is shared: slower runs measure the neighbours)."""
    runs = [_run_child(args) for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return best


def _rates(res: dict) -> dict:
    res = dict(res)
    res["samples_per_s"] = round(res["samples"] / res["seconds"], 1)
    res["tokens_per_s"] = round(res["tokens"] / res["seconds"], 1)
    res["seconds"] = round(res["seconds"], 3)
    if "chunked_seconds" in res:
        res["chunked_seconds"] = round(res["chunked_seconds"], 3)
    return res


if __name__ == "__main__":
    main()
