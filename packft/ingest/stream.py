"""What every reader of a data file yields, and the byte streams they read from.

:class:`RecordBatch` (consecutive rows of one file, with the 0-based row number of the first),
:class:`BadRow` (a record that could not or would not be decoded, kept in its place so it is
rejected with its row number) and :class:`SourceError` (a file packft cannot read) are shared by
the columnar readers (:mod:`packft.ingest.readers`), the JSON/text readers
(:mod:`packft.ingest.json_text`) and the content check (:mod:`packft.ingest.sniff`), which is why
they live here and not in any one of them. Streams are opened through Arrow, which detects the
compression from the suffix; text is decoded as UTF-8 with ``surrogateescape``, so invalid bytes
survive as lone surrogates and the record is rejected as ``invalid_text`` downstream instead of
crashing the run. :data:`BLOCK_BYTES` and :data:`CHAR_CHUNK` are read at call time, so a test may
shrink them to make every record straddle many reads.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packft.ingest.limits import PREVIEW_CHARS

BLOCK_BYTES = 1 << 22
"""Bytes per Arrow read block (CSV and JSON lines readers, the JSON-lines pre-scan)."""
CHAR_CHUNK = 1 << 20
"""Characters per read of the line-by-line and JSON-list readers."""


class SourceError(ValueError):
    """``--input`` names something packft cannot read (the message says what exists instead)."""


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Consecutive rows of one file; ``rows[i]`` is row ``start_row + i`` (0-based)."""

    source: str
    start_row: int
    rows: list[Any]


@dataclass(frozen=True, slots=True)
class BadRow:
    """A record the reader could not (or would not) decode; kept in place so it is rejected with
    its row number. ``text`` is the line as read, or a preview of an oversized/over-deep record."""

    text: str
    error: str
    reason: str = "invalid_json"

    @classmethod
    def over_limit(cls, preview: str, reason_detail: tuple[str, str]) -> BadRow:
        reason, detail = reason_detail
        return cls(preview[:PREVIEW_CHARS], detail, reason)


def binary_stream(path: Path):
    """The file's bytes, decompressed when its suffix names a codec (``.gz``, ``.zst`` ...)."""
    import pyarrow as pa

    return pa.input_stream(str(path), compression="detect")


def text_stream(path: Path) -> io.TextIOWrapper:
    """The file's text (UTF-8, ``surrogateescape``, newlines kept as written)."""
    return io.TextIOWrapper(
        binary_stream(path), encoding="utf-8", errors="surrogateescape", newline=""
    )


def batched(
    path: Path, values: Iterable[Any], batch_size: int, start: int = 0
) -> Iterator[RecordBatch]:
    """Group a stream of row values into RecordBatches of ``batch_size`` rows."""
    rows: list[Any] = []
    for value in values:
        rows.append(value)
        if len(rows) == batch_size:
            yield RecordBatch(str(path), start, rows)
            start += len(rows)
            rows = []
    if rows:
        yield RecordBatch(str(path), start, rows)
