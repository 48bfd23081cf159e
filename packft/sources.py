"""Where instruction data comes from: resolve ``--input`` to local files, then stream their records.

``resolve_input(spec)`` accepts a file, a directory, an ``http(s)://`` URL (downloaded into the
content-addressed cache of :mod:`packft.download`) or ``hf://datasets/owner/name[@rev][/path]``
(a ``huggingface_hub`` snapshot; ``/path`` may be a glob such as ``data/train-*``). A directory
must hold files of exactly one format; it is walked recursively in sorted order, skipping hidden
and ``_``-prefixed entries, documentation (``*.md``, ``LICENSE``) and dataset metadata
(``dataset_info.json``, ``state.json``...); files of more than one split (``train``/``test``/
``validation`` in their path) are refused. A ``datasets`` ``save_to_disk`` folder is recognised
by its ``state.json`` and read through its arrow shards.

``iter_record_batches(path)`` yields :class:`RecordBatch` es of at most ``batch_size`` rows as
Python dicts (nested lists/dicts kept) with the 0-based row number of the first row in the file.
Only one batch is materialised as Python objects at a time:

===========  ==========================================================================
format       reader (row = ...)
===========  ==========================================================================
parquet      ``ParquetFile.iter_batches`` (row = table row)
arrow        IPC file (memory-mapped) or IPC stream, incl. ``save_to_disk`` shards
csv          ``pyarrow.csv.open_csv`` streaming, header row, every column read as text,
             quoted newlines allowed (row = data row after the header)
jsonl        ``pyarrow.json.open_json`` streaming (row = non-blank line); timestamp-looking
             strings stay strings. If Arrow cannot read the file (mixed types, a broken line)
             the rest is read line by line with ``json.loads`` and a broken line becomes a
             :class:`BadRow`, so it is rejected with its row number instead of failing the file.
json         a file starting with ``[`` is a JSON list, decoded one element at a time by an
             incremental ``raw_decode`` (memory = one batch + the largest element, not the file;
             a syntax error fails the file, since a list cannot be resynchronised); any other
             .json file is read as JSON lines, as MindSpeed/``datasets`` accept both
txt          one ``{"text": line}`` per line, blank lines included (row = line)
===========  ==========================================================================

Text formats may be compressed (``.gz``, ``.bz2``, ``.zst``, ``.lz4``). Text is decoded as UTF-8
with ``surrogateescape`` where Python decodes, so invalid bytes survive as lone surrogates and
the record is rejected as ``invalid_text`` by :mod:`packft.formats` rather than crashing the run.

Measured (2 shared cores, one process), records/s to Python dicts, alpaca_en x50 (50k rows) /
glaive toolcall x50 (15k nested rows): parquet 590k / 55k, arrow 510k / 98k, json list 190k / 32k,
jsonl 140k / 40k, csv 140k / -, txt 890k lines/s; memory stays at one batch plus one read block.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from packft.download import fetch_hub_dataset, fetch_url, file_sha256

__all__ = [
    "FORMATS",
    "BadRow",
    "MixedFormatsError",
    "RecordBatch",
    "SourceError",
    "detect_format",
    "file_sha256",
    "iter_record_batches",
    "list_data_files",
    "resolve_input",
]

FORMATS = ("parquet", "arrow", "csv", "json", "jsonl", "txt")
_BASE_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
_TEXT_FORMATS = frozenset({"csv", "json", "jsonl", "txt"})
KNOWN_SUFFIXES: tuple[str, ...] = tuple(_BASE_SUFFIXES) + tuple(
    s + c for s, f in _BASE_SUFFIXES.items() if f in _TEXT_FORMATS for c in _COMPRESSIONS
)
# Never data: skipped when a directory is listed.
_METADATA_NAMES = frozenset(
    {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json", "license"}
)
_DOC_SUFFIXES = (".md", ".rst", ".lock", ".gitattributes", ".py", ".yaml", ".yml")
_HF_SPEC = re.compile(r"^hf://datasets/([^/@\s]+/[^/@\s]+)(?:@([^/\s]+))?(?:/(.*))?$")
_SPLIT = re.compile(r"[/_.-](train|test|validation|valid|val|dev|eval)(?=[/_.-]|$)")
_SPLIT_NAMES = {"valid": "validation", "val": "validation", "dev": "validation"}
_BLOCK = 1 << 22  # 4 MiB Arrow read blocks
_CHAR_CHUNK = 1 << 20


class SourceError(ValueError):
    """``--input`` names something packft cannot read (the message says what exists instead)."""


class MixedFormatsError(SourceError):
    """A directory holds files of more than one format."""


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Consecutive rows of one file; ``rows[i]`` is row ``start_row + i`` (0-based)."""

    source: str
    start_row: int
    rows: list[Any]


@dataclass(frozen=True, slots=True)
class BadRow:
    """A line the reader could not decode; kept in place so it is rejected with its row number."""

    text: str
    error: str


def detect_format(path: Path | str) -> str:
    """The format named by a file's suffix (compression suffixes allowed for text formats)."""
    name = Path(path).name.lower()
    for compression in ("", *_COMPRESSIONS):
        stem = name[: -len(compression)] if compression and name.endswith(compression) else name
        if compression and stem == name:
            continue
        for suffix, fmt in _BASE_SUFFIXES.items():
            if stem.endswith(suffix) and (not compression or fmt in _TEXT_FORMATS):
                return fmt
    raise SourceError(
        f"{path}: unknown data file type; supported: {', '.join(sorted(_BASE_SUFFIXES))} "
        f"(text formats may end in {', '.join(_COMPRESSIONS)})"
    )


def _is_data_candidate(path: Path) -> bool:
    name = path.name.lower()
    return (
        name not in _METADATA_NAMES
        and not name.startswith(("readme", "license"))
        and not (name.endswith(_DOC_SUFFIXES))
    )


def _split_of(relative: Path) -> str | None:
    """The split (train, test, ...) a file path names, as in ``data/train-0000.parquet``."""
    match = _SPLIT.search("/" + relative.as_posix().lower())
    return None if match is None else _SPLIT_NAMES.get(match.group(1), match.group(1))


def list_data_files(directory: Path) -> list[Path]:
    """Every data file under ``directory`` (sorted, one format), per the rules in the docstring.

    Raises:
        SourceError: nothing readable, unknown file types, several splits (``train``, ``test``
            ... in file or folder names: reading all would mix evaluation data into training),
            or a ``DatasetDict`` root.
        MixedFormatsError: more than one format; the message lists the files by format.
    """
    directory = Path(directory)
    state = directory / "state.json"
    if state.is_file():  # datasets.Dataset.save_to_disk
        data_files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
        files = [directory / entry["filename"] for entry in data_files]
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise SourceError(f"{state}: save_to_disk folder with missing shards {missing}")
        return files
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        raise SourceError(
            f"{directory} is a DatasetDict with splits {splits}; pass one split's folder, "
            f"e.g. --input {directory / (splits[0] if splits else 'train')}"
        )
    by_format: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    for path in sorted(directory.rglob("*")):
        parts = path.relative_to(directory).parts
        if any(p.startswith((".", "_")) for p in parts) or not path.is_file():
            continue
        if not _is_data_candidate(path):
            continue
        try:
            by_format.setdefault(detect_format(path), []).append(path)
        except SourceError:
            unknown.append(path)
    if unknown:
        raise SourceError(
            f"{directory}: files of unknown type {[str(p) for p in unknown[:10]]}; supported: "
            f"{', '.join(FORMATS)}. Move them out or pass one file as --input."
        )
    if not by_format:
        raise SourceError(f"{directory}: no data files ({', '.join(FORMATS)}) found")
    splits = {_split_of(p.relative_to(directory)) for files in by_format.values() for p in files}
    if len(splits - {None}) > 1:
        raise SourceError(
            f"{directory} holds several dataset splits ({', '.join(sorted(splits - {None}))}); "
            "reading them all would train on evaluation data. Pass one split's file or folder "
            "(for hf:// ids a glob works: hf://datasets/OWNER/NAME/data/train-*)."
        )
    if len(by_format) > 1:
        listing = "; ".join(
            f"{fmt}: {', '.join(str(p) for p in paths[:5])}{' ...' if len(paths) > 5 else ''}"
            for fmt, paths in sorted(by_format.items())
        )
        raise MixedFormatsError(
            f"{directory} mixes formats ({listing}); a directory must hold one format. "
            "Pass one file, or split the directory by format."
        )
    return next(iter(by_format.values()))


def _select(root: Path, subpath: str, spec: str) -> list[Path]:
    """Files of a snapshot: all, one file or folder, or a glob such as ``data/train-*``."""
    if any(ch in subpath for ch in "*?["):
        files = sorted(p for p in root.glob(subpath) if p.is_file() and _is_data_candidate(p))
        if not files:
            raise SourceError(f"{spec}: no files match {subpath!r} in the snapshot {root}")
        return files
    target = root / subpath
    if target.is_file():
        return [target]
    if target.is_dir():
        return list_data_files(target)
    raise SourceError(
        f"{spec}: no {subpath!r} in the snapshot; it has {sorted(p.name for p in root.iterdir())}"
    )


def resolve_input(
    spec: str, cache_dir: Path, *, sha256: str | None = None, refresh: bool = False
) -> list[Path]:
    """Turn ``--input`` into the list of local data files to read, downloading if remote.

    Args:
        spec: a path (file or directory), an http(s) URL, or ``hf://datasets/owner/name[@rev]``
            optionally followed by ``/path/in/repo``.
        cache_dir: where remote inputs are cached (see :mod:`packft.download`).
        sha256: expected hex digest of the single input file (URLs and local files).
        refresh: download a URL again even if ``urls.json`` knows it.

    Returns:
        Files in read order, all of one format.

    Raises:
        FileNotFoundError: a local path that does not exist.
        SourceError: an unreadable type, a mix of formats, a bad spec, or a checksum on a folder.
        packft.download.DownloadError: network, HTTP, checksum or Hub failures.
    """
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        return [
            fetch_url(
                spec, Path(cache_dir), sha256=sha256, known_suffixes=KNOWN_SUFFIXES, refresh=refresh
            )
        ]
    if spec.startswith("hf://"):
        match = _HF_SPEC.match(spec)
        if not match:
            raise SourceError(
                f"{spec!r}: expected hf://datasets/OWNER/NAME[@REVISION][/PATH], e.g. "
                "hf://datasets/tatsu-lab/alpaca@main"
            )
        repo_id, revision, subpath = match.group(1), match.group(2), (match.group(3) or "")
        subpath = subpath.strip("/")
        root = fetch_hub_dataset(
            repo_id, unquote(revision) if revision else None, cache_dir, subpath
        )
        files = _select(root, subpath, spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            parent = path.parent if path.parent.exists() else Path.cwd()
            nearby = sorted(p.name for p in parent.iterdir())[:20]
            raise FileNotFoundError(
                f"--input {spec}: no such file or directory (in {parent}: {nearby}). Pass a "
                "file, a directory, an http(s) URL or hf://datasets/OWNER/NAME."
            )
        files = [path] if path.is_file() else list_data_files(path)
    for file in files:
        detect_format(file)
    if sha256 is not None and not spec.startswith(("http://", "https://")):
        if len(files) != 1:
            raise SourceError(f"--sha256 checks one file, but {spec} has {len(files)} files")
        actual = file_sha256(files[0])
        if actual != sha256.lower():
            raise SourceError(f"{files[0]}: sha256 is {actual}, expected {sha256.lower()}")
    return files


# ---------------------------------------------------------------------------- readers


def _binary_stream(path: Path):
    import pyarrow as pa

    return pa.input_stream(str(path), compression="detect")


def _text_stream(path: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        _binary_stream(path), encoding="utf-8", errors="surrogateescape", newline=""
    )


def _first_char(path: Path) -> str:
    with _text_stream(path) as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip(" \t\r\n\ufeff")
            if stripped:
                return stripped[0]
    return ""


def _slices(table_batch, source: str, start: int, batch_size: int) -> Iterator[RecordBatch]:
    for offset in range(0, table_batch.num_rows, batch_size):
        piece = table_batch.slice(offset, batch_size)
        yield RecordBatch(source, start + offset, piece.to_pylist())


def _read_parquet(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    import pyarrow.parquet as pq

    row = 0
    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield RecordBatch(str(path), row, batch.to_pylist())
            row += batch.num_rows


def _read_arrow(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    import pyarrow as pa

    row = 0
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            batches = iter(pa.ipc.open_stream(source))
        for batch in batches:
            yield from _slices(batch, str(path), row, batch_size)
            row += batch.num_rows


def _text_column(column) -> list[str | None]:
    """CSV cells arrive as bytes; valid UTF-8 is cast in C++, bad cells decoded one by one."""
    import pyarrow as pa

    try:
        return column.cast(pa.string()).to_pylist()
    except pa.ArrowInvalid:
        return [
            None if v is None else v.decode("utf-8", "surrogateescape") for v in column.to_pylist()
        ]


def _read_csv(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(newlines_in_values=True)
    read = pcsv.ReadOptions(block_size=_BLOCK)
    with _binary_stream(path) as probe:
        names = pcsv.open_csv(probe, read_options=read, parse_options=parse).schema.names
    convert = pcsv.ConvertOptions(
        column_types={name: pa.binary() for name in names}, strings_can_be_null=False
    )
    row = 0
    with _binary_stream(path) as stream:
        reader = pcsv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        )
        for batch in reader:
            for offset in range(0, batch.num_rows, batch_size):
                piece = batch.slice(offset, batch_size)
                columns = [_text_column(piece.column(i)) for i in range(piece.num_columns)]
                rows = [
                    dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)
                ]
                yield RecordBatch(str(path), row + offset, rows)
            row += batch.num_rows


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


def _iter_json_lines_python(path: Path, skip: int, batch_size: int) -> Iterator[RecordBatch]:
    rows: list[Any] = []
    row = start = skip
    seen = 0
    with _text_stream(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                rows.append(BadRow(line.rstrip("\r\n"), f"invalid JSON: {exc}"))
            row += 1
            if len(rows) == batch_size:
                yield RecordBatch(str(path), start, rows)
                rows, start = [], row
    if rows:
        yield RecordBatch(str(path), start, rows)


def _read_json_lines(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    import pyarrow as pa
    import pyarrow.json as pjson

    read = pjson.ReadOptions(block_size=_BLOCK)
    row = 0
    try:
        with _binary_stream(path) as stream:
            schema = pjson.open_json(stream, read_options=read).schema
        fixed = pa.schema([f.with_type(_strings_for_timestamps(f.type)) for f in schema])
        parse = pjson.ParseOptions(explicit_schema=fixed, unexpected_field_behavior="infer")
        with _binary_stream(path) as stream:
            for batch in pjson.open_json(stream, read_options=read, parse_options=parse):
                for offset in range(0, batch.num_rows, batch_size):
                    rows = batch.slice(offset, batch_size).to_pylist()
                    yield RecordBatch(str(path), row, rows)
                    row += len(rows)
        return
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        pass  # mixed types, a broken line or bad UTF-8: finish with the per-line reader
    yield from _iter_json_lines_python(path, row, batch_size)


def _iter_json_list(path: Path) -> Iterator[Any]:
    """Elements of a top-level JSON list, decoded one at a time from a sliding text buffer."""
    decoder = json.JSONDecoder()
    space = re.compile(r"[ \t\r\n\ufeff]*")
    with _text_stream(path) as handle:
        buf, pos, consumed, eof, want = "", 0, 0, False, _CHAR_CHUNK

        def fill() -> None:
            nonlocal buf, pos, consumed, eof, want
            chunk = handle.read(max(want, 2 * (len(buf) - pos)))
            eof = not chunk
            consumed += pos
            buf, pos = buf[pos:] + chunk, 0

        def skip_space() -> str:
            nonlocal pos
            while True:
                pos = space.match(buf, pos).end()
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                fill()

        def fail(what: str) -> SourceError:
            return SourceError(f"{path}: invalid JSON list near character {consumed + pos}: {what}")

        fill()
        if skip_space() != "[":
            raise fail("expected '['")
        pos += 1
        if skip_space() == "]":
            return
        index = 0
        while True:
            skip_space()
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        raise fail(f"element {index}: {exc.msg}") from None
                    fill()
                    continue
                if end == len(buf) and not eof:  # a number may continue in the next chunk
                    fill()
                    continue
                break
            yield value
            pos, index = end, index + 1
            following = skip_space()
            if following == ",":
                pos += 1
            elif following == "]":
                pos += 1
                if skip_space():
                    raise fail("data after the closing ']'")
                return
            else:
                raise fail(f"expected ',' or ']' after element {index - 1}")


def _read_json(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    if _first_char(path) != "[":
        yield from _read_json_lines(path, batch_size)
        return
    rows: list[Any] = []
    start = 0
    for value in _iter_json_list(path):
        rows.append(value)
        if len(rows) == batch_size:
            yield RecordBatch(str(path), start, rows)
            start += len(rows)
            rows = []
    if rows:
        yield RecordBatch(str(path), start, rows)


def _read_txt(path: Path, batch_size: int) -> Iterator[RecordBatch]:
    rows: list[Any] = []
    start = 0
    with _text_stream(path) as handle:
        for line in handle:
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            rows.append({"text": line})
            if len(rows) == batch_size:
                yield RecordBatch(str(path), start, rows)
                start += len(rows)
                rows = []
    if rows:
        yield RecordBatch(str(path), start, rows)


_READERS = {
    "parquet": _read_parquet,
    "arrow": _read_arrow,
    "csv": _read_csv,
    "json": _read_json,
    "jsonl": _read_json,
    "txt": _read_txt,
}


def iter_record_batches(path: Path, batch_size: int = 2048) -> Iterator[RecordBatch]:
    """Stream one data file as :class:`RecordBatch` es (see the table in the module docstring).

    Raises:
        SourceError: unknown suffix, or a JSON list with a syntax error.
        FileNotFoundError: ``path`` does not exist.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    fmt = detect_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    yield from _READERS[fmt](path, batch_size)
