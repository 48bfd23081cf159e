"""Dataset statistics: merge the tokenize and pack counts, and show them as a table.

The sidecar's ``stats`` combine two sources: each tokenized shard's own counts (records read,
valid, rejected per reason, truncated or dropped by the tokenizer's budget) and the plan's
(dropped, truncated or split by ``--overlong`` at the row capacity), plus what
:func:`packft.rows.write_sft_dataset` measured while writing (tokens, rows, efficiency, ...).
With ``--overlong drop`` a sample the tokenizer cut to ``seq_length`` and the pack step then
dropped counts once as truncated and once as dropped; with ``truncate`` and ``split`` the
tokenizer's budget already fits a row, so each sample is counted at most once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packft.pack import PackPlan

TABLE_KEYS = (
    "samples_in", "valid", "rejected_total", "truncated", "dropped", "split", "rows",
    "total_tokens", "supervised_tokens", "lower_bound_rows", "efficiency", "pad_fraction",
    "samples_per_row_mean", "samples_per_row_min", "samples_per_row_max",
    "efficiency_padded_alone", "sum_squared_lengths",
)  # fmt: skip


def tokenize_totals(shard_paths: list[Path]) -> dict[str, Any]:
    """Sum the counts every tokenize shard stores in its metadata (no token data is read)."""
    from packft.tokenize import read_stats

    totals: dict[str, Any] = {"samples_in": 0, "valid": 0, "rejected": {}, "truncated": 0,
                              "dropped": 0}  # fmt: skip
    for shard in shard_paths:
        data = read_stats(shard)
        for key in ("samples_in", "valid", "truncated", "dropped"):
            totals[key] += int(data.get(key, 0))
        for reason, count in (data.get("rejected") or {}).items():
            totals["rejected"][reason] = totals["rejected"].get(reason, 0) + int(count)
    return totals


def merged_counts(tok: dict[str, Any], the_plan: PackPlan) -> dict[str, Any]:
    """Tokenize counts plus the plan's: truncated/dropped at either step, split at the pack."""
    return {
        "samples_in": tok["samples_in"],
        "valid": tok["valid"],
        "rejected": tok["rejected"],
        "rejected_total": sum(tok["rejected"].values()),
        "truncated": tok["truncated"] + int(the_plan.truncated),
        "dropped": tok["dropped"] + len(the_plan.dropped),
        "split": int(the_plan.split),
    }


def stats_table(stats: dict[str, Any], title: str = "packft dataset") -> Any:
    """A rich table of the headline stats."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key in TABLE_KEYS:
        if key in stats:
            value = stats[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        if key == "rejected_total":  # then one row per reject reason, most frequent first
            reasons = sorted((stats.get("rejected") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
            for reason, count in reasons:
                table.add_row(f"  rejected: {reason}", str(count))
    return table
