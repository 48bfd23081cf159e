"""The planner against literal reference implementations and its invariants (hypothesis)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packft.pack.kernels import _best_fit_decreasing
from packft.pack.plan import ALGORITHMS, PackPlan, lower_bound_rows, plan_packing
from tests.helpers.mindspeed_reference import mindspeed_knapsack

# --- literal references, written from the algorithms' definitions ------------------------------
# (MindSpeed's knapsack: tests/helpers/mindspeed_reference.py, shared with benchmarks/bench_pack.py)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, f in enumerate(free):
            if lengths[i] <= f:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def best_fit_decreasing_row_count(lengths: list[int], capacity: int) -> int:
    free: list[int] = []
    for n in sorted(lengths, reverse=True):
        fits = [f for f in free if f >= n]
        if fits:
            free[free.index(min(fits))] -= n
        else:
            free.append(capacity - n)
    return len(free)


def rows_of(plan: PackPlan) -> list[list[int]]:
    return [plan.row(r)[0].tolist() for r in range(plan.num_rows)]


# --- exact behaviour ------------------------------------------------------------------------


def test_worked_example() -> None:
    plan = plan_packing([5, 3, 4, 2], 7, "bfd")
    assert plan.row_offsets.tolist() == [0, 2, 4]
    assert plan.items.tolist() == [0, 3, 2, 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=0, max_size=60), st.integers(30, 45))
def test_knapsack_reproduces_mindspeed_rows_and_order(lengths: list[int], capacity: int) -> None:
    plan = plan_packing(lengths, capacity, "knapsack", overlong="drop")
    assert rows_of(plan) == mindspeed_knapsack(lengths, capacity)


def test_knapsack_lifo_tie_break() -> None:
    # four samples of equal length, two per row: MindSpeed pops the LAST index first.
    plan = plan_packing([3, 3, 3, 3], 7, "knapsack")
    assert rows_of(plan) == [[3, 2], [1, 0]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=50), st.integers(20, 30))
def test_ffd_is_first_fit_decreasing(lengths: list[int], capacity: int) -> None:
    assert rows_of(plan_packing(lengths, capacity, "ffd")) == first_fit_decreasing(
        lengths, capacity
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=0, max_size=50), st.integers(20, 30))
def test_bfd_kernel_is_best_fit_decreasing(lengths: list[int], capacity: int) -> None:
    offsets, order = _best_fit_decreasing(np.asarray(lengths, np.int64), capacity)
    assert len(offsets) - 1 == best_fit_decreasing_row_count(lengths, capacity)
    arr = np.asarray(lengths, np.int64)
    for r in range(len(offsets) - 1):  # rows list samples longest first
        assert np.all(np.diff(arr[order[offsets[r] : offsets[r + 1]]]) <= 0)
    plan = plan_packing(lengths, capacity, "bfd")
    assert plan.num_rows == min(len(offsets) - 1, len(first_fit_decreasing(lengths, capacity)))


def test_bfd_keeps_the_tighter_of_best_and_first_fit() -> None:
    # pure BFD needs 3 rows here, FFD 2: bfd returns FFD's plan
    assert best_fit_decreasing_row_count([30, 16, 15, 7, 6, 2, 2], 39) == 3
    assert plan_packing([30, 16, 15, 7, 6, 2, 2], 39, "bfd").num_rows == 2
    # and here BFD is strictly tighter than FFD, so bfd is not just ffd
    assert plan_packing([19, 11, 11, 7, 5, 5], 29, "ffd").num_rows == 3
    assert plan_packing([19, 11, 11, 7, 5, 5], 29, "bfd").num_rows == 2


def test_sequential_preserves_order() -> None:
    plan = plan_packing([4, 4, 4, 1, 6, 2], 8, "sequential")
    assert rows_of(plan) == [[0, 1], [2, 3], [4, 5]]
    assert plan.items.tolist() == list(range(6))


# --- invariants -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 70), min_size=0, max_size=80),
    capacity=st.integers(1, 50),
    algorithm=st.sampled_from(ALGORITHMS),
    overlong=st.sampled_from(["truncate", "drop", "split"]),
    seed=st.one_of(st.none(), st.integers(0, 5)),
    mix=st.one_of(st.none(), st.integers(1, 20)),
)
def test_plan_invariants(lengths, capacity, algorithm, overlong, seed, mix) -> None:
    plan = plan_packing(lengths, capacity, algorithm, seed=seed, mix=mix, overlong=overlong)
    arr = np.asarray(lengths, dtype=np.int64)
    # no row exceeds capacity
    assert np.all(plan.row_lengths() <= capacity)
    # every sample exactly once (whole, or as contiguous pieces covering it), or counted dropped
    covered: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for item, start, n in zip(plan.items, plan.starts, plan.lengths, strict=True):
        covered[int(item)].append((int(start), int(n)))
    dropped = set(plan.dropped.tolist())
    assert len(dropped) == len(plan.dropped)
    for i, n in enumerate(lengths):
        if i in dropped:
            assert overlong == "drop" and n > capacity and i not in covered
            continue
        pieces = sorted(covered[i])
        if overlong == "split":
            assert pieces[0][0] == 0 and sum(p[1] for p in pieces) == n or (n == 0)
            for (s0, n0), (s1, _) in zip(pieces, pieces[1:], strict=False):
                assert s0 + n0 == s1
        else:
            assert pieces == [(0, min(n, capacity))]
    assert plan.truncated == (int((arr > capacity).sum()) if overlong == "truncate" else 0)
    assert plan.split == (int((arr > capacity).sum()) if overlong == "split" else 0)
    # rows >= the lower bound; no empty rows
    assert plan.num_rows >= lower_bound_rows(int(plan.lengths.sum()), capacity)
    assert np.all(np.diff(plan.row_offsets) >= 1)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.tuples(st.lists(st.integers(1, 40), max_size=16), st.integers(6, 40)),
        st.tuples(st.lists(st.integers(1, 100), max_size=120), st.integers(100, 160)),
    )
)
def test_bfd_never_uses_more_rows_than_ffd(case: tuple[list[int], int]) -> None:
    lengths, capacity = case
    bfd = plan_packing(lengths, capacity, "bfd").num_rows
    assert bfd <= plan_packing(lengths, capacity, "ffd").num_rows


def test_plan_depends_only_on_inputs() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 800, 5000)
    for algorithm in ALGORITHMS:
        a = plan_packing(lengths, 4095, algorithm, seed=7, mix=1000)
        b = plan_packing(lengths.astype(np.int32).copy(), 4095, algorithm, seed=7, mix=1000)
        assert np.array_equal(a.row_offsets, b.row_offsets)
        assert np.array_equal(a.items, b.items)


def test_seed_shuffles_rows_without_changing_them() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 3000)
    plain = plan_packing(lengths, 2047, "bfd")
    shuffled = plan_packing(lengths, 2047, "bfd", seed=1)
    assert sorted(map(tuple, rows_of(plain))) == sorted(map(tuple, rows_of(shuffled)))
    assert rows_of(plain) != rows_of(shuffled)
    # unshuffled bfd rows start long-to-short; shuffled rows do not
    first = [plain.row(r)[2][0] for r in range(plain.num_rows)]
    assert first == sorted(first, reverse=True)
    assert rows_of(plan_packing(lengths, 2047, "bfd", seed=2)) != rows_of(shuffled)


def test_mix_trades_tightness_for_mixing() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(117), 0.8, 50_000), 8, 760).astype(np.int64)
    bound = lower_bound_rows(int(lengths.sum()), 4095)
    tight = plan_packing(lengths, 4095, "bfd")
    mixed = plan_packing(lengths, 4095, "bfd", seed=0, mix=2000)
    assert tight.num_rows <= mixed.num_rows <= bound * 1.02
    # each row of the mixed plan only holds samples from one random group of 2000
    perm = np.random.default_rng(0).permutation(len(lengths))
    group_of = np.empty(len(lengths), np.int64)
    group_of[perm] = np.arange(len(lengths)) // 2000
    for r in range(mixed.num_rows):
        assert len(set(group_of[mixed.row(r)[0]].tolist())) == 1


def test_alpaca_like_efficiency_at_scale() -> None:
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(np.log(117), 0.8, 200_000), 8, 760).astype(np.int64)
    bound = lower_bound_rows(int(lengths.sum()), 4095)
    for algorithm in ("bfd", "ffd", "knapsack"):
        assert plan_packing(lengths, 4095, algorithm).num_rows <= bound * 1.001 + 1


def test_overlong_policies() -> None:
    truncate = plan_packing([10, 3, 25], 8, "bfd")
    assert truncate.truncated == 2 and sorted(truncate.lengths.tolist()) == [3, 8, 8]
    drop = plan_packing([10, 3, 25], 8, "bfd", overlong="drop")
    assert drop.dropped.tolist() == [0, 2] and drop.items.tolist() == [1]
    split = plan_packing([10, 3, 25], 8, "bfd", overlong="split")
    assert split.split == 2
    pieces = sorted(
        (int(i), int(s), int(n))
        for i, s, n in zip(split.items, split.starts, split.lengths, strict=True)
    )
    assert pieces == [(0, 0, 8), (0, 8, 2), (1, 0, 3), (2, 0, 8), (2, 8, 8), (2, 16, 8), (2, 24, 1)]


def test_save_load_roundtrip(tmp_path) -> None:
    plan = plan_packing([10, 3, 25, 7, 1], 8, "knapsack", seed=3, mix=2, overlong="split")
    path = plan.save(tmp_path / "x.packft.plan.npz")
    back = PackPlan.load(path)
    for name in ("row_offsets", "items", "starts", "lengths", "dropped"):
        assert np.array_equal(getattr(plan, name), getattr(back, name))
    assert (back.capacity, back.algorithm, back.seed, back.mix, back.overlong, back.split) == (
        8,
        "knapsack",
        3,
        2,
        "split",
        2,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["x.packft.plan.npz"]


def test_bad_arguments_are_reported_together() -> None:
    with pytest.raises(ValueError, match="unknown pack algorithm 'best'.*unknown overlong"):
        plan_packing([1, 2], 4, "best", overlong="cut")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        plan_packing([1], 0)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        plan_packing([1, -1], 4)
