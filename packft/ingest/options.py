"""What decides which records of a file are kept, rejected or repaired: :class:`ValidateOptions`.

The one definition of "same validation work": the CLI (inside its tokenize step) and the
``validate`` Prefect task both read records through these options, and the task's cache key is
:meth:`ValidateOptions.cache_key` plus the input's content digest. Built from a
:class:`~packft.preprocess.config.PreprocessConfig` only by ``PreprocessConfig.validate_options``
(the projection of its ``tokenize_options``), never field by field elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from packft.core.fingerprint import json_digest
from packft.ingest.limits import DEFAULT_MAX_RECORD_BYTES, RecordLimits
from packft.ingest.rejects import ValidationSummary

VALIDATE_FORMAT = 1
"""Bumped when the same options would keep or reject other records (a rule changed)."""


@dataclass(frozen=True)
class ValidateOptions:
    """Every setting that changes which records are valid; nothing else."""

    fmt: str = "alpaca"
    """``alpaca`` | ``sharegpt`` | ``openai`` (from ``--handler-name``)."""
    map_keys: dict[str, Any] | None = None
    """MindSpeed ``--map-keys`` renames."""
    repair: tuple[str, ...] = ()
    """``--repair`` kinds, canonical and in application order (:func:`parse_repairs`)."""
    on_invalid: Literal["skip", "fail"] = "skip"
    """``fail`` raises on the first invalid record (a result made with ``skip`` is no answer
    for ``fail``)."""
    max_record_bytes: int = field(default=DEFAULT_MAX_RECORD_BYTES)
    """Records larger than this are rejected as ``too_large`` (:mod:`packft.ingest.limits`)."""

    def __post_init__(self) -> None:
        from packft.ingest.repairs import parse_repairs

        object.__setattr__(self, "repair", tuple(parse_repairs(self.repair)))  # canonical

    def recorded(self) -> dict[str, Any]:
        """The options as plain JSON data (what keys and sidecars record)."""
        return {**asdict(self), "repair": list(self.repair)}

    def cache_key(self) -> str:
        """Stable digest of everything that changes the validation of a file."""
        return json_digest({"stage": "validate", "format": VALIDATE_FORMAT, **self.recorded()})

    def validate(self, path: Path, rejects_path: Path | None = None) -> ValidationSummary:
        """Read and check every record of ``path`` (:func:`packft.ingest.formats.validate_file`)."""
        from packft.ingest.formats import validate_file

        limits = RecordLimits(max_bytes=self.max_record_bytes)
        return validate_file(
            Path(path), self.fmt, self.map_keys, rejects_path, self.on_invalid,
            repair=self.repair, limits=limits,
        )  # fmt: skip
