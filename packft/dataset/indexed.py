"""Megatron MMap indexed datasets (``.bin`` + ``.idx``): a tiny exact writer and reader.

This is the on-disk format Megatron-LM and MindSpeed-LLM train from. ``.bin`` is the raw
concatenation of every sequence; ``.idx`` (little-endian) is::

    offset      size  content
    0           9     magic  b"MMIDIDX\\x00\\x00"
    9           8     uint64 version = 1
    17          1     uint8  dtype code (see DTYPE_CODES)
    18          8     uint64 N, number of sequences
    26          8     uint64 D, number of document indices (documents + 1)
    34          4N    int32  sequence lengths (in elements)
    34+4N       8N    int64  byte offset of each sequence in .bin (running sum, from 0)
    34+12N      8D    int64  document indices: 0, then the sequence count after each document

Worked example: sequences [5, 6, 7] and [8] as int32 give ``.bin`` = 16 bytes, lengths [3, 1],
pointers [0, 12], document indices [0, 1, 2] (one sequence per document, as MindSpeed writes SFT
data). MindSpeed's SFT files are ``{prefix}_packed_{input_ids,attention_mask,labels}_document``.

Writing streams: each ``add`` appends to the temporary ``.bin`` and remembers one length, so memory
is 4 + 8 bytes per sequence, not the data. The writer stages both files in the caller's
:class:`packft.core.atomic.Stage` (temporary names, hashed while written, fsynced by
``finalize``); nothing appears at the final names until the stage commits them with the other
files of the set. Reading memory-maps both files and returns numpy views (no copy).
"""

from __future__ import annotations

import struct
from array import array as typed_array
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from packft.core.atomic import Stage

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
SFT_KEYS = ("input_ids", "attention_mask", "labels")


class IndexedFormatError(ValueError):
    """A ``.idx``/``.bin`` pair that is not a valid Megatron MMap indexed dataset."""


def dtype_code(dtype: np.dtype | type[np.generic]) -> int:
    """The Megatron code of a numpy dtype; raises for dtypes the format cannot hold."""
    want = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == want:
            return code
    names = ", ".join(np.dtype(d).name for d in DTYPE_CODES.values())
    raise IndexedFormatError(
        f"dtype {want} cannot be stored in a Megatron dataset; use one of {names}"
    )


def optimal_dtype(vocab_size: int) -> type[np.generic]:
    """Megatron's ``DType.optimal_dtype``: uint16 when every id fits below 65500, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def sft_prefix(prefix: str | Path, key: str) -> str:
    """Path prefix (without ``.bin``/``.idx``) of one SFT field, as MindSpeed names it."""
    return f"{prefix}_packed_{key}_document"


def require_sft_files(prefix: str | Path, flag: str = "--data-path") -> None:
    """Raise one ``FileNotFoundError`` naming every missing file of the SFT set at ``prefix``
    (given as ``flag``), what is there instead and how to write it (before a trainer creates
    anything)."""
    wanted = [f"{sft_prefix(prefix, k)}.{ext}" for k in SFT_KEYS for ext in ("bin", "idx")]
    missing = [p for p in wanted if not Path(p).exists()]
    if missing:
        found = sorted(p.name for p in Path(prefix).parent.glob("*_packed_*_document.idx"))
        raise FileNotFoundError(
            f"{flag} {prefix}: missing {', '.join(missing)}; found there: "
            f"{found or 'nothing'}. Write it with `packft preprocess ... --output-prefix PREFIX` "
            "and pass that PREFIX"
        )


class IndexedDatasetWriter(AbstractContextManager["IndexedDatasetWriter"]):
    """Streams sequences into ``{prefix}.bin/.idx``; one ``add`` = one sequence = one document.

    Use as a context manager; ``finalize()`` writes the index and seals both files in ``stage``,
    whose ``commit`` puts them in place together with the other files of the set. If the block
    raises, the temporary files are removed and nothing at the final names changes.
    """

    def __init__(
        self, prefix: str | Path, stage: Stage, dtype: type[np.generic] = np.int32
    ) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.code = dtype_code(self.dtype)
        if not self.prefix.parent.is_dir():
            raise FileNotFoundError(
                f"output directory {self.prefix.parent} does not exist; create it first"
            )
        self._stage = stage
        self._bin_final = Path(f"{self.prefix}.bin")
        self._idx_final = Path(f"{self.prefix}.idx")
        self._bin: Any = stage.open(self._bin_final)
        # typed arrays, not lists: 4 + 8 bytes per sequence instead of ~70 (no int objects)
        self._lengths = typed_array("i")  # int32, as in the index
        self._documents = typed_array("q", [0])
        self._finalized = False

    def add(self, sequence: Sequence[int] | np.ndarray) -> None:
        """Append one sequence as its own document (what MindSpeed does for SFT rows)."""
        array = np.asarray(sequence)
        if array.ndim != 1:
            raise ValueError(f"a sequence must be 1-D, got shape {array.shape}")
        if array.dtype != self.dtype:
            cast = array.astype(self.dtype)
            if array.size and not np.array_equal(cast, array):
                raise ValueError(
                    f"values do not fit in {self.dtype} (min {array.min()}, max {array.max()})"
                )
            array = cast
        self._bin.write(np.ascontiguousarray(array).tobytes(order="C"))
        self._lengths.append(int(array.size))
        self._documents.append(len(self._lengths))

    def end_document(self) -> None:
        """Close an empty document: repeats the last document index, as MindSpeed does for every
        sample it drops while writing unpacked data (needed for byte-identical files)."""
        self._documents.append(len(self._lengths))

    def extend(self, sequences: Iterable[Sequence[int] | np.ndarray]) -> None:
        for sequence in sequences:
            self.add(sequence)

    def __len__(self) -> int:
        return len(self._lengths)

    def finalize(self) -> None:
        """Write the index and seal both files in the stage (fsynced, sizes and hashes
        recorded); the stage's ``commit`` renames them into place."""
        if self._finalized:
            raise RuntimeError(f"{self.prefix} was already finalized")
        self._stage.seal(self._bin_final)
        self._write_index(self._stage.open(self._idx_final))
        self._stage.seal(self._idx_final)
        self._finalized = True

    def _write_index(self, index: Any) -> None:
        lengths = np.frombuffer(self._lengths, dtype=np.intc).astype(np.int32, copy=False)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.frombuffer(self._documents, dtype=np.int64)
        index.write(MAGIC)
        index.write(struct.pack("<Q", VERSION))
        index.write(struct.pack("<B", self.code))
        index.write(struct.pack("<Q", len(lengths)))
        index.write(struct.pack("<Q", len(documents)))
        index.write(lengths.tobytes(order="C"))
        index.write(pointers.tobytes(order="C"))
        index.write(documents.tobytes(order="C"))

    def abort(self) -> None:
        """Drop the temporary files; the final names are untouched."""
        self._stage.discard(self._bin_final)
        self._stage.discard(self._idx_final)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class IndexedDataset:
    """Memory-mapped reader: ``ds[i]`` is a numpy view of sequence ``i``.

    Checks the magic, version, dtype code, that the index ends where the header says, that
    ``len(lengths) == document_indices[-1]`` (what Megatron asserts), and that ``.bin`` is
    exactly as long as the lengths say.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        idx_path, bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found (expected a Megatron .bin/.idx pair)")
        index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        if index.size < HEADER_SIZE or bytes(index[:9]) != MAGIC:
            raise IndexedFormatError(f"{idx_path} is not a Megatron MMap index (bad magic)")
        version, code, count, doc_count = struct.unpack("<QBQQ", bytes(index[9:HEADER_SIZE]))
        if version != VERSION:
            raise IndexedFormatError(f"{idx_path}: index version {version}, expected {VERSION}")
        if code not in DTYPE_CODES:
            raise IndexedFormatError(f"{idx_path}: unknown dtype code {code}")
        expected = HEADER_SIZE + 12 * count + 8 * doc_count
        if index.size < expected:
            raise IndexedFormatError(f"{idx_path}: truncated ({index.size} bytes, need {expected})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        self.lengths = np.frombuffer(index, np.int32, count, HEADER_SIZE)
        self.pointers = np.frombuffer(index, np.int64, count, HEADER_SIZE + 4 * count)
        self.document_indices = np.frombuffer(index, np.int64, doc_count, HEADER_SIZE + 12 * count)
        if doc_count == 0 or self.document_indices[-1] != count:
            raise IndexedFormatError(
                f"{idx_path}: document indices end at "
                f"{self.document_indices[-1] if doc_count else 'nothing'}, expected {count}"
            )
        data_bytes = int(self.lengths.sum(dtype=np.int64)) * self.dtype.itemsize
        if bin_path.stat().st_size != data_bytes:
            raise IndexedFormatError(
                f"{bin_path}: {bin_path.stat().st_size} bytes, the index describes {data_bytes}"
            )
        self._data = (
            np.memmap(bin_path, dtype=self.dtype, mode="r")
            if data_bytes
            else np.empty(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        i %= len(self)
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._data[start : start + int(self.lengths[i])]

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))


def open_sft_dataset(prefix: str | Path) -> dict[str, IndexedDataset]:
    """The three MindSpeed SFT fields of ``prefix``, checked to have matching sequence lengths."""
    datasets = {key: IndexedDataset(sft_prefix(prefix, key)) for key in SFT_KEYS}
    reference = datasets["input_ids"].lengths
    for key, dataset in datasets.items():
        if not np.array_equal(dataset.lengths, reference):
            raise IndexedFormatError(
                f"{sft_prefix(prefix, key)} has other sequence lengths than input_ids"
            )
    return datasets
