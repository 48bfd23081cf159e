"""Per-record limits, so one hostile record is a rejected row instead of a crashed or swapped run.

Two limits, checked by :mod:`packft.ingest.readers` before a record is handed on (so nothing
oversized is ever tokenized):

* **size** ``max_bytes`` (``--max-record-bytes``, default 16 MiB): the record's encoded bytes (the
  JSON line or list element; for parquet/arrow/csv the sum of its string, binary and fixed-width
  values). A longer record is rejected as ``too_large``. JSON text is read in bounded pieces and a
  too-long record is skipped without ever being held whole, so a 200 MB single-line record costs
  about ``max_bytes`` of memory, not gigabytes.
* **nesting** ``max_depth`` (:data:`MAX_DEPTH` = 100 levels of arrays/objects; ``{"a": "b"}`` is 1,
  a ShareGPT record 3, an OpenAI tool call with a JSON-schema argument ~10): a deeper record is
  rejected as ``too_deep``. Python's JSON decoder recurses (RecursionError near 1000 levels) and
  Arrow's JSON reader crashes the process on very deep input, so depth is bounded before either
  sees a record: a JSON text with at most ``max_depth`` opening brackets cannot be deeper, and
  only records with more are decoded carefully and walked without recursion.

:class:`ValueSkipper` finds where one JSON value ends in text fed piece by piece (tracking strings,
escapes and brackets only), which is how an oversized or over-deep list element is stepped over.
Cost: two ``str.count`` calls per JSON record; for columnar files one vectorised pass per batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_RECORD_BYTES = 16 << 20
MAX_DEPTH = 100
PREVIEW_CHARS = 200

_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]}\s]")
_SPACE = re.compile(r"[ \t\r\n\ufeff]*")


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The per-record limits a reader enforces (see the module docstring)."""

    max_bytes: int = DEFAULT_MAX_RECORD_BYTES
    """Largest record, in encoded bytes; larger ones are rejected as ``too_large``."""
    max_depth: int = MAX_DEPTH
    """Deepest nesting of arrays/objects; deeper records are rejected as ``too_deep``."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_depth < 1:
            raise ValueError(f"record limits must be >= 1, got {self.max_bytes}, {self.max_depth}")

    def too_large(self, size: int, exact: bool = True) -> tuple[str, str]:
        """``(reason, detail)`` for a record of ``size`` bytes (``exact=False``: at least)."""
        amount = f"{size:,} bytes" if exact else f"at least {size:,} bytes"
        return "too_large", f"the record is {amount}, over --max-record-bytes {self.max_bytes:,}"

    def too_deep(self) -> tuple[str, str]:
        return "too_deep", f"the record nests arrays/objects deeper than {self.max_depth} levels"


def text_bytes(text: str, start: int = 0, end: int | None = None) -> int:
    """UTF-8 size of ``text[start:end]`` (characters decoded with surrogateescape count 1)."""
    end = len(text) if end is None else end
    piece = text if (start, end) == (0, len(text)) else text[start:end]
    if piece.isascii():
        return len(piece)
    return len(piece.encode("utf-8", "surrogateescape"))


def bracket_bound(text: str, start: int = 0, end: int | None = None) -> int:
    """Opening brackets in ``text[start:end]``: an upper bound on the nesting depth of the JSON."""
    end = len(text) if end is None else end
    return text.count("[", start, end) + text.count("{", start, end)


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` levels (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return False


class ValueSkipper:
    """Finds the end of one JSON value in text fed piece by piece, without decoding it.

    Only string boundaries, escapes and brackets are tracked (a value's syntax is not checked),
    and nothing is kept between pieces, so a 200 MB value is stepped over in constant memory.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = self.escape = self.started = self.scalar = False
        self.skipped = 0

    def feed(self, text: str, start: int = 0) -> int | None:
        """The index in ``text`` just past the value's end, or None if it continues."""
        i, n = start, len(text)
        end = self._scan(text, i, n)
        self.skipped += (n if end is None else end) - start
        return end

    def _scan(self, text: str, i: int, n: int) -> int | None:
        while i < n:
            if self.in_string:
                if self.escape:
                    self.escape, i = False, i + 1
                    continue
                quote = text.find('"', i)
                backslash = text.find("\\", i, n if quote < 0 else quote)
                if backslash >= 0:  # str.find: ~50x faster than a regex over long strings
                    self.escape, i = True, backslash + 1
                    continue
                if quote < 0:
                    return None
                i = quote + 1
                self.in_string = False
                if self.depth == 0:
                    return i
                continue
            if not self.started:
                i = _SPACE.match(text, i).end()
                if i == n:
                    return None
                self.started, self.scalar = True, text[i] not in '"[{'
            if self.scalar:
                found = _SCALAR_END.search(text, i)
                return None if found is None else found.start()
            found = _STRUCTURE.search(text, i)
            if found is None:
                return None
            i, char = found.end(), found.group()
            if char == '"':
                self.in_string = True
            elif char in "[{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return i
        return None


# --- columnar (Arrow) records ------------------------------------------------------------------


def arrow_type_depth(data_type: Any) -> int:
    """Nesting levels of an Arrow type (a struct of strings is 1, a list of structs 2)."""
    import pyarrow as pa

    if pa.types.is_struct(data_type):
        return 1 + max((arrow_type_depth(f.type) for f in data_type), default=0)
    if pa.types.is_map(data_type):
        return 1 + max(arrow_type_depth(data_type.key_type), arrow_type_depth(data_type.item_type))
    if (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    ):
        return 1 + arrow_type_depth(data_type.value_type)
    return 0


def arrow_value_bytes(array: Any) -> np.ndarray:
    """Bytes of each value of an Arrow array (strings and binaries by length, nested summed)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(array)
    kind = array.type
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        return (
            pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        )
    if pa.types.is_struct(kind):
        total = np.zeros(n, np.int64)
        for i in range(kind.num_fields):
            total += arrow_value_bytes(pc.struct_field(array, [i]))
        return total
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        children = arrow_value_bytes(pc.list_flatten(array))
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=children, minlength=n).astype(np.int64)
    if pa.types.is_dictionary(kind):
        return arrow_value_bytes(array.dictionary_decode())
    try:
        width = kind.bit_width
    except ValueError:  # maps, unions and other variable-width types: counted as one word
        width = 64
    return np.full(n, max(1, width // 8), np.int64)


def arrow_row_bytes(batch: Any) -> np.ndarray:
    """Bytes of each row of an Arrow record batch (see :func:`arrow_value_bytes`)."""
    total = np.zeros(batch.num_rows, np.int64)
    for column in batch.columns:
        total += arrow_value_bytes(column)
    return total
