"""Flag values of `packft train` that :mod:`packft.train.config` checks and the feature modules
use: Megatron's ``--split`` weights and the LoRA target names (MindSpeed's and HF's). A leaf
module (it imports nothing of packft), so the config can validate with it and
:mod:`packft.train.split` / :mod:`packft.train.lora` can take the config without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

TARGETS: dict[str, tuple[str, ...]] = {
    "linear_qkv": ("q_proj", "k_proj", "v_proj"),  # Megatron's fused query/key/value
    "linear_proj": ("o_proj",),  # attention output
    "linear_fc1": ("gate_proj", "up_proj"),  # fused SwiGLU gate/up
    "linear_fc2": ("down_proj",),
}
"""MindSpeed-LLM (Megatron) LoRA target -> the HF modules it covers."""

HF_TARGETS = tuple(name for names in TARGETS.values() for name in names)


def resolve_targets(names: Iterable[str]) -> list[str]:
    """HF module names for MindSpeed and/or HF target names, in table order, once each.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    names = list(names)
    unknown = [n for n in names if n not in TARGETS and n not in HF_TARGETS]
    if unknown:
        raise ValueError(
            f"--lora-target-modules: unknown {', '.join(unknown)}; valid: MindSpeed names "
            f"{' '.join(TARGETS)} or HF names {' '.join(HF_TARGETS)}"
        )
    wanted = {hf for n in names for hf in TARGETS.get(n, (n,))}
    return [n for n in HF_TARGETS if n in wanted]


def parse_split(text: str) -> tuple[float, float, float]:
    """Megatron's ``--split``: up to three non-negative weights, ``,`` or ``/`` separated.

    Raises:
        ValueError: not numbers, negative, more than three, or no training weight.
    """
    pieces = [p for p in re.split(r"[,/]", str(text)) if p.strip()]
    try:
        weights = [float(p) for p in pieces]
    except ValueError:
        raise ValueError(
            f"--split {text!r}: expected up to three numbers, e.g. 98,2,0 (train,valid,test)"
        ) from None
    if not 1 <= len(weights) <= 3 or any(w < 0 or not np.isfinite(w) for w in weights):
        raise ValueError(
            f"--split {text!r}: expected up to three non-negative weights, e.g. 98,2,0"
        )
    weights += [0.0] * (3 - len(weights))
    if weights[0] <= 0:
        raise ValueError(f"--split {text!r}: the training weight (first) must be positive")
    return weights[0], weights[1], weights[2]
