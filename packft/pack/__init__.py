"""Stage 3, pack: sample lengths in, a row -> sample-pieces plan out.

In: the token count of every sample (all shards at once), the row capacity (``seq_length - 1``),
an algorithm (``bfd``, ``ffd``, MindSpeed's ``knapsack``, ``sequential``), an overlong policy,
a seed and a mix group size. Out: a :class:`~packft.pack.plan.PackPlan` (saved as
``{prefix}.packft.plan.npz``), a pure function of those inputs.

Modules: :mod:`~packft.pack.plan` (the plan, its file, overlong handling, seeding) and
:mod:`~packft.pack.kernels` (the numba kernels, loaded on the first plan: reading a plan never
imports numba).
"""

from packft.pack.plan import (
    ALGORITHMS,
    OVERLONG_POLICIES,
    PackPlan,
    lower_bound_rows,
    plan_packing,
    plan_unpacked,
    warmup,
)

__all__ = [
    "ALGORITHMS",
    "OVERLONG_POLICIES",
    "PackPlan",
    "lower_bound_rows",
    "plan_packing",
    "plan_unpacked",
    "warmup",
]
