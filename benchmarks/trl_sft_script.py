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
from itertools import pairwise


def step_seconds(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds each step took, from ``(step just finished, perf_counter)`` marks."""
    return {step: round(end - start, 3) for (_, start), (step, end) in pairwise(marks)}


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
    marks = [("start", time.perf_counter())]  # (step just finished, when)

    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import pack_dataset

    marks.append(("import", time.perf_counter()))
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    ds = load_dataset("json", data_files=args.input, split="train", cache_dir=cache)
    marks.append(("load", time.perf_counter()))
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
    marks.append(("tokenize", time.perf_counter()))
    packed = pack_dataset(ds, args.seq_length, strategy="bfd")
    marks.append(("pack", time.perf_counter()))
    packed.save_to_disk(args.output)
    marks.append(("write", time.perf_counter()))
    tokens = sum(len(x) for x in ds["input_ids"])
    print(json.dumps({"rows": len(packed), "samples": len(ds), "tokens": tokens,
                      "step_seconds": step_seconds(marks)}))  # fmt: skip


if __name__ == "__main__":
    main()
