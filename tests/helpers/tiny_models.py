"""Tiny random Hugging Face causal LMs, shared by the converter and megatron-core interop tests.

One shape per feature the checkpoint converter must map: Llama 2 (multi-head attention, untied
embeddings), Llama 3 (GQA, tied, rope_theta 5e5), Mistral (head_dim 16, not hidden/heads), Qwen2
(QKV bias, tied; and an untied variant). Each test picks the depth and overrides it needs with
:func:`tiny`, e.g. ``tiny(LLAMA2, num_hidden_layers=2)``, and merges its own common settings (the
interop test raises initializer_range); every model stays a few dozen dims wide.
:func:`build_model` also randomizes norms and biases: HF initializes them to ones and
zeros, which would let a swapped or dropped tensor pass a parity check.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

COMMON: dict[str, Any] = dict(hidden_act="silu", max_position_embeddings=128, rms_norm_eps=1e-5)

# (transformers architecture prefix, config kwargs without num_hidden_layers)
LLAMA2 = (
    "Llama",
    dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
         vocab_size=64, tie_word_embeddings=False),
)  # fmt: skip
LLAMA3 = (
    "Llama",
    dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
         vocab_size=96, rope_theta=500000.0, tie_word_embeddings=True),
)  # fmt: skip
MISTRAL = (
    "Mistral",
    dict(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=4,
         head_dim=16, vocab_size=64, sliding_window=None, tie_word_embeddings=False),
)  # fmt: skip
QWEN2 = (
    "Qwen2",
    dict(hidden_size=32, intermediate_size=64, num_attention_heads=8, num_key_value_heads=4,
         vocab_size=64, rope_theta=1000000.0, tie_word_embeddings=True),
)  # fmt: skip
QWEN2_UNTIED = (
    "Qwen2",
    dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
         vocab_size=64, tie_word_embeddings=False),
)  # fmt: skip


def tiny(base: tuple[str, dict[str, Any]], **overrides: Any) -> tuple[str, dict[str, Any]]:
    """``base`` with some config kwargs added or replaced (a new dict; ``base`` is unchanged)."""
    arch, kwargs = base
    return arch, {**kwargs, **overrides}


def build_model(arch: str, config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A float32 ``{arch}ForCausalLM`` in eval mode from ``config`` (callers merge in COMMON)."""
    hf_config = getattr(transformers, f"{arch}Config")(**config)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{arch}ForCausalLM")(hf_config).eval()
    with torch.no_grad():  # random norms and biases too, so a swapped tensor cannot hide
        for key, p in model.named_parameters():
            if key.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif key.endswith(".bias"):
                p.normal_()
    return model
