"""What decides a tokenized shard's bytes: :class:`TokenizeOptions`, the tokenizer fingerprint,
and the shard key built from them.

One definition of "same tokenize work", used by everything that reuses a shard:

* ``packft preprocess`` names its cached shard ``{cache_dir}/shards/{shard_key[:40]}.arrow``;
* the ``tokenize`` Prefect task's cache key is the same :func:`shard_key` (plus the task
  function's own source);
* the shard header records ``options.recorded()`` and the same tokenizer fingerprint.

``PreprocessConfig.tokenize_options()`` is the only place a config becomes options: it derives
the truncation budget, ``keep_markers`` and MindSpeed's neat-pack pair cut from ``--overlong``,
``--neat-pack`` and ``--pack-algorithm``, so e.g. bfd <-> ffd (which only changes the plan)
gives the same options and reuses the shard, while knapsack + drop + neat-pack (MindSpeed's
per-pair cut) does not.

The tokenizer is identified by content (:func:`tokenizer_fingerprint`: every file of its
directory), never by its path, so a copied tokenizer reuses shards and an edited one does not.
A hub id that is not a local path is identified by its name (the files are not known before
the tokenizer is loaded).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from packft import __version__
from packft.core.fingerprint import json_digest, tree_sha256
from packft.ingest.limits import DEFAULT_MAX_RECORD_BYTES
from packft.ingest.options import ValidateOptions
from packft.ingest.repairs import parse_repairs

SHARD_FORMAT = 3
"""In every shard key: 2 = header with pad/eos ids and vocab size, neat-pack pair cut;
3 = whole options recorded, tokenizer identified by :func:`tokenizer_fingerprint`."""


@dataclass(frozen=True)
class TokenizeOptions:
    """How one input file becomes a shard; every field except ``workers`` is in the shard key."""

    template: str = "empty"
    """Chat template name (``--prompt-type``)."""
    fmt: str = "alpaca"
    """Input layout: ``alpaca`` | ``sharegpt`` | ``openai`` (from ``--handler-name``)."""
    map_keys: dict[str, Any] | None = None
    """MindSpeed ``--map-keys`` renames."""
    repair: tuple[str, ...] = ()
    """``--repair`` kinds (canonical, in application order): repaired records are samples too."""
    on_invalid: Literal["skip", "fail"] = "skip"
    """``fail`` stops at the first invalid record (a ``skip`` shard is no answer for ``fail``)."""
    max_record_bytes: int = field(default=DEFAULT_MAX_RECORD_BYTES)
    """Records larger than this are rejected as ``too_large`` before tokenizing."""
    seq_length: int | None = None
    """Truncation budget (MindSpeed ``--seq-length``); None means MindSpeed's 100000."""
    append_eod: bool = False
    """Append eos to input_ids and labels of every sample (MindSpeed ``--append-eod``)."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Samples longer than seq_length: cut with MindSpeed's rule, or drop them."""
    keep_markers: bool = False
    """Cut inside the user/assistant text and keep every template marker of the kept turns
    (``--overlong truncate``; :mod:`packft.tokenize.truncation`) instead of MindSpeed's cut."""
    pair_cutoff: int | None = None
    """Then cut every (source, target) pair longer than this on its own with
    :func:`~packft.tokenize.truncation.infer_seqlen` (MindSpeed's ``--neat-pack``)."""
    batch_size: int = 2048
    """Conversations per encode call and per record batch."""
    workers: int = 1
    """Processes; the output does not depend on it (not in the key)."""

    def __post_init__(self) -> None:
        problems = []
        if self.seq_length is not None and self.seq_length < 2:
            problems.append(f"seq_length must be >= 2 or None, got {self.seq_length}")
        if self.pair_cutoff is not None and self.pair_cutoff < 1:
            problems.append(f"pair_cutoff must be >= 1 or None, got {self.pair_cutoff}")
        if self.overlong not in ("truncate", "drop"):
            problems.append(f"overlong must be 'truncate' or 'drop', got {self.overlong!r}")
        if self.keep_markers and self.pair_cutoff is not None:
            problems.append("keep_markers does not combine with pair_cutoff (MindSpeed's cut)")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.max_record_bytes < 1:
            problems.append(f"max_record_bytes must be >= 1, got {self.max_record_bytes}")
        if problems:
            raise ValueError("invalid tokenize options: " + "; ".join(problems))
        # canonical kinds in application order: "a,b", ["b", "a"] and "a_b" are the same work
        object.__setattr__(self, "repair", tuple(parse_repairs(self.repair)))

    def recorded(self) -> dict[str, Any]:
        """The options that determine the output bytes (not ``workers``), as JSON data."""
        data = {k: v for k, v in asdict(self).items() if k != "workers"}
        return {**data, "repair": list(self.repair)}

    def validation(self) -> ValidateOptions:
        """The part that decides which records are valid (the ``validate`` step's options)."""
        return ValidateOptions(
            fmt=self.fmt, map_keys=self.map_keys, repair=self.repair,
            on_invalid=self.on_invalid, max_record_bytes=self.max_record_bytes,
        )  # fmt: skip

    def cache_key(self, shard_format: int = SHARD_FORMAT) -> str:
        """Stable digest of everything (but ``workers``) that changes a shard's bytes."""
        return json_digest({"stage": "tokenize", "format": shard_format, **self.recorded()})


def tokenizer_fingerprint(path_or_id: str | Path) -> str:
    """THE tokenizer identity: :func:`~packft.core.fingerprint.tree_sha256` of a local
    directory (or file); for a hub id that is not a local path, a digest of its name."""
    local = Path(path_or_id).expanduser()
    if local.exists():
        return tree_sha256(local)
    return hashlib.sha256(f"hub:{path_or_id}".encode()).hexdigest()


def shard_key(
    input_sha256: str,
    tokenizer_sha256: str,
    options: TokenizeOptions,
    shard_format: int = SHARD_FORMAT,
) -> str:
    """The identity of one shard: input content, tokenizer content, options, packft version
    (and the shard format, bumped when the same inputs would give other shard bytes)."""
    return json_digest(
        {
            "input": input_sha256,
            "tokenizer": tokenizer_sha256,
            "options": options.cache_key(shard_format),
            "packft": __version__,
        }
    )
