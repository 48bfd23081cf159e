"""Held-out rows for validation: ``--split train,valid,test`` over the packed rows, or
``--valid-data-path``.

Algorithm. The weights are Megatron's (``--split 98,2,0``; ``98/2/0`` and a missing last weight
also parse): normalized, then each boundary is ``round(weight x rows)`` accumulated, and the
rounding error is taken off every boundary, exactly as Megatron's ``get_train_valid_test_split_``,
so a split gives the row counts Megatron gives. Unlike Megatron, which cuts contiguous index
ranges, the boundaries cut a seeded permutation of the rows (``SeedSequence(seed, spawn_key=
(SPLIT_STREAM,))``, a stream of its own, never the sampler's ``[seed, epoch]`` ones): packed rows
come out of a packer in fill order (a first-fit-decreasing pack ends in its emptiest rows), so a
contiguous tail would be a biased validation set. Each part is then sorted, so the training rows
keep their on-disk order (``--no-shuffle`` still reads them in order).
Worked example, 10 rows, ``--split 70,20,10``, boundaries [0, 7, 9, 10]:
    permutation  4 9 0 7 2 5 8 | 1 6 | 3     ->  train [0 2 4 5 7 8 9], valid [1 6], test [3]

Guarantees: the three parts are disjoint and cover every row once; they depend only on the row
count, the weights and --seed (same seed, same split, on any number of ranks); ``--split 100,0,0``
(the default, and the seed script's) holds nothing out and leaves the dataset untouched, so runs
without validation read exactly the rows, in the order, they always did. The test part is held
out of training and never evaluated (Megatron evaluates it once at the end; packft does not).
``--valid-data-path`` evaluates another dataset instead (no valid weight then); packft cannot
check that two files hold different samples. Cost: one permutation of the row indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from packft.train.flags import parse_split

if TYPE_CHECKING:
    from packft.train.config import TrainConfig

SPLIT_STREAM = 0x5B117  # the split's own RNG stream key (the sampler uses [seed, epoch])
PARTS = ("train", "valid", "test")


def split_boundaries(weights: tuple[float, float, float], rows: int) -> list[int]:
    """``[0, end_train, end_valid, rows]`` with Megatron's rounding (``get_train_valid_test_split_``)."""
    total = sum(weights)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w / total * float(rows))))
    diff = bounds[-1] - rows
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def split_rows(rows: int, weights: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Sorted row indices of each part (``train``, ``valid``, ``test``); see the module docstring."""
    bounds = split_boundaries(weights, rows)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_STREAM,)))
    order = rng.permutation(rows)
    return {
        name: np.sort(order[bounds[i] : bounds[i + 1]]).astype(np.int64)
        for i, name in enumerate(PARTS)
    }


class RowSubset:
    """Some rows of a dataset, renumbered 0..n-1; everything else is the base dataset's."""

    def __init__(self, base: Any, rows: np.ndarray, counts: dict[str, Any]) -> None:
        self.base, self.rows, self.split_counts = base, rows, counts

    def __len__(self) -> int:
        return int(self.rows.size)

    def row(self, i: int) -> Any:
        return self.base.row(int(self.rows[i]))

    def batch(self, indices: list[int]) -> Any:
        return self.base.batch([int(self.rows[i]) for i in indices])

    def __getattr__(self, name: str) -> Any:  # mode, seq_length, sidecar(), prefix ...
        return getattr(self.base, name)


def eval_enabled(cfg: TrainConfig) -> bool:
    """Whether the run evaluates: --eval-iters > 0 and a valid weight or --valid-data-path."""
    return cfg.eval_iters > 0 and (bool(cfg.valid_data_path) or parse_split(cfg.split)[1] > 0)


def require_valid_data(cfg: TrainConfig) -> None:
    """A missing --valid-data-path fails before anything is created, naming what is there.

    Raises:
        FileNotFoundError: one of its six files is missing.
    """
    if cfg.valid_data_path:
        from packft.dataset.indexed import require_sft_files

        require_sft_files(cfg.valid_data_path, "--valid-data-path")


def train_and_valid(cfg: TrainConfig, dataset: Any, open_dataset: Callable[[str], Any]) -> tuple:
    """(training rows, held-out rows or None) of ``dataset`` per --split / --valid-data-path.

    ``open_dataset(prefix)`` opens --valid-data-path like the training set (same pack mode,
    eos, pad, seq length). Without held-out rows the dataset itself comes back unchanged.

    Raises:
        ValueError: the split leaves no validation row although it asks for some.
    """
    weights = parse_split(cfg.split)
    valid = open_dataset(cfg.valid_data_path) if cfg.valid_data_path else None
    if weights[1] == weights[2] == 0:
        return dataset, valid if cfg.eval_iters > 0 else None
    parts = split_rows(len(dataset), weights, cfg.seed)
    counts = {"split": cfg.split, **{f"{k}_rows": int(v.size) for k, v in parts.items()}}
    if weights[1] > 0 and parts["valid"].size == 0:
        raise ValueError(
            f"--split {cfg.split} leaves no validation row of the {len(dataset)} rows of "
            f"{cfg.data_path}; raise the second weight or use --valid-data-path"
        )
    if parts["valid"].size:
        valid = RowSubset(dataset, parts["valid"], counts)
    return RowSubset(dataset, parts["train"], counts), valid if cfg.eval_iters > 0 else None
