"""Segment ids -> positions, cu_seqlens and loss weights; pack-mode detection (incl. MindSpeed's own
unpacked output); eos fallback; the seeded, resumable, DP-sharded sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packft.core.atomic import Stage
from packft.core.constants import IGNORE_INDEX
from packft.dataset.indexed import IndexedDatasetWriter, sft_prefix
from packft.train.data import SFTDataset, ShardedSampler, collate, segments_from_eos

I = IGNORE_INDEX  # noqa: E741


def write_sft(prefix: Path, rows) -> str:
    with Stage(prefix.parent) as stage:
        for k, key in enumerate(("input_ids", "labels", "attention_mask")):
            with IndexedDatasetWriter(sft_prefix(prefix, key), stage) as w:
                for row in rows:
                    w.add(row[k])
                w.finalize()
        stage.commit()
    return str(prefix)


def test_docstring_example_positions_and_cu_seqlens():
    seg0 = np.array([1, 1, 1, 2, 2, 2, 2, 2, 0, 0])
    seg1 = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    ids = np.arange(10)
    lab = np.array([I, 5, 6, I, 7, 8, 9, 1, I, I])
    b = collate([(ids, lab, seg0), (ids, lab, seg1)])
    assert b.cu_seqlens.tolist() == [0, 3, 8, 10, 17, 20]
    assert b.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    assert b.position_ids[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert b.sample_ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, -1, -1]
    assert b.sample_ids[1].tolist() == [2] * 7 + [-1] * 3
    assert b.max_seqlen == 7 and b.real_tokens == 15
    # targets: label t+1 inside the same sample; the 7 at position 4 is row 0's sample 2 start+1
    w = b.target_weights["token"]
    assert w[0].tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 0]  # label 1 at pos 7 is still sample 2
    assert b.counts == {"token": int(w.sum()), "sample": 3}
    ws = b.target_weights["sample"]
    assert abs(float(ws.sum()) - 3.0) < 1e-6  # each sample's weights sum to 1


def test_unpacked_micro_batch_pads_to_longest_with_one_pad_segment():
    rows = [
        (np.arange(5), np.arange(5), np.ones(5, int)),
        (np.arange(2), np.arange(2), np.ones(2, int)),
    ]
    b = collate(rows, pad_id=9)
    assert b.input_ids.shape == (2, 5)
    assert b.input_ids[1].tolist() == [0, 1, 9, 9, 9]
    assert b.labels[1].tolist() == [0, 1, I, I, I]
    assert b.cu_seqlens.tolist() == [0, 5, 7, 10]  # row start is a boundary; pad tail is one
    assert b.position_ids[1].tolist() == [0, 1, 0, 1, 2]


def test_eos_boundaries_with_pad_equal_to_eos_give_one_pad_segment():
    eos = 2
    ids = np.array([5, 6, 7, 2, 8, 9, 2, 2, 2, 2])
    lab = np.array([I, 6, 7, 2, I, 9, 2, I, I, I])
    seg = segments_from_eos(ids, lab, eos)
    assert seg.tolist() == [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert collate([(ids, lab, seg)]).cu_seqlens.tolist() == [0, 4, 7, 10]
    # MindSpeed llama2 + --append-eod ends samples in "</s></s>", both trained: one segment
    ids = np.array([1, 5, 2, 2, 1, 8, 2, 2, 2])
    lab = np.array([I, 5, 2, 2, I, 8, 2, 2, I])
    assert segments_from_eos(ids, lab, eos).tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 0]


def test_pack_mode_detection_and_eos_warning(tmp_path):
    neat = [
        (np.array([3, 4, 2, 5, 2, 0]), np.array([I, 4, 2, I, 2, I]), np.array([1, 1, 1, 2, 2, 0]))
    ]
    neat.append(
        (np.array([3, 4, 4, 4, 2, 0]), np.array([I, 4, 4, 4, 2, I]), np.array([1] * 5 + [0]))
    )
    ds = SFTDataset(write_sft(tmp_path / "neat", neat))
    assert ds.mode == "neat" and len(ds) == 2 and ds.seq_length == 6
    ones = [(r[0], r[1], np.ones(6, int)) for r in neat]
    with pytest.raises(ValueError, match="eos id"):
        SFTDataset(write_sft(tmp_path / "plain", ones))
    with pytest.warns(UserWarning, match="--neat-pack"):
        plain = SFTDataset(tmp_path / "plain", eos_id=2)
    assert plain.mode == "eos"
    # the eos-derived segments equal the neat ones for these rows
    assert collate([plain.row(0)]).cu_seqlens.tolist() == collate([ds.row(0)]).cu_seqlens.tolist()
    with pytest.raises(ValueError, match="--seq-length 6"):
        SFTDataset(tmp_path / "neat", seq_length=8)


def test_reads_mindspeed_unpacked_output(reference_dir):
    prefix = reference_dir / "mindspeed_alpaca_llama2_nopack4096" / "alpaca"
    before = sorted(p.name for p in prefix.parent.iterdir())
    with pytest.warns(UserWarning, match="no packft sidecar"):  # MindSpeed writes none
        ds = SFTDataset(prefix)
    assert sorted(p.name for p in prefix.parent.iterdir()) == before  # a reader writes nothing
    assert ds.mode == "unpacked" and len(ds) == 999
    b = ds.batch([0, 1, 2, 3])
    longest = max(int(ds.lengths[i]) for i in range(4))
    assert b.input_ids.shape == (4, longest)
    assert b.real_tokens == sum(int(ds.lengths[i]) for i in range(4))
    assert b.counts["sample"] == 4 and b.counts["token"] > 0


def test_missing_dataset_names_what_exists(tmp_path):
    write_sft(tmp_path / "real", [(np.arange(3), np.arange(3), np.ones(3, int))])
    with pytest.raises(FileNotFoundError, match=r"real_packed_input_ids_document\.idx"):
        SFTDataset(tmp_path / "typo")


def test_sampler_is_seeded_sharded_and_resumable():
    one = ShardedSampler(10, global_batch_size=4, micro_batch_size=1, seed=7)
    ranks = [ShardedSampler(10, 4, 1, dp_rank=r, dp_size=2, seed=7) for r in range(2)]
    assert one.accumulation_steps == 4 and ranks[0].accumulation_steps == 2
    seen = []
    for _ in range(5):  # 2 steps per epoch (tail of 2 rows dropped), crosses epochs
        g = sum(one.next_step(), [])
        shards = [sum(s.next_step(), []) for s in ranks]
        assert shards[0] + shards[1] == g and not set(shards[0]) & set(shards[1])
        seen.append(g)
    assert seen[0] != seen[2]  # a new permutation per epoch
    assert (
        ShardedSampler(10, 4, 1, seed=8).next_step() != ShardedSampler(10, 4, 1, seed=7).next_step()
    )
    a = ShardedSampler(10, 4, 2, seed=7)
    for _ in range(3):
        a.next_step()
    b = ShardedSampler(10, 4, 2, seed=7)
    b.load_state_dict(a.state_dict())
    assert [a.next_step() for _ in range(3)] == [b.next_step() for _ in range(3)]
    with pytest.raises(ValueError, match="multiple of"):
        ShardedSampler(10, 4, 3)
    with pytest.raises(ValueError, match="fewer than"):
        ShardedSampler(3, 4, 1)
