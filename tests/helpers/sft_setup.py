"""A neat-packed Alpaca set and a tiny random Llama on disk, for the trainer's feature tests.

Real Alpaca records (llama2 template and tokenizer) through `packft preprocess`, rows of
``seq`` tokens, and a 2-layer, 32-dim Llama with the tokenizer's 32k vocabulary (the vocab
projection dominates its cost; a step takes well under a second on CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from packft.dataset.indexed import open_sft_dataset


def make_sft_setup(
    root: Path, tokenizer: Path, alpaca_path: Path, samples: int = 32, seq: int = 256
) -> dict[str, Any]:
    """``{root}/packed`` (neat-packed), ``{root}/model`` (HF); returns their paths and sizes."""
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
                         max_position_embeddings=512, initializer_range=0.2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "model")
    rows = len(open_sft_dataset(root / "packed")["input_ids"])
    return {"root": root, "rows": rows, "tok": tokenizer, "seq": seq}
