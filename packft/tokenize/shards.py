"""The tokenized shard format: one Arrow IPC file per input file, written once, read by ``pread``.

Layout of a shard (an Arrow IPC *file*, uncompressed)::

    schema      input_ids: list<int32>, labels: list<int32>, source_row: int64
                metadata  packft.header = JSON {template, tokenizer_sha256, input_sha256,
                          options, packft_version, pad_id, eos_id, vocab_size}
    batch 0..k  one record batch per tokenized input batch; sample i of the shard is row i
                (batches concatenated); labels are -100 where not trained
    batch k+1   empty; custom metadata packft.stats = JSON counts of the run (samples_in,
                valid, rejected, truncated, dropped, written, tokens, ...)

The header is known before the first token (what the run depends on); the stats only at the
end, hence the trailing empty batch. A file without that batch was not finished and is refused.
``pad_id``/``eos_id``/``vocab_size`` (``len(tokenizer)``) let the write step pad rows and pick
the ``input_ids`` dtype without loading the tokenizer (shards written before they existed lack
them; callers then load it).

Worked example: two samples ``[1 5 6 2]`` (labels ``[-100 -100 6 2]``) and ``[1 7 2]`` from
input rows 0 and 2 give one data batch whose ``input_ids`` list offsets are ``[0 4 7]`` and
whose value buffer is ``1 5 6 2 1 7 2`` (int32); :class:`TokenShards` finds that buffer's file
offset ``b`` once, so sample 1's ids are the 12 bytes at ``b + 4*4``.

Reading: :class:`TokenShards` opens any number of shards, maps each just long enough to read the
schema and the list offsets, then unmaps it. 12 bytes per sample are kept (int32 length, int32
start in its batch's value buffer: Arrow's own list offsets, int32 batch index); the file
offsets of each batch's two value buffers and its shard are kept once per batch, and
``source_row`` is read again only when asked for (the planner and the writer never are). Token data is fetched per sample with ``os.pread`` at those
offsets. Why not keep the map: pages of a mapped file that are touched count toward the
process's RSS until unmapped, so a writer that gathers every sample of a multi-GiB dataset
through a map grows to the dataset's size; with ``pread`` the kernel's page cache holds the
data and the process holds a few row buffers (benchmarks/bench_preprocess.py measured the write
step's process flat at ~0.55 GiB, mostly transformers, for 100k and 400k samples). Reading one
sample (ids and labels: two ``pread`` calls, ~225 tokens, page cache warm) takes ~2.6 us here.

Writing: :func:`write_shard` streams record batches into a temporary file in the target
directory, appends the stats batch, fsyncs and renames, so a shard path that exists is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

HEADER_KEY = b"packft.header"
STATS_KEY = b"packft.stats"
TOKENIZER_KEYS = ("pad_id", "eos_id", "vocab_size")
"""Header fields that spare the write step a tokenizer load (absent in older shards)."""
SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("source_row", pa.int64()),
    ]
)


class ShardError(ValueError):
    """A file that is not a complete packft tokenize shard."""


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """int32 concatenation (an empty int32 array for none)."""
    return np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)


# --- writing -----------------------------------------------------------------------------------


def record_batch(
    ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, source_rows: np.ndarray
) -> pa.RecordBatch:
    """One data batch: sample i is ``ids[offsets[i]:offsets[i+1]]`` (labels likewise)."""
    off = pa.array(np.asarray(offsets).astype(np.int32))
    return pa.record_batch(
        [
            pa.ListArray.from_arrays(off, pa.array(np.asarray(ids, np.int32))),
            pa.ListArray.from_arrays(off, pa.array(np.asarray(labels, np.int32))),
            pa.array(np.asarray(source_rows, np.int64)),
        ],
        schema=SCHEMA,
    )


def write_shard(
    out_path: str | Path,
    header: dict[str, Any],
    batches: Iterable[pa.RecordBatch],
    final_stats: Callable[[], dict[str, Any]],
) -> Path:
    """Write ``batches`` and then ``final_stats()`` into a shard at ``out_path``, atomically.

    ``final_stats`` is called after the last batch was written (counts accumulate while the
    batches are produced). On any exception nothing is left at ``out_path``.
    """
    from packft.core.atomic import atomic_writer

    out_path = Path(out_path)
    schema = SCHEMA.with_metadata({HEADER_KEY: json.dumps(header, sort_keys=True)})
    with atomic_writer(out_path) as handle, ipc.new_file(handle, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
        stats = json.dumps(final_stats(), sort_keys=True)
        empty = pa.RecordBatch.from_pylist([], schema=SCHEMA)
        writer.write_batch(empty, custom_metadata={STATS_KEY: stats})
    return out_path


# --- reading -----------------------------------------------------------------------------------


def _open(path: Path) -> tuple[pa.MemoryMappedFile, ipc.RecordBatchFileReader, dict, dict]:
    """Map ``path`` and check it is a finished shard: (map, reader, header, stats)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenize shard; run `packft preprocess`")
    source = pa.memory_map(str(path))
    try:
        try:
            reader = ipc.open_file(source)
        except pa.ArrowInvalid as exc:
            raise ShardError(f"{path} is not an Arrow IPC file: {exc}") from None
        meta = reader.schema.metadata or {}
        if HEADER_KEY not in meta or not reader.schema.remove_metadata().equals(SCHEMA):
            raise ShardError(f"{path} is not a packft tokenize shard (schema {reader.schema})")
        last = reader.get_batch_with_custom_metadata(reader.num_record_batches - 1)
        if last.custom_metadata is None or STATS_KEY not in last.custom_metadata:
            raise ShardError(f"{path} has no stats batch (an interrupted or foreign write)")
        header = json.loads(meta[HEADER_KEY])
        stats = json.loads(last.custom_metadata[STATS_KEY])
    except BaseException:
        source.close()
        raise
    return source, reader, header, stats


def _view(array: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """Zero-copy numpy view of a null-free fixed-width Arrow array (``to_numpy`` imports pandas)."""
    size = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * size)


@dataclass(frozen=True)
class _Batch:
    """Where one data batch's token values start in its shard file (byte offsets)."""

    shard: int
    ids_at: int
    labels_at: int


def _batch_part(
    path: Path, reader: ipc.RecordBatchFileReader, base: pa.Buffer, b: int, shard: int
) -> tuple[_Batch, np.ndarray] | None:
    """Batch ``b``'s file offsets and a copy of its list offsets (None: an empty batch)."""
    batch = reader.get_batch(b)
    if batch.num_rows == 0:
        return None
    found = []
    for name in ("input_ids", "labels"):
        col = batch.column(name)
        at = col.values.buffers()[1].address - base.address + 4 * col.values.offset
        if not 0 <= at <= base.size:
            raise ShardError(f"{path}: compressed Arrow IPC is not supported")
        found.append((at, _view(col.offsets, np.int32)))
    (ids_at, offsets), (labels_at, label_offsets) = found
    if not np.array_equal(offsets, label_offsets):
        raise ShardError(f"{path}: input_ids and labels lengths differ in batch {b}")
    return _Batch(shard, ids_at, labels_at), offsets.copy()  # a copy: the map goes


SCAN_WINDOW = 64
"""Batches read through one map of a shard while scanning it (see :func:`_scan`)."""


def _scan(path: Path, shard: int) -> tuple[dict, dict, list[tuple[_Batch, np.ndarray]]]:
    """Header, stats and per data batch: its file offsets and its list offsets (int32, n + 1).

    The shard is mapped afresh every :data:`SCAN_WINDOW` batches: each page read through a map
    brings its cached neighbours along (the kernel's fault-around) and all of them count toward
    the RSS until the map goes: one map over a shard of millions of samples grew by over 100 MiB
    (README, Benchmarks); per window it is a few MiB, whatever the shard's size.
    """
    source, reader, header, stats = _open(path)
    count = reader.num_record_batches - 1
    parts = []
    try:
        for first in range(0, count, SCAN_WINDOW):
            if first:  # drop the last map (and with it the pages it touched), then map again
                del reader
                source.close()
                source = pa.memory_map(str(path))
                reader = ipc.open_file(source)
                if reader.num_record_batches - 1 != count:
                    raise ShardError(f"{path} changed while it was read; run again")
            base = source.read_buffer()  # the whole map; only addresses are taken from it
            for b in range(first, min(first + SCAN_WINDOW, count)):
                part = _batch_part(path, reader, base, b, shard)
                if part is not None:
                    parts.append(part)
            del base
        return header, stats, parts
    finally:
        source.close()


def _source_rows(path: Path) -> np.ndarray:
    """int64 input row of every sample of one shard (read on request, not kept)."""
    source, reader, _, _ = _open(path)
    try:
        rows = [
            _view(reader.get_batch(b).column("source_row"), np.int64).copy()
            for b in range(reader.num_record_batches - 1)
        ]
    finally:
        source.close()
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


class TokenShards:
    """Samples of one or more shards (global index = shards concatenated in order), by ``pread``.

    Opening reads metadata and list offsets only; nothing stays mapped and no token is cached,
    so reading any number of samples keeps memory flat (see the module docstring).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        single = isinstance(paths, str | Path)
        self.paths = [Path(paths)] if single else [Path(p) for p in paths]
        self.headers: list[dict[str, Any]] = []
        self.shard_stats: list[dict[str, Any]] = []
        self._fds: list[int] = []
        parts: list[tuple[_Batch, np.ndarray]] = []
        try:
            for s, path in enumerate(self.paths):
                header, stats, found = _scan(path, s)
                self.headers.append(header)
                self.shard_stats.append(stats)
                parts += found
                self._fds.append(os.open(path, os.O_RDONLY))
        except BaseException:
            self.close()
            raise
        self._batches = [batch for batch, _ in parts]
        sizes = np.array([len(offsets) - 1 for _, offsets in parts], np.int64)
        if len(parts) > np.iinfo(np.int32).max:
            raise ShardError(f"{len(parts)} record batches: more than an int32 batch index holds")
        self.lengths: np.ndarray = _concat([np.diff(o) for _, o in parts])
        """int32 tokens per sample."""
        self._start = _concat([o[:-1] for _, o in parts])  # int32: Arrow's list offsets
        self._batch = np.repeat(np.arange(len(parts), dtype=np.int32), sizes)

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def read(
        self, i: int, start: int = 0, count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of sample ``i``, tokens ``start:start+count``, as int32 arrays."""
        n = int(self.lengths[i]) - start if count is None else int(count)
        batch = self._batches[self._batch[i]]
        first = 4 * (int(self._start[i]) + start)
        fd = self._fds[batch.shard]
        ids = np.frombuffer(os.pread(fd, 4 * n, batch.ids_at + first), np.int32)
        labels = np.frombuffer(os.pread(fd, 4 * n, batch.labels_at + first), np.int32)
        if len(ids) != n or len(labels) != n:
            raise ShardError(f"short read of sample {i} in {self.paths[batch.shard]}")
        return ids, labels

    @property
    def source_rows(self) -> np.ndarray:
        """int64 row of each sample in its input file (read from the shards on each access:
        the planner and the writer do not need it, so it is not held per sample)."""
        rows = [_source_rows(path) for path in self.paths]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    def path_of(self, i: int) -> Path:
        """The shard file sample ``i`` comes from."""
        return self.paths[self._batches[self._batch[i]].shard]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of sample ``i`` (read-only int32 arrays)."""
        return self.read(i)

    def close(self) -> None:
        for fd in getattr(self, "_fds", []):
            os.close(fd)
        self._fds = []

    def __enter__(self) -> TokenShards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class ShardReader(TokenShards):
    """One shard (a :class:`TokenShards` of one path) with its ``header`` and ``stats``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(Path(path))
        self.path = self.paths[0]

    @property
    def header(self) -> dict[str, Any]:
        return self.headers[0]

    @property
    def stats(self) -> dict[str, Any]:
        return self.shard_stats[0]


def read_header(shard: str | Path) -> dict[str, Any]:
    """What a shard was made with (template, tokenizer ids, options, ...); no data is read."""
    source, _, header, _ = _open(Path(shard))
    source.close()
    return header


def read_stats(shard: str | Path) -> dict[str, Any]:
    """The counts a finished tokenize run stored in ``shard``; no data is read."""
    source, _, _, stats = _open(Path(shard))
    source.close()
    return stats


def read_lengths(shard: str | Path) -> np.ndarray:
    """int32 length of every sample of a shard (reads only the list offsets)."""
    with TokenShards(Path(shard)) as shards:
        return shards.lengths


def tokenizer_ids(shard_paths: Sequence[str | Path]) -> dict[str, int] | None:
    """The ``pad_id``/``eos_id``/``vocab_size`` all shards agree on; None if any lacks them.

    Raises:
        ShardError: the shards were made with different tokenizer ids (mixed tokenizers).
    """
    found: dict[str, int] | None = None
    for path in shard_paths:
        header = read_header(path)
        if any(header.get(k) is None for k in TOKENIZER_KEYS):
            return None
        ids = {k: int(header[k]) for k in TOKENIZER_KEYS}
        if found is not None and ids != found:
            raise ShardError(
                f"{path} was tokenized with {ids}, an earlier shard with {found}: the shards of "
                "one dataset must come from one tokenizer; re-run with --overwrite-cache"
            )
        found = ids
    return found
