"""Read SFT datasets for training: packed rows -> segments, position ids, cu_seqlens, loss weights.

Input: the three MindSpeed files `{prefix}_packed_{input_ids,attention_mask,labels}_document`,
checked first by `packft.dataset.integrity.open_verified` (sizes and fingerprints against the
sidecar, headers, equal row counts; a pending commit is finished, a mixed or partial set refused; a
set without a sidecar, such as MindSpeed's own, loads after the structural checks with a warning).
Every row is reduced to per-token *segment ids* (0 = padding, k >= 1 = the k-th sample):
  neat     attention_mask already holds them (`--neat-pack`; packft's writer does the same).
  eos      attention_mask is all ones (plain `--pack`): a sample ends after each run of eos tokens
           and the tokens after the last trained label are the pad tail. Fragile (multi-turn templates that
           end turns with eos are split; a warning says so).
  unpacked one sample per sequence (no `--pack`); micro-batches are padded to their longest one.
`auto` picks neat if any of the first rows holds a value other than 1 in its mask, else eos when
all sequences have the same length, else unpacked.

A micro-batch of B rows of S tokens is flattened to T = B*S tokens. Each maximal run of one
segment id is one attention segment, so every row start is a boundary and a pad tail is ONE
segment. Worked example, S=10, two rows:
    row 0 ids  1 1 1 2 2 2 2 2 0 0       row 1 ids  1 1 1 1 1 1 1 0 0 0
    positions  0 1 2 0 1 2 3 4 0 1                  0 1 2 3 4 5 6 0 1 2
    cu_seqlens [0, 3, 8, 10, 17, 20]     (int32, leading 0, last = T)
Loss: logits at t predict label t+1 when both tokens are in the same segment. `token` reduction =
sum over all label tokens of the global batch / their count (MindSpeed's per-token mean);
`sample` = mean per sample, then mean over the global batch's samples. Weights come per micro-batch;
the caller divides by the global count (all-reduced over data-parallel ranks).

Sampler: epoch e uses permutation `default_rng([seed, e])` of the rows; step s takes rows
[s*G, (s+1)*G) (G = global batch, the short tail of an epoch is dropped); DP rank r takes the r-th
contiguous slice of G/dp rows, cut into micro-batches. State = (epoch, step in epoch): resuming
is exact and independent of the number of ranks. Cost: O(rows) per epoch for the permutation;
a batch is built from mmap views (no dataset in RAM).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from packft.core.constants import IGNORE_INDEX
from packft.dataset.indexed import require_sft_files
from packft.dataset.integrity import open_verified

if TYPE_CHECKING:
    from packft.train.config import TrainConfig

log = logging.getLogger(__name__)

PackMode = Literal["auto", "neat", "eos", "unpacked"]
LossReduction = Literal["token", "sample"]
EOS_WARNING = (
    "attention_mask of {prefix} is all ones (written with --pack but without --neat-pack): sample "
    "boundaries are inferred from eos tokens (id {eos}). Multi-turn templates that end turns with "
    "eos are split into separate samples and a sample without a final eos merges with the next. "
    "Re-run `packft preprocess ... --pack --neat-pack` for exact segment ids."
)


@dataclass
class Batch:
    """One micro-batch, flattened for varlen attention (see the module docstring)."""

    input_ids: torch.Tensor  # [B,S] int64
    labels: torch.Tensor  # [B,S] int64, IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # [B,S] int64, restart at 0 in every segment
    sample_ids: torch.Tensor  # [B,S] int64, micro-batch sample index, -1 on padding
    target_weights: dict[str, torch.Tensor]  # reduction -> [B,S-1] float32 weight of label t+1
    cu_seqlens: torch.Tensor  # [N+1] int32
    max_seqlen: int
    real_tokens: int  # non-padding tokens
    counts: dict[str, int]  # reduction -> label tokens / samples with >= 1 label token

    def to(self, device: torch.device) -> Batch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            elif f.name == "target_weights":
                value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            moved[f.name] = value
        return Batch(**moved)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def segments_from_eos(ids: np.ndarray, labels: np.ndarray, eos_id: int) -> np.ndarray:
    """Segment ids for an all-ones-mask packed row: a sample ends after each run of eos tokens.

    A run, not each eos: MindSpeed's llama2 template with --append-eod ends samples in two eos,
    both trained; splitting between them would drop the second one's loss.
    """
    is_eos = ids == eos_id
    is_end = (is_eos & ~np.r_[is_eos[1:], False]).astype(np.int64)
    seg = 1 + np.cumsum(is_end) - is_end
    trained = np.flatnonzero(labels != IGNORE_INDEX)
    tail = int(trained[-1]) + 1 if trained.size else 0
    seg[tail:] = 0
    return seg


def row_layout(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run lengths, run is padding, position ids) of one row's segment ids."""
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    lengths = np.diff(np.r_[starts, seg.size])
    positions = np.arange(seg.size) - np.repeat(starts, lengths)
    return lengths, seg[starts] == 0, positions


def collate(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pad_id: int = 0, pad_to: int = 0
) -> Batch:
    """Build a Batch from (input_ids, labels, segment ids) rows, right-padding to the longest."""
    if not rows:
        raise ValueError("collate needs at least one row")
    s = max(pad_to, max(len(r[0]) for r in rows))
    b = len(rows)
    ids = np.full((b, s), pad_id, np.int64)
    labels = np.full((b, s), IGNORE_INDEX, np.int64)
    seg = np.zeros((b, s), np.int64)
    pos = np.zeros((b, s), np.int64)
    sample = np.full((b, s), -1, np.int64)
    all_lengths: list[np.ndarray] = []
    n_samples = 0
    for i, (r_ids, r_labels, r_seg) in enumerate(rows):
        n = len(r_ids)
        ids[i, :n], labels[i, :n], seg[i, :n] = r_ids, r_labels, r_seg
        lengths, is_pad, pos[i] = row_layout(seg[i])
        run = np.repeat(np.arange(lengths.size), lengths)
        real = ~is_pad
        index = np.full(lengths.size, -1, np.int64)
        index[real] = n_samples + np.arange(int(real.sum()))
        n_samples += int(real.sum())
        sample[i] = index[run]
        all_lengths.append(lengths)
    lengths = np.concatenate(all_lengths)
    cu = np.zeros(lengths.size + 1, np.int32)
    np.cumsum(lengths, out=cu[1:])
    # label t+1 is a target of logits t only inside the same sample
    valid = (
        (labels[:, 1:] != IGNORE_INDEX) & (sample[:, 1:] == sample[:, :-1]) & (sample[:, 1:] >= 0)
    )
    per_sample = np.bincount(sample[:, 1:][valid], minlength=n_samples)
    token_w = valid.astype(np.float32)
    sample_w = np.zeros_like(token_w)
    sample_w[valid] = 1.0 / per_sample[sample[:, 1:][valid]]
    return Batch(
        input_ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        position_ids=torch.from_numpy(pos),
        sample_ids=torch.from_numpy(sample),
        target_weights={"token": torch.from_numpy(token_w), "sample": torch.from_numpy(sample_w)},
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=int(lengths.max()),
        real_tokens=int((seg != 0).sum()),
        counts={"token": int(valid.sum()), "sample": int((per_sample > 0).sum())},
    )


def loss_sum(logits: torch.Tensor, batch: Batch, reduction: LossReduction) -> torch.Tensor:
    """Weighted sum of next-token cross-entropy; divide by the global count of `reduction`."""
    targets = batch.labels[:, 1:].clamp_min(0)
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), reduction="none")
    return (ce * batch.target_weights[reduction].reshape(-1)).sum()


class SFTDataset:
    """Rows of a MindSpeed/packft SFT dataset with their segment ids (see module docstring)."""

    def __init__(
        self,
        prefix: str | Path,
        *,
        pack_mode: PackMode = "auto",
        eos_id: int | None = None,
        pad_id: int = 0,
        seq_length: int | None = None,
    ) -> None:
        self.prefix = str(prefix)
        require_sft_files(prefix)
        verified = open_verified(prefix)  # a partial, mixed or corrupt set is refused here
        for warning in verified.warnings:
            warnings.warn(warning, stacklevel=2)
        self._sidecar = verified.sidecar or {}
        ds = verified.datasets
        self.ids, self.mask, self.labels = ds["input_ids"], ds["attention_mask"], ds["labels"]
        self.lengths = self.ids.lengths
        self.pad_id, self.eos_id = pad_id, eos_id
        self.mode = self._detect(pack_mode)
        self.seq_length = seq_length or int(self.lengths.max())
        if self.mode != "unpacked" and int(self.lengths.max()) != self.seq_length:
            raise ValueError(
                f"{self.prefix} holds packed rows of {int(self.lengths.max())} tokens but "
                f"--seq-length is {self.seq_length}; pass --seq-length {int(self.lengths.max())} "
                "or re-pack with the wanted length"
            )
        if self.mode == "eos":
            if eos_id is None:
                raise ValueError(
                    f"{self.prefix} has an all-ones attention_mask, so sample boundaries come from "
                    "eos tokens: pass --tokenizer-name-or-path (for its eos id)"
                )
            warnings.warn(EOS_WARNING.format(prefix=self.prefix, eos=eos_id), stacklevel=2)
        self._truncated = 0

    def _detect(self, pack_mode: PackMode) -> str:
        if pack_mode != "auto":
            return pack_mode
        if len(self.ids) == 0:
            raise ValueError(f"{self.prefix} holds no sequences")
        for i in range(min(len(self.mask), 64)):
            if np.any(self.mask[i] != 1):
                return "neat"
        return (
            "eos" if np.all(self.lengths == self.lengths[0]) and len(self.ids) > 1 else "unpacked"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, labels, segment ids) of sequence i, as int64 arrays."""
        ids = np.asarray(self.ids[i], np.int64)
        labels = np.asarray(self.labels[i], np.int64)
        if self.mode == "neat":
            seg = np.asarray(self.mask[i], np.int64)
        elif self.mode == "eos":
            seg = segments_from_eos(ids, labels, int(self.eos_id))
        else:
            if ids.size > self.seq_length:
                if not self._truncated:
                    log.warning("%s: samples longer than --seq-length %d are cut to it",
                                self.prefix, self.seq_length)  # fmt: skip
                self._truncated += 1
                ids, labels = ids[: self.seq_length], labels[: self.seq_length]
            seg = np.ones(ids.size, np.int64)
        return ids, labels, seg

    def batch(self, indices: list[int]) -> Batch:
        return collate([self.row(i) for i in indices], self.pad_id)

    def sidecar(self) -> dict:
        """The sidecar the dataset was checked against (`{prefix}.packft.json`), if any."""
        return self._sidecar


class ShardedSampler:
    """Deterministic, seeded, resumable global-batch sampler sharded over data-parallel ranks."""

    def __init__(
        self,
        num_rows: int,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 1234,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"--global-batch-size {global_batch_size} must be a multiple of "
                f"--micro-batch-size {micro_batch_size} x data-parallel size {dp_size}"
            )
        if num_rows < global_batch_size:
            raise ValueError(
                f"the dataset has {num_rows} rows, fewer than --global-batch-size "
                f"{global_batch_size}; lower the global batch size"
            )
        self.num_rows, self.gbs, self.mbs = num_rows, global_batch_size, micro_batch_size
        self.rank, self.dp, self.seed, self.shuffle = dp_rank, dp_size, seed, shuffle
        self.steps_per_epoch = num_rows // global_batch_size
        self.epoch, self.step_in_epoch = 0, 0
        self._order: np.ndarray | None = None

    @property
    def accumulation_steps(self) -> int:
        return self.gbs // (self.mbs * self.dp)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            n = self.num_rows
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._order

    def next_step(self) -> list[list[int]]:
        """This rank's micro-batches (row indices) for the next optimizer step."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch, self._order = self.epoch + 1, 0, None
        start = self.step_in_epoch * self.gbs
        rows = self._epoch_order()[start : start + self.gbs]
        per_rank = self.gbs // self.dp
        mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()
        self.step_in_epoch += 1
        return [mine[i : i + self.mbs] for i in range(0, per_rank, self.mbs)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            log.warning("resuming with --seed %s, the checkpoint used %s", self.seed, state["seed"])
        self.epoch, self.step_in_epoch, self._order = state["epoch"], state["step_in_epoch"], None


def token_ids(cfg: TrainConfig) -> tuple[int | None, int]:
    """(eos id, pad id) from the tokenizer, if one was given."""
    if not cfg.tokenizer_name_or_path:
        return None, 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.tokenizer_name_or_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return tok.eos_token_id, int(pad or 0)
