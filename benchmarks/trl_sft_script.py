"""What a TRL user writes to get the same packed SFT data: ``datasets`` map + ``trl.pack_dataset``.

The job is the seed command's: Alpaca records, the llama2 template
(``[INST] {instruction}\\n{input} [/INST] {output}``), bos/eos, one extra eos (``--append-eod``),
prompt tokens masked in the labels, samples cut to ``--seq-length``, then best-fit-decreasing
packing into rows of ``--seq-length`` tokens (TRL's default ``bfd``), saved with
``save_to_disk``. It uses the fast tokenizer's batched call through ``Dataset.map(batched=True)``
(the idiomatic way; ``num_proc`` from ``--num-proc``), and a fresh datasets cache so nothing is
reused between runs. Prints one JSON line: rows, tokens, seconds per step.

Bench-only (``pip install -e '.[bench]'``): ``benchmarks/bench_preprocess.py`` runs it beside
``packft preprocess`` and the tokenizer floor.

    .venv/bin/python benchmarks/trl_sft_script.py INPUT.json TOKENIZER_DIR OUT_DIR [--seq-length 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("tokenizer")
    parser.add_argument("output")
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="trl_bench_cache_", dir=os.path.dirname(args.output) or None)
    os.environ["HF_DATASETS_CACHE"] = cache
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import pack_dataset

    lap("import")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    ds = load_dataset("json", data_files=args.input, split="train", cache_dir=cache)
    lap("load")
    bos, eos, limit = tok.bos_token_id, tok.eos_token_id, args.seq_length

    def encode(batch: dict) -> dict:
        prompts = [
            f"[INST] {q}{chr(10) + i if i else ''} [/INST]"
            for q, i in zip(batch["instruction"], batch["input"], strict=True)
        ]
        p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        r_ids = tok(batch["output"], add_special_tokens=False)["input_ids"]
        input_ids, labels = [], []
        for p, r in zip(p_ids, r_ids, strict=True):
            source, target = [bos, *p], [*r, eos, eos]
            ids = (source + target)[:limit]
            input_ids.append(ids)
            labels.append(([-100] * len(source) + target)[:limit])
        return {"input_ids": input_ids, "labels": labels}

    ds = ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=args.num_proc)
    lap("tokenize")
    packed = pack_dataset(ds, args.seq_length, strategy="bfd")
    lap("pack")
    packed.save_to_disk(args.output)
    lap("write")
    tokens = sum(len(x) for x in ds["input_ids"])
    print(json.dumps({"rows": len(packed), "samples": len(ds), "tokens": tokens,
                      "step_seconds": seconds}))  # fmt: skip


if __name__ == "__main__":
    main()
