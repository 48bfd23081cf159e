"""Dataset statistics: merge the tokenize and pack counts, and show them as a table.

The sidecar's ``stats`` combine two sources: each tokenized shard's own counts (records read,
valid, rejected per reason, truncated or dropped by the tokenizer's budget) and the plan's
(dropped, truncated or split by ``--overlong`` at the row capacity), plus what
:func:`packft.dataset.rows.write_sft_dataset` measured while writing (tokens, rows, efficiency,
...). With ``--overlong drop`` a sample the tokenizer cut to ``seq_length`` and the pack step then
dropped counts once as truncated and once as dropped; with ``truncate`` and ``split`` the
tokenizer's budget already fits a row, so each sample is counted at most once.
``truncated_marker_lost`` counts the truncated samples whose cut removed a template marker from a
kept prompt (MindSpeed's cut; see :mod:`packft.tokenize.truncation`), ``repaired`` the kept records
per ``--repair`` kind. The table shows the headline numbers, the top reject reasons and, when given,
the rejects file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from packft.core.results import Result
from packft.pack.plan import PackPlan


class RowStats(Result):
    """What the rows of a written dataset hold (:func:`packft.dataset.rows.row_stats` fills it
    while the plan is in memory); the first part of the sidecar's ``stats``."""

    model_config = ConfigDict(frozen=False)  # filled field by field by ``row_stats``

    seq_length: int
    rows: int = 0
    items: int = 0
    total_tokens: int = 0
    supervised_tokens: int = 0
    lower_bound_rows: int = 0
    efficiency: float = 0.0
    pad_fraction: float = 0.0
    samples_per_row_mean: float = 0.0
    samples_per_row_min: int = 0
    samples_per_row_max: int = 0
    samples_per_row_histogram: dict[str, int] = Field(default_factory=dict)
    sum_squared_lengths: int = 0
    efficiency_padded_alone: float = 0.0
    dropped: int = 0
    truncated: int = 0
    split: int = 0


class DatasetStats(RowStats):
    """The sidecar's ``stats``: the row figures plus the records' counts (:func:`merged_counts`:
    read, valid, rejected per reason, repaired per kind; ``dropped``/``truncated``/``split`` then
    count both the tokenize and the pack step). Field order is the sidecar's key order."""

    model_config = ConfigDict(frozen=True)

    samples_in: int = 0
    valid: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    rejected_total: int = 0
    repaired: dict[str, int] = Field(default_factory=dict)
    truncated_marker_lost: int = 0

    @classmethod
    def of(cls, rows: RowStats, counts: dict[str, Any]) -> DatasetStats:
        """``rows`` with the merged counts on top (theirs win, as in the sidecar)."""
        return cls.model_validate({**rows.model_dump(), **counts})


TABLE_KEYS = (
    "samples_in", "valid", "rejected_total", "truncated", "truncated_marker_lost", "dropped",
    "split", "rows",
    "total_tokens", "supervised_tokens", "lower_bound_rows", "efficiency", "pad_fraction",
    "samples_per_row_mean", "samples_per_row_min", "samples_per_row_max",
    "efficiency_padded_alone", "sum_squared_lengths",
)  # fmt: skip


def tokenize_totals(shard_paths: list[Path]) -> dict[str, Any]:
    """Sum the counts every tokenize shard stores in its metadata (no token data is read)."""
    from packft.tokenize.shards import read_stats

    totals: dict[str, Any] = {"samples_in": 0, "valid": 0, "rejected": {}, "repaired": {},
                              "truncated": 0, "truncated_marker_lost": 0,
                              "dropped": 0}  # fmt: skip
    for shard in shard_paths:
        data = read_stats(shard)
        for key in ("samples_in", "valid", "truncated", "truncated_marker_lost", "dropped"):
            totals[key] += int(data.get(key, 0))
        for group in ("rejected", "repaired"):
            for name, count in (data.get(group) or {}).items():
                totals[group][name] = totals[group].get(name, 0) + int(count)
    return totals


def merged_counts(tok: dict[str, Any], the_plan: PackPlan) -> dict[str, Any]:
    """Tokenize counts plus the plan's: truncated/dropped at either step, split at the pack."""
    return {
        "samples_in": tok["samples_in"],
        "valid": tok["valid"],
        "rejected": tok["rejected"],
        "rejected_total": sum(tok["rejected"].values()),
        "repaired": dict(sorted(tok.get("repaired", {}).items())),
        "truncated": tok["truncated"] + int(the_plan.truncated),
        "truncated_marker_lost": tok.get("truncated_marker_lost", 0),
        "dropped": tok["dropped"] + len(the_plan.dropped),
        "split": int(the_plan.split),
    }


def top_rejects(rejected: dict[str, int], n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent reject reasons (ties by name), then ``(+K more)`` for the rest."""
    ranked = sorted(rejected.items(), key=lambda item: (-item[1], item[0]))
    rest = ranked[n:]
    return ranked[:n] + (
        [(f"(+{len(rest)} more reasons)", sum(c for _, c in rest))] if rest else []
    )


def detail_rows(stats: dict[str, Any], rejects_file: Path | str | None = None) -> list[tuple]:
    """Rows under the headline: rejects by reason (top 5), repairs by kind, the rejects file."""
    rows: list[tuple[str, Any]] = [
        (f"  rejected: {reason}", count) for reason, count in top_rejects(stats.get("rejected", {}))
    ]
    rows += [(f"  repaired: {kind}", n) for kind, n in sorted(stats.get("repaired", {}).items())]
    if rejects_file is not None:
        rows.append(("rejects file", str(rejects_file)))
    return rows


def stats_table(
    stats: dict[str, Any], title: str = "packft dataset", rejects_file: Path | str | None = None
) -> Any:
    """A rich table of the headline stats, then :func:`detail_rows`."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key in TABLE_KEYS:
        if key in stats:
            value = stats[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in detail_rows(stats, rejects_file):
        table.add_row(key, str(value))
    return table
