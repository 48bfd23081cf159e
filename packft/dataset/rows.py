"""Build fixed-length rows from a plan and write MindSpeed's three SFT datasets, plan and sidecar.

Input: tokenized shards (:mod:`packft.tokenize.shards`; global sample index = shards concatenated in
order) and a
:class:`~packft.pack.plan.PackPlan`. Output, for ``--output-prefix P``::

    P_packed_{input_ids,attention_mask,labels}_document.{bin,idx}   (Megatron MMap, MindSpeed names)
    P.packft.plan.npz    row -> sample indices/pieces (outside MindSpeed's glob P_packed_*_document*)
    P.packft.json        sidecar: version, config, hashes, stats (written last)

A packed row (``pack=True``) is the plan's pieces concatenated, then padded to exactly
``seq_length``: ``input_ids`` pad = tokenizer pad (else eos); ``labels`` = -100 on padding and on
the first token of every piece, so nothing is trained to predict across a sample boundary;
``attention_mask`` = 1-based piece index in the row with 0 on padding (``neat_pack``) or all ones
(plain ``--pack``, as MindSpeed). Without ``pack`` each sample is its own unpadded sequence and
labels are written as tokenized. Example, seq_length 8, pieces [5 6 7] and [8 9], pad 0, neat::

    input_ids       5 6 7 8 9 0 0 0        labels  -100 l l -100 l -100 -100 -100
    attention_mask  1 1 1 2 2 0 0 0

Split pieces (``--overlong split``) are separate segments: a piece does not attend to the
earlier pieces of its sample, and its first label is -100 like any sample start.

Memory: tokens are fetched per piece with ``os.pread`` through
:class:`packft.tokenize.shards.TokenShards` (why not a map: see :mod:`packft.tokenize.shards`), so
peak RSS is a few row buffers plus O(samples) small index arrays, flat in dataset size. Crash
semantics: every file of the set (six data files, plan, the caller's rejects file, sidecar) is
staged in one journaled :class:`packft.core.atomic.Stage`
(:func:`packft.dataset.integrity.dataset_stage`): written under a hidden temporary name, hashed
while written and fsynced; then the journal decides the commit, the old sidecar goes, the files are
renamed and the new sidecar (with each file's size, sha256 and fingerprint, see
:mod:`packft.dataset.integrity`) comes last. A kill before the journal leaves the old set (the next
run removes the temporaries); a kill after it is rolled forward by the next packft process. A write
error removes every temporary and names the file and errno.

Cost: the tokenizer is not loaded for shards that carry the ids; timings of the whole job
(benchmarks/bench_preprocess.py, bench_integrity.py for this write step) are in the README.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packft.core.atomic import Stage
from packft.core.constants import IGNORE_INDEX
from packft.core.errors import IntegrityError
from packft.dataset.indexed import SFT_KEYS, IndexedDatasetWriter, sft_prefix
from packft.dataset.integrity import plan_path, sidecar_path
from packft.dataset.stats import RowStats
from packft.pack.plan import PackPlan, lower_bound_rows

if TYPE_CHECKING:
    from packft.tokenize.shards import TokenShards

__all__ = ["row_stats", "write_sft_dataset"]


def write_sft_dataset(
    prefix: str | Path,
    shards: TokenShards,
    plan: PackPlan,
    *,
    seq_length: int,
    pad_id: int,
    pack: bool = True,
    neat_pack: bool = False,
    ids_dtype: type[np.generic] = np.int32,
    sidecar: dict | None = None,
    progress: Callable[[int], None] | None = None,
    stage: Stage | None = None,
    vocab_size: int | None = None,
) -> RowStats:
    """Write rows of ``plan`` to the three SFT datasets, plan file and sidecar, as one commit.

    Args:
        prefix: MindSpeed's ``--output-prefix`` (files get ``_packed_{key}_document``).
        shards: the tokenized samples the plan's item indices refer to.
        plan: from :func:`~packft.pack.plan.plan_packing` (``plan_unpacked`` with ``pack=False``).
        seq_length: row length; pieces of a row must fit in it.
        pad_id: ``input_ids`` padding (tokenizer pad, else eos).
        pack: pad rows to ``seq_length`` (False: one unpadded sample per sequence).
        neat_pack: 1-based segment ids in ``attention_mask`` instead of ones.
        ids_dtype: dtype of ``input_ids`` (int32, or uint16 for ``--dtype optimal``).
        sidecar: extra JSON fields (config, hashes, ...); stats are added under ``"stats"``.
        progress: called with the number of rows written since the last call.
        stage: the dataset's stage (:func:`packft.dataset.integrity.dataset_stage`) when the caller
            stages more files of the set in it (the rejects file); default: a new one. The
            stage is committed here, the sidecar last.
        vocab_size: refuse token ids outside ``[0, vocab_size)`` (a corrupt shard) while writing.

    Returns:
        The :class:`RowStats` of what was written.

    Raises:
        IntegrityError: a shard holds an id outside the vocabulary.
        OSError: a write failed (named path and errno); every temporary file is removed.
    """
    from packft.dataset.integrity import dataset_stage

    prefix = Path(prefix)
    if pack and plan.capacity > seq_length:
        raise ValueError(f"plan capacity {plan.capacity} exceeds seq_length {seq_length}")
    with contextlib.ExitStack() as scope:
        if stage is None:
            stage = scope.enter_context(dataset_stage(prefix))
        try:
            writers = {
                key: IndexedDatasetWriter(
                    sft_prefix(prefix, key), stage, ids_dtype if key == "input_ids" else np.int32
                )
                for key in SFT_KEYS
            }
            supervised = _write_rows(writers, shards, plan, seq_length, pad_id, pack, neat_pack,
                                     ids_dtype, vocab_size, progress)  # fmt: skip
            for writer in writers.values():
                writer.finalize()
            stats = row_stats(plan, seq_length, pack, supervised)
            plan.save_to(stage.open(plan_path(prefix)))
            stage.seal(plan_path(prefix))
            payload = dict(sidecar or {})
            payload["stats"] = {**stats.model_dump(), **payload.get("stats", {})}  # caller's win
            if vocab_size is not None:
                payload["vocab_size"] = int(vocab_size)
            payload["files"] = {
                key: {e: stage.records[Path(f"{sft_prefix(prefix, key)}.{e}").name]["size"]
                      for e in ("bin", "idx")}
                for key in SFT_KEYS
            }  # fmt: skip
            payload["integrity"] = {
                "generation": uuid.uuid4().hex,
                "rows": plan.num_rows,
                "files": dict(stage.records),
            }
            out = stage.open(sidecar_path(prefix), "w")
            json.dump(payload, out, indent=1, sort_keys=False)
            out.write("\n")
            stage.seal(sidecar_path(prefix))
            stage.commit(marker=sidecar_path(prefix))
        except BaseException:
            stage.abort()
            raise
    return stats


def _write_rows(
    writers: dict[str, IndexedDatasetWriter],
    shards: TokenShards,
    plan: PackPlan,
    seq_length: int,
    pad_id: int,
    pack: bool,
    neat_pack: bool,
    ids_dtype: type[np.generic],
    vocab_size: int | None,
    progress: Callable[[int], None] | None,
) -> int:
    """Build and append every row (see the module docstring); returns the supervised tokens."""
    ids_row = np.empty(seq_length, np.int64)
    labels_row = np.empty(seq_length, np.int32)
    mask_row = np.empty(seq_length, np.int32)
    supervised = 0
    pending = 0
    # Unpacked output keeps MindSpeed's index exactly: a dropped sample still closes an
    # (empty) document at its place in input order.
    dropped = np.sort(plan.dropped) if not pack else np.zeros(0, np.int64)
    next_dropped = 0
    for r in range(plan.num_rows):
        items, starts, lengths = plan.row(r)
        while next_dropped < len(dropped) and len(items) and dropped[next_dropped] < items[0]:
            for w in writers.values():
                w.end_document()
            next_dropped += 1
        at = 0
        for k in range(len(items)):
            n = int(lengths[k])
            ids, labels = shards.read(int(items[k]), int(starts[k]), n)
            ids_row[at : at + n] = ids
            labels_row[at : at + n] = labels
            if pack and n:
                labels_row[at] = IGNORE_INDEX
            mask_row[at : at + n] = k + 1 if neat_pack else 1
            at += n
        if vocab_size is not None and at:
            _check_vocab(ids_row[:at], vocab_size, shards, items)
        if pack:
            ids_row[at:] = pad_id
            labels_row[at:] = IGNORE_INDEX
            mask_row[at:] = 0 if neat_pack else 1
            end = seq_length
        else:
            end = at
        supervised += int(np.count_nonzero(labels_row[:end] != IGNORE_INDEX))
        writers["input_ids"].add(ids_row[:end].astype(ids_dtype))
        writers["attention_mask"].add(mask_row[:end])
        writers["labels"].add(labels_row[:end])
        pending += 1
        if progress is not None and pending >= 256:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    for _ in range(next_dropped, len(dropped)):
        for w in writers.values():
            w.end_document()
    return supervised


def _check_vocab(ids: np.ndarray, vocab_size: int, shards: TokenShards, items: np.ndarray) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        sources = sorted({str(shards.path_of(int(i))) for i in items})
        raise IntegrityError(
            f"token id {bad} is outside the vocabulary of {vocab_size} in a sample of "
            f"{', '.join(sources)}: the tokenized shard is corrupt; delete it or re-run with "
            "--overwrite-cache"
        )


def row_stats(plan: PackPlan, seq_length: int, pack: bool, supervised: int) -> RowStats:
    """What a dataset written from ``plan`` holds (tokens, rows, efficiency, samples per row)."""
    stats = RowStats(
        seq_length=seq_length, dropped=len(plan.dropped), truncated=plan.truncated, split=plan.split
    )
    per_row = np.diff(plan.row_offsets)
    total = int(plan.lengths.sum(dtype=np.int64))
    stats.rows, stats.items = plan.num_rows, len(plan.items)
    stats.total_tokens, stats.supervised_tokens = total, supervised
    stats.lower_bound_rows = lower_bound_rows(total, plan.capacity)
    stats.efficiency = total / (plan.num_rows * seq_length) if plan.num_rows else 0.0
    stats.pad_fraction = 1.0 - stats.efficiency if pack else 0.0
    if plan.num_rows:
        stats.samples_per_row_mean = float(per_row.mean())
        stats.samples_per_row_min, stats.samples_per_row_max = (
            int(per_row.min()),
            int(per_row.max()),
        )
        counts = np.bincount(per_row)
        stats.samples_per_row_histogram = {str(k): int(c) for k, c in enumerate(counts) if c}
    step = 1 << 20  # int64 squares a million at a time: no 8-bytes-per-sample temporary
    stats.sum_squared_lengths = sum(
        int(np.square(plan.lengths[k : k + step], dtype=np.int64).sum())
        for k in range(0, len(plan.lengths), step)
    )
    stats.efficiency_padded_alone = (
        total / (len(plan.items) * seq_length) if len(plan.items) else 0.0
    )
    return stats
