"""JSON text and plain-text lines, read in bounded memory whatever a single record holds.

The ``json``/``jsonl``/``txt`` readers of :func:`packft.ingest.readers.iter_record_batches`:

* **JSON lines** go through Arrow's JSON reader (fast, 4 MiB blocks) only after a numpy scan
  (:func:`fits_arrow_json`) shows that no line is longer than ``max_bytes`` or has more opening
  brackets than ``max_depth`` (Arrow would accept the one and crash the process on the other).
  Otherwise, or when Arrow gives up mid-file, lines are read one at a time with
  ``readline(limit)``: a too-long line is read past in pieces, never held whole.
* **A JSON list** (``[`` first) is decoded element by element with ``raw_decode`` from a
  sliding window (:class:`TextWindow`) that never grows much past ``max_bytes``; an element
  that is longer, or so deep that Python's decoder gives up (RecursionError), is stepped over
  with :class:`packft.ingest.limits.ValueSkipper` and becomes a :class:`BadRow` in its place.
* **txt**: one ``{"text": line}`` per line, lines bounded the same way.

Worked example (``max_bytes`` 1000, ``max_depth`` 3), the list
``[{"a": 1}, {"b": "x...5000 x"}, {"c": [[[[1]]]]}]`` reads as ``{"a": 1}``,
``BadRow(reason="too_large")``, ``BadRow(reason="too_deep")``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packft.ingest import stream  # stream.BLOCK_BYTES / stream.CHAR_CHUNK are read at call time
from packft.ingest.limits import (
    PREVIEW_CHARS,
    RecordLimits,
    ValueSkipper,
    bracket_bound,
    deeper_than,
    text_bytes,
)
from packft.ingest.stream import (
    BadRow,
    RecordBatch,
    SourceError,
    batched,
    binary_stream,
    text_stream,
)


def _first_char(path: Path) -> str:
    with text_stream(path) as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip(" \t\r\n\ufeff")
            if stripped:
                return stripped[0]
    return ""


def _strings_for_timestamps(data_type):
    """The same Arrow type with every timestamp/date replaced by string (JSON text stays text)."""
    import pyarrow as pa

    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return pa.string()
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return pa.list_(pa.field("item", _strings_for_timestamps(data_type.value_type)))
    if pa.types.is_struct(data_type):
        return pa.struct([f.with_type(_strings_for_timestamps(f.type)) for f in data_type])
    return data_type


def _bounded_lines(handle: io.TextIOBase, limits: RecordLimits) -> Iterator[str | BadRow]:
    """The lines of a text stream; a line over ``limits.max_bytes`` is read past in pieces and
    becomes a ``too_large`` :class:`BadRow` (memory: one line of at most the limit)."""
    cap = limits.max_bytes + 2  # characters, room for "\r\n"; a character is >= 1 byte
    while line := handle.readline(cap):
        if len(line) == cap and not line.endswith(("\n", "\r")):
            skipped = len(line)
            while piece := handle.readline(stream.CHAR_CHUNK):
                skipped += len(piece.rstrip("\r\n"))
                if piece.endswith(("\n", "\r")):
                    break
            yield BadRow.over_limit(line, limits.too_large(skipped, exact=False))
            continue
        content = line.rstrip("\r\n")
        if len(content) * 4 > limits.max_bytes and text_bytes(content) > limits.max_bytes:
            yield BadRow.over_limit(line, limits.too_large(text_bytes(content)))
            continue
        yield line


def _decode_json_text(text: str, limits: RecordLimits) -> Any:
    """One JSON record from its text, or a :class:`BadRow` (invalid, or nested too deep)."""
    try:
        value = json.loads(text)
    except RecursionError:
        return BadRow.over_limit(text, limits.too_deep())
    except ValueError as exc:
        return BadRow(text.rstrip("\r\n"), f"invalid JSON: {exc}")
    if bracket_bound(text) > limits.max_depth and deeper_than(value, limits.max_depth):
        return BadRow.over_limit(text, limits.too_deep())
    return value


def _iter_json_lines_python(
    path: Path, skip: int, batch_size: int, limits: RecordLimits
) -> Iterator[RecordBatch]:
    def records() -> Iterator[Any]:
        seen = 0
        with text_stream(path) as handle:
            for line in _bounded_lines(handle, limits):
                if isinstance(line, str) and not line.strip():
                    continue
                seen += 1
                if seen > skip:
                    yield line if isinstance(line, BadRow) else _decode_json_text(line, limits)

    yield from batched(path, records(), batch_size, start=skip)


def fits_arrow_json(path: Path, limits: RecordLimits) -> bool:
    """Whether every line has at most ``max_depth`` opening brackets and ``max_bytes`` bytes.

    Arrow's JSON reader crashes the process on very deep records and would accept records over
    the size limit, so it only reads files that pass this scan; the others go to the
    line-by-line reader, which rejects such records one by one. Cost: per 4 MiB block, three
    byte comparisons and a ``searchsorted`` of the line ends into the bracket positions.
    """
    carry_opens = carry_length = 0  # the unfinished last line of the previous block
    with binary_stream(path) as raw:
        while chunk := raw.read(stream.BLOCK_BYTES):
            data = np.frombuffer(chunk, np.uint8)
            opens = np.flatnonzero((data == ord("[")) | (data == ord("{")))
            ends = np.flatnonzero(data == ord("\n"))
            if len(ends):
                per_line = np.diff(np.searchsorted(opens, ends), prepend=0)
                lengths = np.diff(ends, prepend=-1) - 1
                per_line[0] += carry_opens
                lengths[0] += carry_length
                if per_line.max() > limits.max_depth or lengths.max() > limits.max_bytes:
                    return False
                carry_opens = len(opens) - int(np.searchsorted(opens, ends[-1]))
                carry_length = len(data) - 1 - int(ends[-1])
            else:
                carry_opens, carry_length = carry_opens + len(opens), carry_length + len(data)
            if carry_opens > limits.max_depth or carry_length > limits.max_bytes:
                return False
    return True


def _read_json_lines(path: Path, batch_size: int, limits: RecordLimits) -> Iterator[RecordBatch]:
    import pyarrow as pa
    import pyarrow.json as pjson

    read = pjson.ReadOptions(block_size=stream.BLOCK_BYTES)
    row = 0
    if not fits_arrow_json(path, limits):
        yield from _iter_json_lines_python(path, 0, batch_size, limits)
        return
    try:
        with binary_stream(path) as raw:
            schema = pjson.open_json(raw, read_options=read).schema
        fixed = pa.schema([f.with_type(_strings_for_timestamps(f.type)) for f in schema])
        parse = pjson.ParseOptions(explicit_schema=fixed, unexpected_field_behavior="infer")
        with binary_stream(path) as raw:
            for batch in pjson.open_json(raw, read_options=read, parse_options=parse):
                for offset in range(0, batch.num_rows, batch_size):
                    rows = batch.slice(offset, batch_size).to_pylist()
                    yield RecordBatch(str(path), row, rows)
                    row += len(rows)
        return
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        pass  # mixed types, a broken line or bad UTF-8: finish with the per-line reader
    yield from _iter_json_lines_python(path, row, batch_size, limits)


class TextWindow:
    """A sliding window over a text stream: ``buf[pos:]`` is what is not consumed yet."""

    _SPACE = re.compile(r"[ \t\r\n\ufeff]*")

    def __init__(self, handle: io.TextIOBase, max_chars: int) -> None:
        self.handle, self.max_chars = handle, max_chars
        self.buf, self.pos, self.consumed, self.eof = "", 0, 0, False

    def fill(self) -> None:
        """Read more: double the pending text, but stop about ``max_chars`` past ``pos``."""
        pending = len(self.buf) - self.pos
        chunk = self.handle.read(
            max(stream.CHAR_CHUNK, min(2 * pending, self.max_chars + 1 - pending))
        )
        self.eof = not chunk
        self.consumed += self.pos
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0

    def replace(self) -> bool:
        """Drop everything and read the next piece (for skipping); False at the end."""
        self.consumed += len(self.buf)
        self.buf, self.pos = self.handle.read(stream.CHAR_CHUNK), 0
        self.eof = not self.buf
        return not self.eof

    def peek(self) -> str:
        """The next non-space character ("" at the end), reading on as needed."""
        while True:
            self.pos = self._SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos] if self.pos < len(self.buf) else ""
            self.fill()


class _JsonList:
    """Elements of a top-level JSON list, decoded one at a time from a :class:`TextWindow`.

    An element over the size limit, or nested so deep that the decoder gives up, is stepped
    over with :class:`~packft.ingest.limits.ValueSkipper` and yielded as a :class:`BadRow`.
    """

    def __init__(self, path: Path, handle: io.TextIOBase, limits: RecordLimits) -> None:
        self.path, self.limits = path, limits
        self.win = TextWindow(handle, limits.max_bytes)
        self.decoder = json.JSONDecoder()

    def fail(self, what: str) -> SourceError:
        where = self.win.consumed + self.win.pos
        return SourceError(f"{self.path}: invalid JSON list near character {where}: {what}")

    def __iter__(self) -> Iterator[Any]:
        win = self.win
        win.fill()
        if win.peek() != "[":
            raise self.fail("expected '['")
        win.pos += 1
        if win.peek() == "]":
            return
        index = 0
        while True:
            win.peek()
            yield self.element(index)
            index += 1
            following = win.peek()
            if following == ",":
                win.pos += 1
            elif following == "]":
                win.pos += 1
                if win.peek():
                    raise self.fail("data after the closing ']'")
                return
            else:
                raise self.fail(f"expected ',' or ']' after element {index - 1}")

    def element(self, index: int) -> Any:
        win, limits = self.win, self.limits
        while True:
            try:
                value, end = self.decoder.raw_decode(win.buf, win.pos)
            except RecursionError:
                return self.skip(deep=True)
            except json.JSONDecodeError as exc:
                if win.eof:
                    raise self.fail(f"element {index}: {exc.msg}") from None
                if len(win.buf) - win.pos > limits.max_bytes:
                    return self.skip(deep=False, error=exc, index=index)
                win.fill()
                continue
            if end == len(win.buf) and not win.eof:  # a number may continue in the next chunk
                win.fill()
                continue
            break
        start, win.pos = win.pos, end
        if (end - start) * 4 > limits.max_bytes and text_bytes(
            win.buf, start, end
        ) > limits.max_bytes:
            size = text_bytes(win.buf, start, end)
            return BadRow.over_limit(win.buf[start : start + PREVIEW_CHARS], limits.too_large(size))
        if bracket_bound(win.buf, start, end) > limits.max_depth and deeper_than(
            value, limits.max_depth
        ):
            return BadRow.over_limit(win.buf[start : start + PREVIEW_CHARS], limits.too_deep())
        return value

    def skip(self, deep: bool, error: json.JSONDecodeError | None = None,
             index: int = 0) -> BadRow:  # fmt: skip
        """Step over the element at ``pos`` (too deep to decode, or too large); a syntax error
        inside an element that turns out to be short fails the file as before."""
        win, skipper = self.win, ValueSkipper()
        preview = win.buf[win.pos : win.pos + PREVIEW_CHARS]
        end = skipper.feed(win.buf, win.pos)
        if error is not None and end is not None and skipper.skipped <= self.limits.max_bytes:
            raise self.fail(f"element {index}: {error.msg}")
        while end is None:
            if not win.replace():
                raise self.fail("the file ends inside an element")
            end = skipper.feed(win.buf, 0)
        win.pos = end
        if deep and skipper.skipped <= self.limits.max_bytes:
            return BadRow.over_limit(preview, self.limits.too_deep())
        # characters skipped are a lower bound of the bytes
        return BadRow.over_limit(preview, self.limits.too_large(skipper.skipped, exact=False))


def read_json(path: Path, batch_size: int, limits: RecordLimits) -> Iterator[RecordBatch]:
    if _first_char(path) != "[":
        yield from _read_json_lines(path, batch_size, limits)
        return
    with text_stream(path) as handle:
        yield from batched(path, _JsonList(path, handle, limits), batch_size)


def read_txt(path: Path, batch_size: int, limits: RecordLimits) -> Iterator[RecordBatch]:
    with text_stream(path) as handle:
        lines = (
            line
            if isinstance(line, BadRow)
            else {"text": line.removesuffix("\n").removesuffix("\r")}
            for line in _bounded_lines(handle, limits)
        )
        yield from batched(path, lines, batch_size)
