"""Independent references the tests compare packft with: a Megatron ``.bin/.idx`` reader written
from the format table (reference.md section 2), and straight transcriptions of MindSpeed-LLM's
tokenization (``_make_pairs``, LLaMA-Factory's ``infer_seqlen``), of its greedy knapsack packer
and of its ``--pack`` writer (benchmarks/bench_pack.py times the same knapsack as its baseline)."""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np

KEYS = ("input_ids", "attention_mask", "labels")
CODES = {1: "u1", 2: "i1", 3: "i2", 4: "i4", 5: "i8", 6: "f8", 7: "f4", 8: "u2"}
IGNORE = -100


def read_megatron(prefix: str) -> tuple[np.dtype, list[np.ndarray], np.ndarray]:
    idx = Path(prefix + ".idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    version, code, n, d = struct.unpack("<QBQQ", idx[9:34])
    assert version == 1
    dtype = np.dtype("<" + CODES[code])
    lengths = np.frombuffer(idx, "<i4", n, 34)
    pointers = np.frombuffer(idx, "<i8", n, 34 + 4 * n)
    docs = np.frombuffer(idx, "<i8", d, 34 + 12 * n)
    assert len(idx) == 34 + 12 * n + 8 * d
    assert docs[0] == 0 and docs[-1] == n
    expected = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * dtype.itemsize)])
    assert np.array_equal(pointers, expected[:-1])
    data = Path(prefix + ".bin").read_bytes()
    assert len(data) == expected[-1]
    seqs = [
        np.frombuffer(data, dtype, int(m), int(p)) for p, m in zip(pointers, lengths, strict=True)
    ]
    return dtype, seqs, docs


def read_sft(prefix: Path, documents: int | None = None) -> dict[str, list[np.ndarray]]:
    """The three fields; one sequence per document unless ``documents`` (with empty ones) given."""
    out = {}
    for key in KEYS:
        dtype, seqs, docs = read_megatron(f"{prefix}_packed_{key}_document")
        if documents is None:
            assert np.array_equal(docs, np.arange(len(seqs) + 1))  # one sequence per document
        else:
            assert len(docs) == documents + 1 and np.all(np.diff(docs) >= 0)
        assert dtype == (np.dtype("<i4") if key != "input_ids" else dtype)
        out[key] = seqs
    return out


def mindspeed_tokenize(conv, template, tok, cutoff, append_eod, pair_cutoff=None):
    """Straight transcription of MindSpeed: encode each piece alone, _make_pairs turn by turn,
    then (--neat-pack) LLaMA-Factory's infer_seqlen on each pair alone."""
    ids, labels, total = [], [], 0
    for turn in template.render(conv, tok):
        src, tgt = (
            [
                t
                for p in side
                for t in ([p] if isinstance(p, int) else tok.encode(p, add_special_tokens=False))
            ]
            for side in (turn.source, turn.target)
        )
        if total >= cutoff:
            break
        budget = cutoff - total
        s, t = len(src), len(tgt)
        max_t = max(int(budget * (t / (s + t))) if s + t else 0, 1)
        max_s = budget - min(max_t, t)
        src, tgt = src[:max_s], tgt[:max_t]
        total += len(src) + len(tgt)
        if pair_cutoff is not None:
            s, t = len(src), len(tgt)
            if t * 2 < pair_cutoff:
                max_t = pair_cutoff
            elif s * 2 < pair_cutoff:
                max_t = pair_cutoff - s
            else:
                max_t = int(pair_cutoff * (t / (s + t)))
            t = min(max_t, t)
            src, tgt = src[: min(max(pair_cutoff - t, 0), s)], tgt[:t]
        ids += src + tgt
        labels += [IGNORE] * len(src) + tgt
    if append_eod:
        ids, labels = ids + [tok.eos_token_id], labels + [tok.eos_token_id]
    return ids, labels


def mindspeed_knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """MindSpeed's packer as documented: sort ascending, each new row repeatedly takes the largest
    remaining length that fits (bisect + pop); sample ids per length are taken LIFO."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        by_length[n].append(i)
    numbers = sorted(lengths)
    rows = []
    while numbers:
        row, free = [], capacity
        while True:
            at = bisect.bisect(numbers, free) - 1
            if at < 0:
                break
            free -= numbers[at]
            row.append(by_length[numbers.pop(at)].pop())
        rows.append(row)
    return rows


def mindspeed_pack_files(
    samples, seq: int, neat: bool, pad_id: int
) -> dict[str, tuple[bytes, bytes]]:
    """What MindSpeed's --pack writes: drop len >= seq (cut to seq-1 with neat), sort ascending,
    greedy knapsack into seq-1 taking the largest that fits, equal lengths LIFO, neat mask =
    1-based sample index, pads: ids pad_id, mask 0 (neat) / 1, labels -100; int32 rows."""
    kept = []
    for ids, labels in samples:
        if len(ids) >= seq:
            if not neat:
                continue
            ids, labels = ids[: seq - 1], labels[: seq - 1]
        kept.append((ids, labels))
    rows = mindspeed_knapsack([len(ids) for ids, _ in kept], seq - 1)
    out = {k: [] for k in KEYS}
    for row in rows:
        ids = [t for i in row for t in kept[i][0]]
        labels = [t for i in row for t in kept[i][1]]
        mask = [k + 1 if neat else 1 for k, i in enumerate(row) for _ in kept[i][0]]
        pad = seq - len(ids)
        out["input_ids"].append(ids + [pad_id] * pad)
        out["labels"].append(labels + [-100] * pad)
        out["attention_mask"].append(mask + [0 if neat else 1] * pad)
    files = {}
    for key, seqs in out.items():
        n = len(seqs)
        idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, n, n + 1)
        idx += struct.pack(f"<{n}i", *[seq] * n)
        idx += struct.pack(f"<{n}q", *[4 * seq * r for r in range(n)])
        idx += struct.pack(f"<{n + 1}q", *range(n + 1))
        files[key] = (struct.pack(f"<{n * seq}i", *[t for s in seqs for t in s]), idx)
    return files
