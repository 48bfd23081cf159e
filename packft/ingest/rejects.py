"""Rejected records are counted, explained and kept: the rejects JSONL and the validation summary.

Each rejected record becomes one line of the rejects file::

    {"source": "data/alpaca.json", "row": 17, "reason": "empty_answer",
     "detail": "the assistant turn is empty", "message": "data/alpaca.json:18: empty_answer: ...",
     "record": {...the row as read...}}

``row`` is 0-based, like ``source_row`` in the shards and the plan; the number in ``message`` is
the 1-based record number a person counts: the line of a JSON-lines or text file (blank lines
of a JSON-lines file are skipped), the element of a JSON list, the data row of a CSV or table.
``message`` is :func:`format_reject` ``(source, row, reason, detail)``; with
``on_invalid="fail"`` the same text is the :class:`InvalidRecordError` message, so a failed run
and a skipped run name a bad record identically. The file is written to a temporary name and
renamed (after fsync) when the log closes; it exists only when something was rejected, and a stale
one from an earlier run is removed, so its presence alone means "this run rejected records".
A crash (any exception other than :class:`InvalidRecordError`) discards the partial file.
Reason codes are listed in :mod:`packft.ingest.formats`.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydantic import Field

from packft.core.atomic import Stage
from packft.core.results import Result

ON_INVALID = ("skip", "fail")


class InvalidRecord(Exception):
    """Why one record cannot be used: a stable snake_case ``reason`` and a human ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidRecordError(ValueError):
    """Raised in ``on_invalid="fail"`` mode; the message is the rejects-file ``message``."""

    def __init__(self, message: str, source: str, row: int, reason: str, detail: str) -> None:
        super().__init__(message)
        self.source, self.row, self.reason, self.detail = source, row, reason, detail


def format_reject(source: str, row: int, reason: str, detail: str) -> str:
    """``source:N: reason: detail`` with N = ``row + 1`` (1-based), the one spelling of a
    rejected record everywhere."""
    return f"{source}:{row + 1}: {reason}: {detail}"


class ValidationSummary(Result):
    """Counts for logging: records read, kept, rejected per reason code, repaired per kind (the
    one definition of these fields: ``packft.preprocess.RecordCounts`` derives from it)."""

    total: int
    valid: int
    rejected: dict[str, int] = Field(default_factory=dict)
    repaired: dict[str, int] = Field(default_factory=dict)

    @property
    def num_rejected(self) -> int:
        """Sum over reasons (equals ``total - valid``)."""
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON stats and tracking."""
        return {
            "total": self.total,
            "valid": self.valid,
            "rejected": dict(self.rejected),
            "repaired": dict(self.repaired),
        }

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        repairs = ", ".join(f"{k}={v}" for k, v in sorted(self.repaired.items()))
        return (
            f"{self.total} records: {self.valid} valid, {self.num_rejected} rejected"
            + (f" ({reasons})" if reasons else "")
            + (f"; repaired: {repairs}" if repairs else "")
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


def _record(record: Any) -> Any:
    from packft.ingest.stream import BadRow  # local: sources must not depend on this module

    return record.text if isinstance(record, BadRow) else record


class RejectLog(AbstractContextManager["RejectLog"]):
    """Context manager collecting rejected records of one run (see the module docstring).

    Args:
        path: rejects JSONL to write, or None to only count.
        on_invalid: ``"skip"`` (log and continue) or ``"fail"`` (raise on the first one).
    """

    def __init__(self, path: Path | str | None, on_invalid: str = "skip") -> None:
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.path = Path(path) if path is not None else None
        self.on_invalid = on_invalid
        self.counts: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()  # kept records per --repair kind that changed them
        self.total = 0
        self.valid = 0
        self._handle: IO[str] | None = None
        self._stage: Stage | None = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, InvalidRecordError):
            self.close()
        else:
            self.abort()

    def count(self, total: int, valid: int) -> None:
        """Add records seen and records kept (the caller counts; :meth:`add` counts rejects)."""
        self.total += total
        self.valid += valid

    def add(self, source: str, row: int, error: InvalidRecord, record: Any) -> None:
        """Count and write one rejected record; raise it in fail mode."""
        message = format_reject(source, row, error.reason, error.detail)
        self.counts[error.reason] += 1
        if self.path is not None:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._stage = Stage(self.path.parent, label="rejects")
                self._handle = self._stage.open(self.path, "w")
            line = {
                "source": source,
                "row": row,
                "reason": error.reason,
                "detail": error.detail,
                "message": message,
                "record": _record(record),
            }
            try:
                text = json.dumps(line, ensure_ascii=False, default=_jsonable)
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: escape them so the file stays UTF-8
                text = json.dumps(line, ensure_ascii=True, default=_jsonable)
            self._handle.write(text + "\n")
        if self.on_invalid == "fail":
            raise InvalidRecordError(message, source, row, error.reason, error.detail)

    def close(self) -> None:
        """Publish the rejects file (or remove a stale one when nothing was rejected)."""
        if self._handle is not None and self._stage is not None and self.path is not None:
            self._handle.flush()
            try:
                self._stage.seal(self.path)
                self._stage.commit()
            finally:
                self.abort()
        elif self._handle is None and self.path is not None and not self.counts:
            self.path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the partial rejects file (the run failed for another reason)."""
        if self._stage is not None:
            self._stage.abort()
            self._stage.close()
        self._handle = self._stage = None

    @property
    def rejected(self) -> int:
        """Number of rejected records so far."""
        return sum(self.counts.values())

    def summary(self) -> ValidationSummary:
        """Counts so far as a :class:`ValidationSummary`."""
        return ValidationSummary(
            total=self.total,
            valid=self.valid,
            rejected=dict(sorted(self.counts.items())),
            repaired=dict(sorted(self.repaired.items())),
        )
