"""A neat-packed Alpaca set and a tiny random Llama on disk, for the trainer's feature tests.

Real Alpaca records (llama2 template and tokenizer) through `packft preprocess`, rows of
``seq`` tokens, and a 2-layer, 32-dim Llama with the tokenizer's 32k vocabulary (the vocab
projection dominates its cost; a step takes well under a second on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from packft.dataset.indexed import open_sft_dataset

REPO = Path(__file__).resolve().parents[2]


def make_sft_setup(
    root: Path,
    tokenizer: Path,
    alpaca_path: Path,
    samples: int = 32,
    seq: int = 256,
    initializer_range: float = 0.2,
) -> dict[str, Any]:
    """``{root}/packed`` (neat-packed), ``{root}/model`` (HF); returns their paths and sizes.

    ``initializer_range``: 0.2 gives losses that move visibly in a few steps; 0.02 is HF's
    default (tests that only need a model that runs).
    """
    from packft.preprocess.config import PreprocessConfig
    from packft.preprocess.steps import preprocess

    records = json.loads(alpaca_path.read_text())
    short = [r for r in records if len(r["instruction"] + r["input"] + r["output"]) < 400]
    (root / "alpaca.json").write_text(json.dumps(short[:samples]))
    preprocess(
        PreprocessConfig(
            input=str(root / "alpaca.json"), tokenizer_name_or_path=str(tokenizer),
            prompt_type="llama2", append_eod=True, cache_dir=str(root / "cache"),
            output_prefix=str(root / "packed"), pack=True, neat_pack=True, seq_length=seq,
        )
    )  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=initializer_range)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "model")
    rows = len(open_sft_dataset(root / "packed")["input_ids"])
    return {"root": root, "rows": rows, "tok": tokenizer, "seq": seq}


def torchrun_train(
    root: Path, nproc: int, save: str, extra: list[str]
) -> subprocess.CompletedProcess:
    """``packft train`` on ``nproc`` gloo ranks (``torch.distributed.run``, CPU) over the set and
    model :func:`make_sft_setup` wrote to ``root``, saving to ``root/save``: global batch 2,
    micro batch 1, 3 steps, lr 1e-3, no tracking, then ``extra``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "packft.cli", "train",
           "--data-path", str(root / "packed"), "--model", str(root / "model"),
           "--save", str(root / save), "--global-batch-size", "2", "--micro-batch-size", "1",
           "--train-iters", "3", "--lr", "1e-3", "--no-tracking", "--device", "cpu",
           *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
