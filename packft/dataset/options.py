"""What decides the written files beyond the shards and the plan: :class:`WriteOptions`.

The identity of a written dataset is :func:`dataset_key` of the plan's key (which covers the
shards, hence inputs, tokenizer and tokenize options, and the pack options) and these options.
The ``pack-dataset`` flow names its version directories and keys its ``write`` task with it.
``PreprocessConfig.write_options()`` is the only place a config becomes write options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from packft import __version__
from packft.core.fingerprint import json_digest

WRITE_FORMAT = 1
"""Bumped when the same shards, plan and options would give other bytes."""


@dataclass(frozen=True)
class WriteOptions:
    """Every setting of the write step that changes the files; nothing else."""

    name: str
    """File name prefix (``{name}_packed_{key}_document.{bin,idx}``)."""
    pack: bool = True
    """Rows are padded to ``seq_length`` (False: one unpadded sample per sequence)."""
    neat_pack: bool = False
    """attention_mask holds the 1-based sample index per row (else all ones)."""
    seq_length: int | None = None
    """Row length; None: the longest planned sample + 1."""
    dtype: Literal["int32", "optimal"] = "int32"
    """input_ids dtype (``optimal``: uint16 when the vocabulary fits)."""

    def recorded(self) -> dict[str, Any]:
        return asdict(self)

    def cache_key(self) -> str:
        """Stable digest of everything the write step adds to the shards and the plan."""
        return json_digest({"stage": "write", "format": WRITE_FORMAT, **self.recorded()})


def dataset_key(plan_key: str, options: WriteOptions) -> str:
    """The identity of a written dataset: its plan (shards + pack options) and write options."""
    return json_digest({"plan": plan_key, "options": options.cache_key(), "packft": __version__})
