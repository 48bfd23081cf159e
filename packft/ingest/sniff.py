"""Check that a data file's bytes are what its name says, before any record is read.

File formats are picked by suffix (:func:`packft.ingest.readers.detect_format`), so a gzip file
saved as ``data.json``, a parquet file named ``.jsonl`` or plain random bytes would otherwise be
read as text: a stream of ``invalid_json`` rejects, or nothing at all. :func:`check_content` reads
the first 64 KiB of the raw file (no decompression) and raises one :class:`ContentMismatchError`
line that names what the file looks like and the rename or conversion that fixes it::

    data.json: looks like gzip-compressed data, not JSON text: rename it to data.json.gz
    data.json.gz: is not gzip-compressed (it starts like text): rename it to data.json
    train.parquet: is not a parquet file (it starts like JSON text): rename it to train.json
    blob.jsonl: looks like binary data, not UTF-8 text (NUL byte at offset 12)

Rules, by what the name promises:

* compressed text (``.json.gz`` ...): the codec's magic number must open the file;
* plain text (json, jsonl, csv, txt): no magic number of a codec or columnar format, no UTF-16
  or UTF-32 byte-order mark, no NUL byte and under 10% control bytes in the sample (random bytes
  have a NUL within the first few hundred bytes, text has none);
* parquet: ``PAR1`` at both ends; arrow: ``ARROW1`` (IPC file) or an IPC stream message.

An empty file passes: it holds no records, which the quality gate (:mod:`packft.ingest.quality`)
reports. Cost: one 64 KiB read and a few byte scans per input file.
"""

from __future__ import annotations

from pathlib import Path

from packft.ingest.stream import SourceError

SAMPLE_BYTES = 1 << 16
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    # (magic, description, suffix that names it)
    (b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", ".zst"),
    (b"BZh", "bzip2-compressed data", ".bz2"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data", ".lz4"),
    (b"\xfd7zXZ\x00", "xz-compressed data (not supported: recompress with gzip or zstd)", ".xz"),
    (b"PK\x03\x04", "a zip archive (unpack it and pass the data file)", ".zip"),
    (b"PAR1", "a parquet file", ".parquet"),
    (b"ARROW1", "an Arrow IPC file", ".arrow"),
    (b"\xff\xfe\x00\x00", "UTF-32 text (convert it to UTF-8)", ""),
    (b"\xff\xfe", "UTF-16 text (convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8)", ""),
    (b"\xfe\xff", "UTF-16 text (convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8)", ""),
)
_CODEC_SUFFIXES = {".gz": b"\x1f\x8b", ".zst": b"\x28\xb5\x2f\xfd", ".bz2": b"BZh",
                   ".lz4": b"\x04\x22\x4d\x18"}  # fmt: skip
_CONTROL = bytes(range(0, 9)) + bytes(range(14, 32)) + b"\x7f"
_TEXT_NAMES = {"json": "JSON text", "jsonl": "JSON lines", "csv": "CSV text", "txt": "plain text"}
_ARROW_STREAM = b"\xff\xff\xff\xff"


class ContentMismatchError(SourceError):
    """A file's bytes contradict its name (compressed, columnar or binary under a text name)."""


def _known_magic(head: bytes) -> tuple[str, str] | None:
    for magic, what, suffix in _MAGIC:
        if head.startswith(magic):
            return what, suffix
    return None


def _text_problem(sample: bytes) -> str | None:
    """Why ``sample`` is not UTF-8 text, or None."""
    nul = sample.find(b"\0")
    if nul >= 0:
        return f"looks like binary data, not UTF-8 text (NUL byte at offset {nul})"
    control = sum(sample.count(bytes([c])) for c in _CONTROL)
    if sample and control / len(sample) > 0.1:
        return f"looks like binary data, not UTF-8 text ({control} control bytes in the first {len(sample)})"
    return None


def _looks_like(sample: bytes) -> str:
    stripped = sample.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
    if stripped in (b"[", b"{"):
        return "JSON text", ".json"
    if _text_problem(sample) is None:
        return "text", ""
    return "binary data", ""


def _rename_hint(path: Path, suffix: str, strip: str = "") -> str:
    name = path.name[: -len(strip)] if strip and path.name.lower().endswith(strip) else path.name
    if not suffix:
        return ""
    stem = name.rsplit(".", 1)[0] if suffix in (".parquet", ".arrow", ".json") else name
    return f": rename it to {stem}{suffix}"


def _check_compressed(path: Path, fmt: str, codec: str, head: bytes) -> None:
    if head.startswith(_CODEC_SUFFIXES[codec]):
        return
    found = _known_magic(head)
    if found is not None:
        what, suffix = found
        hint = _rename_hint(path, suffix, codec) if suffix in _CODEC_SUFFIXES else ""
        raise ContentMismatchError(f"{path}: is {what}, not {codec[1:]}-compressed{hint}")
    what, _ = _looks_like(head)
    plain = path.name[: -len(codec)]
    raise ContentMismatchError(
        f"{path}: is not {codec[1:]}-compressed (it starts like {what}): rename it to {plain}"
    )


def _check_plain_text(path: Path, fmt: str, head: bytes) -> None:
    found = _known_magic(head)
    if found is not None:
        what, suffix = found
        hint = _rename_hint(path, suffix) if suffix not in ("", ".zip", ".xz") else ""
        raise ContentMismatchError(f"{path}: looks like {what}, not {_TEXT_NAMES[fmt]}{hint}")
    problem = _text_problem(head)
    if problem is not None:
        raise ContentMismatchError(f"{path}: {problem}; is it really a .{fmt} file?")


def _check_columnar(path: Path, fmt: str, head: bytes, size: int) -> None:
    if fmt == "parquet":
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 4))
            tail = handle.read(4)
        if head.startswith(b"PAR1") and tail == b"PAR1":
            return
    elif head.startswith((b"ARROW1", _ARROW_STREAM)):
        return
    if size == 0:
        raise ContentMismatchError(f"{path}: is empty (0 bytes), not a {fmt} file")
    found = _known_magic(head)
    if found is not None and found[1] != f".{fmt}":
        what, suffix = found
        raise ContentMismatchError(
            f"{path}: is {what}, not a {fmt} file{_rename_hint(path, suffix)}"
        )
    if fmt == "parquet" and head.startswith(b"PAR1"):
        raise ContentMismatchError(
            f"{path}: parquet file without its footer (truncated? {size} bytes); download or "
            "copy it again"
        )
    what, suffix = _looks_like(head)
    if fmt == "arrow" and what == "binary data":
        return  # legacy Arrow streams start with a bare length: let the IPC reader decide
    raise ContentMismatchError(
        f"{path}: is not a {fmt} file (it starts like {what}){_rename_hint(path, suffix)}"
    )


def check_content(path: Path, fmt: str) -> None:
    """Raise :class:`ContentMismatchError` if ``path``'s first bytes contradict its name.

    Args:
        path: a local data file.
        fmt: the format its suffix names (:func:`packft.ingest.readers.detect_format`).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(SAMPLE_BYTES)
    if fmt not in _TEXT_NAMES:
        _check_columnar(path, fmt, head, size)
        return
    if size == 0:
        return
    codec = next((c for c in _CODEC_SUFFIXES if path.name.lower().endswith(c)), None)
    if codec is not None:
        _check_compressed(path, fmt, codec, head)
    else:
        _check_plain_text(path, fmt, head)
