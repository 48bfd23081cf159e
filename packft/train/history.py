"""What a training run records in MLflow: live (``packft train``) or later from its save dir.

Live, the trainer sends every step's figures (``train/*``, see :mod:`packft.track.metric_names`) to
the non-blocking tracker and appends the same numbers to ``{save}/train_log.jsonl``; it writes
``{save}/train_config.json`` (its options) before the first step and, at the end,
``{save}/train_summary.json`` and ``{save}/plots/loss_lr.png`` (loss and lr over the steps).
So a run whose tracking server was unreachable or died mid-run loses nothing:
``packft track-import SAVE --tracking-uri URI`` replays those files into a new MLflow run
(params, dataset figures, every step, summary, plot), tagged ``packft.imported_from``; it only
reads the directory. The import needs the server: an unreachable one is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packft.track import metric_names

CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
PLOT_FILE = "plots/loss_lr.png"


def read_steps(save: str | Path) -> list[dict[str, Any]]:
    """The records of ``{save}/train_log.jsonl``; a torn last line (killed writer) is skipped."""
    path = Path(save) / LOG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: not a `packft train --save` directory (it holds {LOG_FILE})"
        )
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number} is not JSON: {line[:80]!r}") from None
    return records


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a run that ended before writing its own (first step = warm-up, skipped)."""
    if not steps:
        return {"steps": 0}
    timed = steps[1:] or steps
    seconds = sum(float(s.get("step_time_s") or 0) for s in timed)
    tokens = sum(
        float(s.get("tokens_per_s") or 0) * float(s.get("step_time_s") or 0) for s in timed
    )
    return {
        "steps": int(steps[-1]["step"]),
        "first_loss": steps[0].get("loss"),
        "final_loss": steps[-1].get("loss"),
        "valid_loss": next((s["valid_loss"] for s in reversed(steps) if "valid_loss" in s), None),
        "tokens_per_s": tokens / seconds if seconds else None,
    }


def log_dataset(tracker: Any, sidecar: Mapping[str, Any], base: Mapping[str, Any]) -> None:
    """The dataset trained on: its options as ``dataset.*`` params, its figures (``data/*``)."""
    stats = dict(sidecar.get("stats") or {})
    tracker.log_params({"dataset": {**base, **{k: v for k, v in sidecar.items() if k != "stats"}}})
    tracker.log_params(metric_names.stats_params(stats))
    tracker.log(metric_names.named(stats, metric_names.DATA), step=0)
    if sidecar:
        tracker.log_artifact("dataset_sidecar.json", dict(sidecar))


def log_steps(tracker: Any, steps: list[dict[str, Any]], keys: tuple[str, ...] = ()) -> None:
    """Every step's figures (only ``keys`` of them when given) under their ``train/*`` names."""
    table = {k: v for k, v in metric_names.STEP.items() if not keys or k in keys}
    for record in steps:
        tracker.log(metric_names.named(record, table), step=int(record["step"]))


def curves_figure(steps: list[dict[str, Any]]) -> Any:
    """Loss and lr over the step records (None when there are no steps)."""
    if not steps:
        return None
    from packft.track.plots import training_curves

    column = {k: [float(s.get(k) or 0) for s in steps] for k in ("step", "loss", "lr")}
    return training_curves(column["step"], column["loss"], column["lr"])


def log_summary(tracker: Any, summary: Mapping[str, Any], figure: Any) -> None:
    """The summary figures (``train/final_loss`` ...), the rest as params, the curves plot."""
    tracker.log(metric_names.named(summary, metric_names.SUMMARY), step=int(summary["steps"]))
    tracker.log_params(metric_names.stats_params(summary, "train", metric_names.SUMMARY))
    tracker.log_artifact(SUMMARY_FILE, dict(summary))
    if figure is not None:
        tracker.log_artifact(PLOT_FILE, figure)


def finish(tracker: Any, save: str | Path, summary: Mapping[str, Any]) -> None:
    """End of a live run: write the summary file and the plot into ``save``, log both."""
    from packft.core.atomic import atomic_write_bytes
    from packft.track.plots import save_figure

    atomic_write_bytes(Path(save) / SUMMARY_FILE, (json.dumps(dict(summary)) + "\n").encode())
    figure = curves_figure(read_steps(save))
    if figure is not None:
        save_figure(figure, Path(save) / PLOT_FILE)
    log_summary(tracker, summary, figure)


def write_config(save: str | Path, config: Mapping[str, Any]) -> None:
    """``{save}/train_config.json``: the options, for a later import."""
    from packft.core.atomic import atomic_write_bytes

    data = json.dumps(dict(config), indent=1, default=str) + "\n"
    atomic_write_bytes(Path(save) / CONFIG_FILE, data.encode())


def replay(save: str | Path, tracker: Any) -> dict[str, Any]:
    """Log a finished or interrupted run's files into ``tracker``; returns its summary."""
    save = Path(save)
    steps = read_steps(save)
    config_path = save / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config:
        tracker.log_params(config)
        sidecar_path = Path(f"{config.get('data_path')}.packft.json")
        if config.get("data_path") and sidecar_path.exists():
            log_dataset(tracker, json.loads(sidecar_path.read_text()), {})
    log_steps(tracker, steps)
    summary_path = save / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else summarize(steps)
    log_summary(tracker, summary, curves_figure(steps))  # the save dir is only read
    return summary


# ------------------------------------------------------------------ `packft track-import`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("save", help="the --save directory of a `packft train` run")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow URI (default: the run's own --tracking-uri, else as `packft train`)",
    )  # fmt: skip
    parser.add_argument("--experiment", default=None, help="default: the run's own experiment")
    parser.add_argument("--run-name", default=None, help="default: 'import: SAVE_NAME'")


def run(args: argparse.Namespace) -> int:
    from packft.track.tracking import make_tracker, ui_command

    save = Path(args.save).resolve()
    read_steps(save)  # a wrong directory fails before any run is created
    config_path = save / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    experiment = args.experiment or config.get("experiment") or "packft-train"
    tracker = make_tracker(
        args.tracking_uri or config.get("tracking_uri"), experiment, args.run_name or f"import: {save.name}",
        tags={"packft.imported_from": str(save)}, required=True,
    )  # fmt: skip
    status = "FAILED"
    try:
        summary = replay(save, tracker)
        status = "FINISHED"
    finally:
        tracker.close(status)
    uri = getattr(tracker, "tracking_uri", "")
    print(f"imported {summary.get('steps')} steps of {save} into MLflow run {tracker.run_id}")
    print(f"MLflow UI: {ui_command(uri)}")
    return 0
