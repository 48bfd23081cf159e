"""What decides a plan: :class:`PackOptions`, and the plan key shared by the CLI and the flow.

A plan is a pure function of the sample lengths (i.e. of the shards, named by their
:func:`~packft.tokenize.options.shard_key`) and of these options, so :func:`plan_key` of the
shard keys and the options names it: ``packft preprocess`` keeps the plan at
``{cache_dir}/plans/{plan_key[:40]}.npz`` and reuses it, and the ``pack`` Prefect task's cache
key is the same :func:`plan_key`.

``PreprocessConfig.pack_options()`` is the only place a config becomes pack options. It already
resolves what only matters through something else: without ``--pack`` the algorithm, seed and
mix do nothing (one sample per row), so they are normalised away; ``--neat-pack`` with
``knapsack --overlong drop`` only matters as the effective overlong policy (MindSpeed's tail
cut, ``truncate``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from packft import __version__
from packft.core.fingerprint import json_digest
from packft.pack.plan import ALGORITHMS, OVERLONG_POLICIES, PackPlan, plan_packing, plan_unpacked

PLAN_FORMAT = 1
"""Bumped when the same lengths and options would give another plan."""


@dataclass(frozen=True)
class PackOptions:
    """Every setting that changes the plan; nothing else."""

    pack: bool = True
    """Several samples per row; False: one sample per row, in input order."""
    capacity: int | None = None
    """Real tokens per row (``seq_length - 1``); None (unpacked only): the longest sample."""
    algorithm: Literal["bfd", "ffd", "knapsack", "sequential", "none"] = "bfd"
    """Packing algorithm (``none`` when not packing)."""
    seed: int | None = None
    """Row order shuffle seed."""
    mix: int | None = None
    """Pack within random groups of this many samples."""
    overlong: Literal["truncate", "drop", "split"] = "truncate"
    """Samples longer than the capacity (the effective policy, see the module docstring)."""

    def __post_init__(self) -> None:
        problems = []
        if self.pack and self.capacity is None:
            problems.append("packing needs a capacity (seq_length - 1)")
        if self.capacity is not None and self.capacity < 1:
            problems.append(f"capacity must be >= 1, got {self.capacity}")
        if self.pack and self.algorithm not in ALGORITHMS:
            problems.append(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.overlong not in OVERLONG_POLICIES:
            problems.append(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if problems:
            raise ValueError("invalid pack options: " + "; ".join(problems))
        if not self.pack:  # nothing of the packer is used: the same work whatever they say
            for name, value in (("algorithm", "none"), ("seed", None), ("mix", None)):
                object.__setattr__(self, name, value)

    def recorded(self) -> dict[str, Any]:
        return asdict(self)

    def cache_key(self) -> str:
        """Stable digest of everything that changes the plan of given lengths."""
        return json_digest({"stage": "pack", "format": PLAN_FORMAT, **self.recorded()})

    def plan(self, lengths: np.ndarray) -> PackPlan:
        """Plan rows for samples of ``lengths`` (:mod:`packft.pack.plan`)."""
        if self.pack:
            return plan_packing(
                lengths, int(self.capacity or 0), self.algorithm,  # type: ignore[arg-type]
                seed=self.seed, mix=self.mix, overlong=self.overlong,
            )  # fmt: skip
        capacity = (
            self.capacity if self.capacity is not None else max(1, int(lengths.max(initial=1)))
        )
        return plan_unpacked(lengths, capacity, overlong=self.overlong)


def plan_key(shard_keys: list[str], options: PackOptions) -> str:
    """The identity of a plan: its shards (in order), the options, the packft version."""
    return json_digest(
        {"shards": list(shard_keys), "options": options.cache_key(), "packft": __version__}
    )


def row_fill_counts(the_plan: PackPlan) -> dict[int, int]:
    """Rows per real-token count: the row-fill histogram, computed where the plan is in memory."""
    values, counts = np.unique(the_plan.row_lengths(), return_counts=True)
    return {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}
