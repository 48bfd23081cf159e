"""The packing kernels: sample lengths and a row capacity in, rows of sample indices out.

Algorithms (all O(n log C) with C = capacity, compiled with numba, the whole dataset at once):

* ``bfd``  best-fit decreasing: items by decreasing length, each into the open row whose free
  space is the smallest that still fits. Free spaces live in a segment tree over 0..C with a
  stack of rows per free-space value (TRL's structure, but global and compiled). Pure BFD can
  need more rows than FFD on rare inputs (capacity 39, lengths [30, 16, 15, 7, 6, 2, 2]: BFD 3
  rows, FFD 2), so ``bfd`` also runs FFD (a third of its cost) and keeps FFD's plan when it has
  strictly fewer rows: ``bfd`` never uses more rows than ``ffd``.
* ``ffd``  first-fit decreasing. FFD row k is exactly "fill row k by repeatedly taking the largest
  remaining item that fits" (an item skipped by a row never fits it later), so it runs as the
  greedy-fill kernel below with FIFO tie-breaks between equal lengths.
* ``knapsack``  MindSpeed-LLM's / LLaMA-Factory's ``greedy_knapsack``: same greedy fill (rows in
  creation order, items in the order taken) and their tie-break: equal lengths are taken
  last-in-first-out (``length2indexes[len].pop()``), so composition and row order match theirs.
* ``sequential``  next-fit in input order (order-preserving; the least tight).

Each kernel returns ``(row_offsets, order)``: row r holds ``order[row_offsets[r]:row_offsets[r+1]]``
(indices into the lengths). Memory: every per-item array (the length-sorted positions, the row
of each item, the row stacks, the order) has the dtype of ``lens``; :mod:`packft.pack.plan` passes
int32 lengths below 2**31 items, so a kernel holds ~16 bytes per item (bfd reuses its stack array
for the order) and nothing per item outside numpy. :mod:`packft.pack.plan` turns that into a
:class:`~packft.pack.plan.PackPlan`.
"""

from __future__ import annotations

import numba
import numpy as np

# ---------------------------------------------------------------------------------------------
# Segment tree over values 0..C: leaf v is 1 when at least one item/row has value v.


@numba.njit(cache=True)
def _tree_size(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


@numba.njit(cache=True)
def _tree_set(tree: np.ndarray, size: int, v: int, on: bool) -> None:
    i = v + size
    tree[i] = 1 if on else 0
    i >>= 1
    while i >= 1:
        new = tree[2 * i] | tree[2 * i + 1]
        if tree[i] == new:
            break
        tree[i] = new
        i >>= 1


@numba.njit(cache=True)
def _first_ge(tree: np.ndarray, size: int, v: int) -> int:
    """Smallest marked value >= v, or -1."""
    if v >= size:
        return -1
    i = v + size
    if tree[i]:
        return v
    while i > 1:
        if (i & 1) == 0 and tree[i + 1]:
            i += 1
            while i < size:
                i = 2 * i if tree[2 * i] else 2 * i + 1
            return i - size
        i >>= 1
    return -1


@numba.njit(cache=True)
def _last_le(tree: np.ndarray, size: int, v: int) -> int:
    """Largest marked value <= v, or -1."""
    if v < 0:
        return -1
    if v >= size:
        v = size - 1
    i = v + size
    if tree[i]:
        return v
    while i > 1:
        if (i & 1) == 1 and tree[i - 1]:
            i -= 1
            while i < size:
                i = 2 * i + 1 if tree[2 * i + 1] else 2 * i
            return i - size
        i >>= 1
    return -1


# ---------------------------------------------------------------------------------------------
# Kernels: each takes item lengths (all <= capacity) and returns (row_offsets, order), where
# order lists item positions row by row.


@numba.njit(cache=True)
def _greedy_fill(lens: np.ndarray, capacity: int, lifo: bool) -> tuple[np.ndarray, np.ndarray]:
    n = lens.shape[0]
    count = np.zeros(capacity + 1, np.int64)
    for k in range(n):
        count[lens[k]] += 1
    start = np.zeros(capacity + 2, np.int64)
    for v in range(capacity + 1):
        start[v + 1] = start[v] + count[v]
    by_len = np.empty(n, lens.dtype)  # positions grouped by length, ascending index within a group
    fill = start[:-1].copy()
    for k in range(n):
        by_len[fill[lens[k]]] = k
        fill[lens[k]] += 1
    lo = start[:-1].copy()
    hi = start[1:].copy()
    size = _tree_size(capacity + 1)
    tree = np.zeros(2 * size, np.uint8)
    for v in range(capacity + 1):
        if count[v] > 0:
            _tree_set(tree, size, v, True)
    order = np.empty(n, lens.dtype)
    offsets = np.empty(n + 1, np.int64)  # only the first rows + 1 entries are ever touched
    placed = 0
    rows = 0
    while placed < n:
        offsets[rows] = placed
        free = capacity
        while True:
            v = _last_le(tree, size, free)
            if v < 0:
                break
            if lifo:
                hi[v] -= 1
                k = by_len[hi[v]]
            else:
                k = by_len[lo[v]]
                lo[v] += 1
            count[v] -= 1
            if count[v] == 0:
                _tree_set(tree, size, v, False)
            order[placed] = k
            placed += 1
            free -= v
        rows += 1
    offsets[rows] = placed
    return offsets[: rows + 1].copy(), order


@numba.njit(cache=True)
def _best_fit_decreasing(lens: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    n = lens.shape[0]
    count = np.zeros(capacity + 1, np.int64)
    for k in range(n):
        count[lens[k]] += 1
    pos = np.empty(capacity + 1, np.int64)  # descending-length counting sort, stable by index
    acc = 0
    for v in range(capacity, -1, -1):
        pos[v] = acc
        acc += count[v]
    by_len = np.empty(n, lens.dtype)
    for k in range(n):
        by_len[pos[lens[k]]] = k
        pos[lens[k]] += 1
    size = _tree_size(capacity + 1)
    tree = np.zeros(2 * size, np.uint8)
    rows_at = np.zeros(capacity + 1, np.int64)  # open rows per free-space value
    head = np.full(capacity + 1, -1, np.int64)  # stack of rows per free-space value
    nxt = np.empty(n + 1, lens.dtype)  # next row in the same stack; reused below as the order
    row_at = np.empty(n, lens.dtype)  # row of the j-th item in processing order
    rows = 0
    j = 0
    for s in range(capacity, -1, -1):  # items by decreasing length: no random reads of lens
        for _ in range(count[s]):
            free = _first_ge(tree, size, s)
            if free < 0:
                b = rows
                rows += 1
                left = capacity - s
            else:
                b = head[free]
                head[free] = nxt[b]
                rows_at[free] -= 1
                if rows_at[free] == 0:
                    _tree_set(tree, size, free, False)
                left = free - s
            nxt[b] = head[left]
            head[left] = b
            rows_at[left] += 1
            if rows_at[left] == 1:
                _tree_set(tree, size, left, True)
            row_at[j] = b
            j += 1
    offsets = np.zeros(rows + 1, np.int64)
    for j in range(n):
        offsets[row_at[j] + 1] += 1
    for b in range(rows):
        offsets[b + 1] += offsets[b]
    fill = offsets[:-1].copy()
    order = nxt[:n]  # the stacks are done with: their memory holds the order (n+1 >= n)
    for j in range(n):
        b = row_at[j]
        order[fill[b]] = by_len[j]
        fill[b] += 1
    return offsets, order


@numba.njit(cache=True)
def _next_fit(lens: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    n = lens.shape[0]
    offsets = np.empty(n + 1, np.int64)
    rows = 0
    free = -1
    for k in range(n):
        if lens[k] > free:
            offsets[rows] = k
            rows += 1
            free = capacity
        free -= lens[k]
    offsets[rows] = n
    return offsets[: rows + 1].copy(), np.arange(n).astype(lens.dtype)


def run_kernel(lens: np.ndarray, capacity: int, algorithm: str) -> tuple[np.ndarray, np.ndarray]:
    """``(row_offsets, order)`` of ``algorithm`` over ``lens`` (int64, capacity already applied)."""
    if algorithm == "bfd":
        best = _best_fit_decreasing(lens, capacity)
        first = _greedy_fill(lens, capacity, False)
        return first if len(first[0]) < len(best[0]) else best
    if algorithm == "ffd":
        return _greedy_fill(lens, capacity, False)
    if algorithm == "knapsack":
        return _greedy_fill(lens, capacity, True)
    return _next_fit(lens, capacity)
