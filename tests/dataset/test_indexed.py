"""Round trips of the Megatron .bin/.idx writer and reader, checked against the MindSpeed files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from packft.core.atomic import Stage
from packft.dataset.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    IndexedFormatError,
    open_sft_dataset,
    optimal_dtype,
    sft_prefix,
)


def _write(prefix: Path, sequences, dtype=np.int32) -> None:
    with Stage(prefix.parent) as stage, IndexedDatasetWriter(prefix, stage, dtype) as writer:
        for seq in sequences:
            writer.add(seq)
        writer.finalize()
        stage.commit()


def test_worked_example_bytes(tmp_path: Path) -> None:
    prefix = tmp_path / "x"
    _write(prefix, [[5, 6, 7], [8]])
    idx = (tmp_path / "x.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<QBQQ", idx[9:34]) == (1, 4, 2, 3)
    assert np.frombuffer(idx, np.int32, 2, 34).tolist() == [3, 1]
    assert np.frombuffer(idx, np.int64, 2, 42).tolist() == [0, 12]
    assert np.frombuffer(idx, np.int64, 3, 58).tolist() == [0, 1, 2]
    assert len(idx) == 34 + 12 * 2 + 8 * 3
    assert (tmp_path / "x.bin").read_bytes() == np.array([5, 6, 7, 8], np.int32).tobytes()


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_round_trip(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30000, size=int(n)) for n in rng.integers(0, 50, size=40)]
    _write(tmp_path / "r", seqs, dtype)
    ds = IndexedDataset(tmp_path / "r")
    assert len(ds) == 40 and ds.dtype == np.dtype(dtype)
    for i, seq in enumerate(seqs):
        assert ds[i].tolist() == seq.tolist()
    assert ds[-1].tolist() == seqs[-1].tolist()


def test_value_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="do not fit"),
        Stage(tmp_path) as stage,
        IndexedDatasetWriter(tmp_path / "u", stage, np.uint16) as w,
    ):
        w.add([-100, 5])
    assert not list(tmp_path.iterdir()), "an aborted write must leave no files"


def test_nothing_at_final_names_until_commit(tmp_path: Path) -> None:
    _write(tmp_path / "d", [[1, 2, 3]])
    before = (tmp_path / "d.bin").read_bytes()
    with Stage(tmp_path) as stage:
        writer = IndexedDatasetWriter(tmp_path / "d", stage)
        writer.add([9, 9, 9, 9])
        writer.finalize()
        assert (tmp_path / "d.bin").read_bytes() == before  # old dataset still intact
        stage.commit()
    assert IndexedDataset(tmp_path / "d")[0].tolist() == [9, 9, 9, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]


def test_corrupt_files_raise_named_errors(tmp_path: Path) -> None:
    _write(tmp_path / "c", [[1, 2], [3]])
    bin_path = tmp_path / "c.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
    with pytest.raises(IndexedFormatError, match="index describes"):
        IndexedDataset(tmp_path / "c")
    (tmp_path / "c.idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(IndexedFormatError, match="magic"):
        IndexedDataset(tmp_path / "c")


def test_optimal_dtype() -> None:
    assert optimal_dtype(32000) is np.uint16
    assert optimal_dtype(151936) is np.int32


def test_reads_mindspeed_reference(reference_dir: Path) -> None:
    prefix = reference_dir / "mindspeed_alpaca_llama2_nopack4096" / "alpaca"
    data = open_sft_dataset(prefix)
    ids, mask, labels = data["input_ids"], data["attention_mask"], data["labels"]
    assert len(ids) == 999 and ids.dtype == np.int32
    assert ids[0][0] == 1  # <s>
    assert set(np.unique(mask[0]).tolist()) == {1}
    assert labels[0][0] == -100


def test_rewrite_of_mindspeed_reference_is_byte_identical(
    reference_dir: Path, tmp_path: Path
) -> None:
    src = reference_dir / "mindspeed_alpaca_llama2_nopack4096" / "alpaca"
    for key, dataset in open_sft_dataset(src).items():
        out = tmp_path / f"copy_{key}"
        _write(out, (dataset[i] for i in range(len(dataset))))
        for ext in (".bin", ".idx"):
            assert (
                Path(f"{out}{ext}").read_bytes()
                == Path(f"{sft_prefix(src, key)}{ext}").read_bytes()
            )


def test_empty_documents_repeat_the_index(tmp_path: Path) -> None:
    with Stage(tmp_path) as stage, IndexedDatasetWriter(tmp_path / "e", stage) as writer:
        writer.add([1, 2])
        writer.end_document()  # a dropped sample, as MindSpeed records it
        writer.add([3])
        writer.finalize()
        stage.commit()
    ds = IndexedDataset(tmp_path / "e")
    assert ds.document_indices.tolist() == [0, 1, 1, 2]
    assert [ds[i].tolist() for i in range(len(ds))] == [[1, 2], [3]]
