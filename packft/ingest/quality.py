"""The input quality gate: refuse to build a dataset from input that is mostly (or all) garbage.

Every record is read and validated before anything is written, and rejects are counted by reason
(:mod:`packft.ingest.rejects`). Counting alone lets a wrong file, a wrong ``--handler-name`` or
random bytes end in a "successful" run that wrote an empty or near-empty dataset.
:func:`check_quality` turns the counts into a decision, used by both ``packft preprocess`` (after
tokenizing, before planning) and the ``pack-dataset`` flow (the ``quality_gate`` task, after
``validate``, before ``tokenize``); when it fails, nothing is written or published and the previous
dataset stays:

* no records at all (an empty file or folder)                    -> fail
* no valid record                                                -> fail, whatever the threshold
* valid / read < ``min_valid_fraction`` (``--min-valid-fraction``, default 0.5) -> fail

The message is one line: the counts, the top reject reasons, one example reject and where the
rejects file is, e.g. ``quality gate: 2 of 1,000 records are valid (0.2% < --min-valid-fraction
0.5); rejected: invalid_json 998; e.g. d.jsonl:0: invalid_json: ...; all rejects: /c/x.jsonl;
nothing was written``. ``--min-valid-fraction 0`` keeps only the zero-valid rule.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packft.core.errors import PackftError

DEFAULT_MIN_VALID_FRACTION = 0.5
TOP_REASONS = 3


class QualityGateError(PackftError):
    """The input has too few valid records to build a dataset from (exit 1)."""


@dataclass(frozen=True)
class InputCounts:
    """Records read from one input file, valid, and rejected per reason."""

    file: str
    total: int
    valid: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    rejects_path: str | None = None
    """The JSONL holding this file's rejected records, when there is one."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputCounts:
        """From a validate/tokenize summary (``total`` or ``samples_in``, ``valid``, ...)."""
        total = data["total"] if "total" in data else data.get("samples_in", 0)
        return cls(
            file=str(data.get("file", "")),
            total=int(total or 0),
            valid=int(data.get("valid") or 0),
            rejected=dict(data.get("rejected") or {}),
            rejects_path=data.get("rejects"),
        )


@dataclass(frozen=True)
class GateResult:
    """What the gate saw (returned when it passes; the same numbers are in the error)."""

    total: int
    valid: int
    rejected: dict[str, int]
    min_valid_fraction: float

    @property
    def valid_fraction(self) -> float:
        return self.valid / self.total if self.total else 0.0


def _first_reject(counts: Iterable[InputCounts]) -> str | None:
    """The ``message`` of the first rejected record on disk (bounded read), if any."""
    for item in counts:
        if not item.rejects_path or not Path(item.rejects_path).is_file():
            continue
        with open(item.rejects_path, encoding="utf-8", errors="replace") as handle:
            line = handle.readline(1 << 16)
        try:
            message = json.loads(line).get("message")
        except (ValueError, AttributeError):
            continue
        if message:
            return message if len(message) <= 160 else message[:157] + "..."
    return None


def _failure(result: GateResult, counts: list[InputCounts], why: str) -> QualityGateError:
    parts = [f"quality gate: {why}"]
    if result.rejected:
        top = sorted(result.rejected.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
        more = len(result.rejected) - len(top)
        parts.append(
            "rejected: " + ", ".join(f"{reason} {n:,}" for reason, n in top)
            + (f" (+{more} more reasons)" if more > 0 else "")
        )  # fmt: skip
        example = _first_reject(c for c in counts if c.rejected)
        if example:
            parts.append(f"e.g. {example}")
        files = [c.rejects_path for c in counts if c.rejected and c.rejects_path]
        if files:
            parts.append(
                f"all rejects: {files[0]}"
                + (f" (+{len(files) - 1} files)" if len(files) > 1 else "")
            )
    parts.append("nothing was written (the previous dataset is unchanged)")
    return QualityGateError("; ".join(parts))


def check_quality(
    counts: Iterable[InputCounts | Mapping[str, Any]],
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
) -> GateResult:
    """Pass or raise, from the per-file counts of one run (see the module docstring).

    Args:
        counts: one entry per input file (:class:`InputCounts` or a summary dict).
        min_valid_fraction: the smallest acceptable ``valid / read`` over all files.

    Returns:
        The totals, when the input passes.

    Raises:
        QualityGateError: no records, no valid record, or too small a valid fraction.
    """
    items = [c if isinstance(c, InputCounts) else InputCounts.from_dict(c) for c in counts]
    rejected: Counter[str] = Counter()
    for item in items:
        rejected.update(item.rejected)
    result = GateResult(
        total=sum(c.total for c in items),
        valid=sum(c.valid for c in items),
        rejected=dict(rejected),
        min_valid_fraction=min_valid_fraction,
    )
    names = ", ".join(c.file for c in items[:3]) + (" ..." if len(items) > 3 else "")
    if result.total == 0:
        raise _failure(result, items, f"no records in {names or 'the input'} (empty file?)")
    if result.valid == 0:
        raise _failure(result, items, f"none of {result.total:,} records is valid")
    if result.valid_fraction < min_valid_fraction:
        raise _failure(
            result,
            items,
            f"only {result.valid:,} of {result.total:,} records are valid "
            f"({result.valid_fraction:.1%} < --min-valid-fraction {min_valid_fraction:g})",
        )
    return result
