"""Rows and files against an independent .bin/.idx reader and a simulation of MindSpeed's packer."""

from __future__ import annotations

import glob
import json
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from packft.core.writers import LOCK_RE, TEMP_RE, sweep
from packft.dataset.integrity import plan_path, sidecar_path
from packft.dataset.rows import write_sft_dataset
from packft.pack.plan import PackPlan, plan_packing, plan_unpacked
from packft.tokenize.shards import (
    SCHEMA,
    ShardError,
    ShardReader,
    TokenShards,
    read_header,
    read_stats,
    tokenizer_ids,
)
from packft.tokenize.shards import write_shard as write_shard_file
from tests.helpers.mindspeed_reference import KEYS, mindspeed_pack_files, read_megatron, read_sft

# --- fixtures -----------------------------------------------------------------------------------


def make_samples(n: int, seed: int, max_len: int = 60) -> list[tuple[list[int], list[int]]]:
    """Samples shaped like SFT data: a prompt (label -100) then an answer ending in eos=2."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        prompt = [1, *rng.integers(3, 32000, int(rng.integers(1, max_len // 2))).tolist()]
        answer = [*rng.integers(3, 32000, int(rng.integers(0, max_len // 2))).tolist(), 2]
        samples.append((prompt + answer, [-100] * len(prompt) + answer))
    return samples


def write_shard(path: Path, samples, batch: int = 7) -> Path:
    """A shard in packft's format (one record batch per ``batch`` samples, then the stats)."""
    batches = [
        pa.record_batch(
            [
                pa.array([s[0] for s in samples[at : at + batch]], pa.list_(pa.int32())),
                pa.array([s[1] for s in samples[at : at + batch]], pa.list_(pa.int32())),
                pa.array(range(at, min(at + batch, len(samples))), pa.int64()),
            ],
            schema=SCHEMA,
        )
        for at in range(0, len(samples), batch)
    ]
    return write_shard_file(path, {"pad_id": 0}, batches, lambda: {"written": len(samples)})


@pytest.fixture
def shards(tmp_path: Path):
    samples = make_samples(90, 0) + [(list(range(3, 50)), [-100] * 10 + list(range(13, 50)))]
    paths = [
        write_shard(tmp_path / "a.arrow", samples[:40]),
        write_shard(tmp_path / "b.arrow", samples[40:], batch=11),
    ]
    with TokenShards(paths) as reader:
        yield reader, samples


# --- tests --------------------------------------------------------------------------------------


def test_token_shards_read_back_exactly(shards) -> None:
    reader, samples = shards
    assert reader.num_samples == len(samples)
    assert reader.lengths.tolist() == [len(s[0]) for s in samples]
    for i in (0, 39, 40, 90):
        ids, labels = reader.read(i)
        assert ids.tolist() == samples[i][0] and labels.tolist() == samples[i][1]
    ids, labels = reader.read(90, 5, 3)
    assert ids.tolist() == samples[90][0][5:8]
    assert reader.lengths.dtype == np.int32
    assert reader.source_rows.tolist() == list(range(40)) + list(range(51))
    # the same reader serves one shard, with its header and stats
    one = ShardReader(reader.paths[1])
    assert one.num_samples == 51 and one.sample(50)[0].tolist() == samples[90][0]
    assert one.header == {"pad_id": 0} and one.stats == {"written": 51}
    assert read_header(reader.paths[0]) == {"pad_id": 0} and read_stats(reader.paths[0]) == {
        "written": 40
    }
    one.close()


def test_token_shards_keep_twelve_bytes_per_sample(shards) -> None:
    """Length, start in its batch and batch index (int32 each); file offsets per batch only."""
    reader, samples = shards
    per_sample = [v for v in vars(reader).values()
                  if isinstance(v, np.ndarray) and len(v) == reader.num_samples]  # fmt: skip
    assert sum(a.nbytes for a in per_sample) == 12 * len(samples)
    assert all(a.dtype == np.int32 for a in per_sample)
    assert [reader.path_of(i).name for i in (0, 39, 40, 90)] == ["a.arrow"] * 2 + ["b.arrow"] * 2


@pytest.mark.parametrize("window", [1, 2, 64])
def test_a_shard_is_scanned_through_a_fresh_map_per_window(shards, monkeypatch, window) -> None:
    """Pages read through one map stay in the RSS until it goes: the scan maps each shard again
    every SCAN_WINDOW batches, and what it finds does not depend on the window."""
    import math

    import packft.tokenize.shards as shard_module

    reader, samples = shards
    maps: list[str] = []
    real_map = pa.memory_map
    monkeypatch.setattr(shard_module, "SCAN_WINDOW", window)
    monkeypatch.setattr(pa, "memory_map", lambda path, *a: maps.append(path) or real_map(path, *a))
    with TokenShards(reader.paths) as again:
        assert again.lengths.tolist() == reader.lengths.tolist()
        assert all(
            np.array_equal(x, y) for x, y in zip(again.read(90), reader.read(90), strict=True)
        )
        assert [again.read(i)[0].tolist() for i in range(len(samples))] == [s[0] for s in samples]
    for path in reader.paths:
        batches = pa.ipc.open_file(str(path)).num_record_batches - 1  # the last holds the stats
        assert maps.count(str(path)) == math.ceil(batches / window)


def test_unfinished_foreign_and_failed_shards(tmp_path: Path) -> None:
    # header but no trailing stats batch: what a killed writer without the rename would leave
    half = tmp_path / "half.arrow"
    schema = SCHEMA.with_metadata({b"packft.header": b"{}"})
    with pa.ipc.new_file(str(half), schema) as w:
        w.write_batch(pa.RecordBatch.from_pylist([], schema=SCHEMA))
    with pytest.raises(ShardError, match="no stats batch"):
        TokenShards([half])
    with pytest.raises(ShardError, match="not an Arrow IPC file"):
        TokenShards([_text(tmp_path / "x.arrow")])
    with pytest.raises(FileNotFoundError, match="packft preprocess"):
        ShardReader(tmp_path / "missing.arrow")

    def boom():
        yield from ()
        raise RuntimeError("tokenizer died")

    with pytest.raises(RuntimeError, match="tokenizer died"):
        write_shard_file(tmp_path / "out" / "s.arrow", {}, boom(), dict)
    assert list((tmp_path / "out").iterdir()) == []  # no shard, no temporary file


def _text(path: Path) -> Path:
    path.write_text("not arrow")
    return path


def test_tokenizer_ids_from_headers(tmp_path: Path) -> None:
    ids = {"pad_id": 0, "eos_id": 2, "vocab_size": 32000}
    a = write_shard_file(tmp_path / "a.arrow", ids, [], dict)
    b = write_shard_file(tmp_path / "b.arrow", ids, [], dict)
    assert tokenizer_ids([a, b]) == ids
    old = write_shard_file(tmp_path / "old.arrow", {"template": "llama2"}, [], dict)
    assert tokenizer_ids([a, old]) is None  # an old shard: the caller loads the tokenizer
    other = write_shard_file(tmp_path / "c.arrow", {**ids, "pad_id": 7}, [], dict)
    with pytest.raises(ShardError, match="one tokenizer"):
        tokenizer_ids([a, other])


@pytest.mark.parametrize("neat", [False, True])
def test_packed_rows_hold_every_sample_intact(tmp_path: Path, shards, neat: bool) -> None:
    reader, samples = shards
    seq = 128
    plan = plan_packing(reader.lengths, seq - 1, "bfd", seed=3)
    prefix = tmp_path / "out" / "ds"
    prefix.parent.mkdir()
    stats = write_sft_dataset(
        prefix, reader, plan, seq_length=seq, pad_id=0, neat_pack=neat, sidecar={"config": {"x": 1}}
    )
    data = read_sft(prefix)
    assert len(data["input_ids"]) == plan.num_rows == stats.rows
    seen = defaultdict(int)
    for r in range(plan.num_rows):
        ids, mask, labels = (data[k][r] for k in KEYS)
        assert len(ids) == len(mask) == len(labels) == seq
        at = 0
        for k, i in enumerate(plan.row(r)[0].tolist()):
            want_ids, want_labels = samples[i]
            n = len(want_ids)
            assert ids[at : at + n].tolist() == want_ids
            assert labels[at] == -100 and labels[at + 1 : at + n].tolist() == want_labels[1:]
            assert mask[at : at + n].tolist() == [k + 1 if neat else 1] * n
            seen[i] += 1
            at += n
        assert at < seq  # capacity seq-1: at least one pad
        assert np.all(ids[at:] == 0) and np.all(labels[at:] == -100)
        assert np.all(mask[at:] == (0 if neat else 1))
    assert sorted(seen) == list(range(len(samples))) and set(seen.values()) == {1}
    total = sum(len(s[0]) for s in samples)
    assert stats.total_tokens == total
    assert stats.supervised_tokens == sum(
        int(np.count_nonzero(lab != -100)) for lab in data["labels"]
    )
    assert stats.efficiency == pytest.approx(total / (plan.num_rows * seq))
    side = json.loads(sidecar_path(prefix).read_text())
    assert side["config"] == {"x": 1} and side["stats"]["rows"] == plan.num_rows
    assert sum(side["stats"]["samples_per_row_histogram"].values()) == plan.num_rows
    back = PackPlan.load(plan_path(prefix))
    assert np.array_equal(back.items, plan.items)
    # MindSpeed's reader globs {prefix}_packed_*_document*: only the six data files match
    matched = sorted(Path(p).name for p in glob.glob(f"{prefix}_packed_*_document*"))
    assert matched == sorted(f"ds_packed_{k}_document.{e}" for k in KEYS for e in ("bin", "idx"))
    # plus the commit lock (hidden, empty, kept: see packft.core.atomic); no temporaries are left
    assert sorted(p.name for p in prefix.parent.iterdir()) == sorted(
        [*matched, "ds.packft.json", "ds.packft.plan.npz", ".ds.packft.lock"]
    )


def test_uint16_input_ids(tmp_path: Path, shards) -> None:
    reader, _ = shards
    plan = plan_packing(reader.lengths, 255, "bfd")
    write_sft_dataset(tmp_path / "u", reader, plan, seq_length=256, pad_id=2, ids_dtype=np.uint16)
    dtype, seqs, _ = read_megatron(f"{tmp_path / 'u'}_packed_input_ids_document")
    assert dtype == np.dtype("<u2") and len(seqs[0]) == 256


def test_ids_outside_the_vocabulary_are_refused_while_writing(tmp_path: Path, shards) -> None:
    from packft.core.errors import IntegrityError

    reader, samples = shards
    top = max(max(ids) for ids, _ in samples)  # a vocabulary one id too small: a corrupt shard
    plan = plan_packing(reader.lengths, 255, "bfd")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match=f"token id {top} is outside the vocabulary of {top}"):
        write_sft_dataset(out / "v", reader, plan, seq_length=256, pad_id=2, vocab_size=top)
    assert list(out.iterdir()) == []  # nothing written, no temporary left
    write_sft_dataset(out / "v", reader, plan, seq_length=256, pad_id=2, vocab_size=top + 1)
    assert json.loads(sidecar_path(out / "v").read_text())["vocab_size"] == top + 1


def test_unpacked_one_sample_per_sequence(tmp_path: Path, shards) -> None:
    reader, samples = shards
    plan = plan_unpacked(reader.lengths, 40 - 1, overlong="drop")
    write_sft_dataset(tmp_path / "np", reader, plan, seq_length=40, pad_id=0, pack=False)
    data = read_sft(tmp_path / "np", documents=len(samples))  # dropped = empty documents
    kept = [s for s in samples if len(s[0]) < 40]
    assert len(kept) < len(samples)
    assert [x.tolist() for x in data["input_ids"]] == [s[0] for s in kept]
    assert [x.tolist() for x in data["labels"]] == [s[1] for s in kept]
    assert all(np.all(m == 1) for m in data["attention_mask"])


def test_failed_write_leaves_previous_dataset(tmp_path: Path, shards) -> None:
    reader, _ = shards
    prefix = tmp_path / "keep"
    plan = plan_packing(reader.lengths, 127, "bfd")
    write_sft_dataset(prefix, reader, plan, seq_length=128, pad_id=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    bad = plan_packing(np.append(reader.lengths, 5), 127, "bfd")  # refers to a missing sample
    with pytest.raises(IndexError):
        write_sft_dataset(prefix, reader, bad, seq_length=128, pad_id=0)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # no temporary files left, old files untouched


# --- MindSpeed parity: a simulation of its packer written from its documented behaviour ---------


@pytest.mark.parametrize("neat", [False, True])
def test_knapsack_drop_is_byte_identical_to_mindspeed(tmp_path: Path, neat: bool) -> None:
    # many equal lengths (LIFO tie-break matters) and some overlong samples
    samples = make_samples(300, 1, max_len=40)
    samples += [(s[0] * 3, s[1] * 3) for s in samples[:20]]
    seq = 64
    write_shard(tmp_path / "s.arrow", samples)
    with TokenShards([tmp_path / "s.arrow"]) as reader:
        # MindSpeed drops overlong under --pack and cuts them to seq-1 under --neat-pack
        plan = plan_packing(
            reader.lengths, seq - 1, "knapsack", overlong="truncate" if neat else "drop"
        )
        write_sft_dataset(tmp_path / "ours", reader, plan, seq_length=seq, pad_id=0, neat_pack=neat)
    for key, (bin_bytes, idx_bytes) in mindspeed_pack_files(samples, seq, neat, 0).items():
        ours = f"{tmp_path / 'ours'}_packed_{key}_document"
        assert Path(ours + ".idx").read_bytes() == idx_bytes, key
        assert Path(ours + ".bin").read_bytes() == bin_bytes, key


def mindspeed_unpacked_files(samples, seq: int) -> dict[str, tuple[bytes, bytes]]:
    """What MindSpeed writes without --pack: each sample in input order as one sequence and one
    document, except samples of seq tokens or more, which add no sequence but still close a
    document (so the document index repeats); all-ones mask; int32."""
    out = {k: [] for k in KEYS}
    docs = [0]
    for ids, labels in samples:
        if len(ids) < seq:
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["attention_mask"].append([1] * len(ids))
        docs.append(len(out["input_ids"]))
    files = {}
    for key, seqs in out.items():
        n, lens = len(seqs), [len(x) for x in seqs]
        idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, n, len(docs))
        idx += struct.pack(f"<{n}i", *lens)
        idx += struct.pack(f"<{n}q", *np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int) * 4)
        idx += struct.pack(f"<{len(docs)}q", *docs)
        files[key] = (struct.pack(f"<{sum(lens)}i", *[t for x in seqs for t in x]), idx)
    return files


def test_unpacked_drop_is_byte_identical_to_mindspeed(tmp_path: Path) -> None:
    samples = make_samples(120, 3, max_len=40)
    samples[5] = (samples[5][0] * 4, samples[5][1] * 4)  # overlong, early
    samples[-1] = (samples[-1][0] * 4, samples[-1][1] * 4)  # overlong, last
    seq = 48
    assert sum(len(ids) >= seq for ids, _ in samples) >= 2
    write_shard(tmp_path / "s.arrow", samples)
    with TokenShards([tmp_path / "s.arrow"]) as reader:
        plan = plan_unpacked(reader.lengths, seq - 1, overlong="drop")
        write_sft_dataset(tmp_path / "ours", reader, plan, seq_length=seq, pad_id=0, pack=False)
    for key, (bin_bytes, idx_bytes) in mindspeed_unpacked_files(samples, seq).items():
        ours = f"{tmp_path / 'ours'}_packed_{key}_document"
        assert Path(ours + ".idx").read_bytes() == idx_bytes, key
        assert Path(ours + ".bin").read_bytes() == bin_bytes, key


KILL_CHILD = """
import sys, time
from pathlib import Path
import numpy as np
from packft.pack import plan_packing
from packft.dataset.rows import write_sft_dataset
from packft.tokenize.shards import TokenShards
shard, prefix, ready = sys.argv[1:4]
with TokenShards([Path(shard)]) as reader:
    plan = plan_packing(reader.lengths, 63, "bfd", seed=9)
    def progress(n):
        Path(ready).write_text("mid-write")
        time.sleep(60)  # killed here, with every temporary file half written
    write_sft_dataset(prefix, reader, plan, seq_length=64, pad_id=0, progress=progress)
"""


def test_sigkill_mid_write_leaves_previous_dataset(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    samples = make_samples(3000, 5, max_len=40)
    shard = write_shard(tmp_path / "s.arrow", samples, batch=500)
    out = tmp_path / "out"
    out.mkdir()
    with TokenShards([shard]) as reader:
        write_sft_dataset(out / "ds", reader, plan_packing(reader.lengths, 63, "bfd"),
                          seq_length=64, pad_id=0)  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(shard), str(out / "ds"),
                              str(ready)])  # fmt: skip
    deadline = time.time() + 60
    while not ready.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the child never reached the middle of the write"
    child.kill()
    child.wait()

    def dead_writer(name: str) -> bool:  # a temporary or the writer lock of the killed run
        return bool(TEMP_RE.match(name) or LOCK_RE.match(name))

    after = {p.name: p.read_bytes() for p in out.iterdir() if not dead_writer(p.name)}
    assert after == before  # the previous complete dataset, sidecar included, is untouched
    leftovers = [p.name for p in out.iterdir() if dead_writer(p.name)]
    assert leftovers and all(name.startswith(".") for name in leftovers)  # hidden temporaries
    assert sorted(p.name for p in sweep(out)) == sorted(leftovers)  # the next run removes them
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(Path(p).name for p in glob.glob(f"{out / 'ds'}_packed_*_document*")) == sorted(
        f"ds_packed_{k}_document.{e}" for k in KEYS for e in ("bin", "idx"))  # fmt: skip
