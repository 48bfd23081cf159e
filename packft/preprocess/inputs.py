"""Per-input results of ``packft preprocess`` that need no cache: a record-by-record check of an
input (:func:`validate_source`, no tokenizing), where a shard keeps its rejected records, and a
shard's :class:`~packft.preprocess.results.TokenizeResult` from its stored stats.
:mod:`packft.preprocess.steps` builds on these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from packft.preprocess.config import PreprocessConfig
from packft.preprocess.results import InputFile, RecordCounts, TokenizeResult, ValidationResult
from packft.tokenize.counts import TokenCounts

if TYPE_CHECKING:
    from packft.ingest.options import ValidateOptions


def rejects_path_for(shard: Path) -> Path:
    """Where :func:`tokenize_to_shard` keeps a shard's rejected records (cached with the shard);
    :func:`write` concatenates them into ``{prefix}.rejects.jsonl``."""
    return Path(shard).with_suffix(".rejects.jsonl")


def validate_source(
    source: InputFile, options: ValidateOptions, rejects_path: Path
) -> ValidationResult:
    """Read and check every record of one input without tokenizing (a cheap pre-flight).

    With ``on_invalid="fail"`` the first invalid record raises ``InvalidRecordError``. The
    rejects file exists afterwards, empty when nothing was rejected.
    """
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    summary = options.validate(source.path, rejects_path)
    rejects_path.touch()
    return ValidationResult(file=source.label, sha256=source.sha256,
                            counts=RecordCounts(**summary.to_dict()), rejects=rejects_path)  # fmt: skip


def validate_input(path: Path, cfg: PreprocessConfig, rejects_path: Path | None = None) -> Any:
    """:func:`validate_source`'s check for one path and config; returns the
    :class:`packft.ingest.rejects.ValidationSummary` (total, valid, rejected per reason)."""
    rejects = rejects_path or Path(f"{cfg.prefix}.{Path(path).name}.rejects.jsonl")
    return cfg.validate_options().validate(Path(path), rejects)


def shard_result(source: InputFile, shard: Path, key: str, stats: dict[str, Any]) -> TokenizeResult:
    """A shard's :class:`TokenizeResult` from its stats (in memory after tokenizing, or the
    shard's stored stats when reused); a shard from before ``length_counts`` gives its stored
    lengths instead."""
    import numpy as np

    from packft.tokenize.shards import read_lengths

    found = stats.get("length_counts")
    if found is None:
        values, counts = np.unique(read_lengths(shard), return_counts=True)
        found = dict(zip(values.tolist(), counts.tolist(), strict=True))
    counts = RecordCounts(total=int(stats.get("samples_in", 0)), valid=int(stats.get("valid", 0)),
                          rejected=dict(stats.get("rejected") or {}),
                          repaired=dict(stats.get("repaired") or {}))  # fmt: skip
    figures = [name for name in TokenCounts.model_fields if name != "length_counts"]
    return TokenizeResult(
        file=source.label, sha256=source.sha256, shard=shard, shard_key=key,
        rejects=rejects_path_for(shard), counts=counts,
        **{k: int(stats.get(k) or 0) for k in figures},
        length_counts={int(k): int(v) for k, v in found.items()},
        lengths_before_cut="length_counts" in stats,
    )  # fmt: skip
