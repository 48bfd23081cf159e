"""One MLflow name per figure, the same in every run that records it.

The pack-dataset run, its stage runs, the trainer's run, the finetune run and the pipeline run
all map their numbers through these tables, so "sequence-length utilization" is
``data/seq_utilization`` everywhere (it used to be ``efficiency``, ``dataset_efficiency`` and
``dataset.efficiency``). The ``data/`` and ``train/`` prefixes are MLflow UI chart sections.

Only headline figures are metrics (worth a chart and a column in the runs table); every other
number of a run is a constant and goes to params (``stats.*``, see :func:`stats_params`) and to
the run's JSON artifacts, not to a one-bar chart. README "Tracking" holds the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DATA = {
    "efficiency": "data/seq_utilization",  # real tokens / (rows x seq_length)
    "samples_in": "data/samples_in",
    "total": "data/samples_in",  # the validate stage's name for records read
    "valid": "data/samples_valid",
    "rejected_total": "data/samples_rejected",
    "truncated": "data/samples_truncated",
    "dropped": "data/samples_dropped",
    "split": "data/samples_split",
    "rows": "data/rows",
    "total_tokens": "data/tokens",
    "tokens": "data/tokens",  # the tokenize stage's name for the same count
    "samples_added": "data/samples_added",  # nightly re-pack diff against the previous version
    "samples_removed": "data/samples_removed",
}
"""Dataset figures (sidecar ``stats``, stage results, version diff) -> metric name."""

STEP = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "padding_fraction": "train/padding_fraction",
    "step_time_s": "train/step_time_s",
    "tflops_per_device": "train/tflops_per_device",  # --engine mindspeed, when it prints them
    "valid_loss": "train/valid_loss",  # held-out loss, at --eval-interval steps and the last one
}
"""Per-step trainer figures (``train_log.jsonl`` keys) -> metric name (a curve over steps)."""

SUMMARY = {
    "final_loss": "train/final_loss",
    "first_loss": "train/first_loss",
    "tokens_per_s": "train/mean_tokens_per_s",  # real tokens/s over the run, warm-up excluded
    "valid_loss": "train/final_valid_loss",  # the last evaluation's held-out loss
}
"""A training run's summary -> metric name."""

PUBLISH = {
    "removed_fraction": "publish/removed_fraction",  # share of the previous version's samples gone
    "efficiency_drop": "publish/efficiency_drop",  # seq-utilization points lost
    "gate_passed": "publish/gate_passed",  # 1 when the publish gate found no problem
    "published": "publish/published",  # 1 when latest moved to this run's version
}
"""The nightly publish gate's measurements and outcome (``publish`` stage and flow run)."""

RUN = {"seconds": "run/seconds"}
"""Wall time of a flow run."""

HEADLINE = (
    "data/seq_utilization", "data/samples_in", "data/samples_valid", "data/samples_rejected",
    "train/final_loss", "train/mean_tokens_per_s", "run/seconds",
)  # fmt: skip
"""What the top-level pipeline run carries (with the ``train/loss`` curve and its plot)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def named(values: Mapping[str, Any], table: Mapping[str, str]) -> dict[str, float]:
    """The finite numbers of ``values`` whose key is in ``table``, under their metric names."""
    out: dict[str, float] = {}
    for key, value in values.items():
        number = _number(value)
        if key in table and number is not None:
            out[table[key]] = number
    return out


def stats_params(
    values: Mapping[str, Any], prefix: str = "stats", metrics: Mapping[str, str] = DATA
) -> dict[str, Any]:
    """Every scalar of ``values`` not logged as one of ``metrics`` (plus counts by reason), as
    ``{prefix: {...}}`` for ``Tracker.log_params``; histograms stay in the JSON artifacts."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            if key in ("rejected", "repaired"):  # counts per reject reason, per --repair kind
                flat |= {f"{key}.{k}": v for k, v in value.items() if _number(v) is not None}
            continue
        if key not in metrics and (_number(value) is not None or isinstance(value, str | bool)):
            flat[key] = value
    return {prefix: flat} if flat else {}


def all_names() -> list[str]:
    """Every metric name packft logs, once each (README "Tracking" lists them all)."""
    return list(
        dict.fromkeys(
            [*DATA.values(), *STEP.values(), *SUMMARY.values(), *PUBLISH.values(), *RUN.values()]
        )
    )
