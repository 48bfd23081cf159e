"""``pipeline``: ``pack-dataset`` then ``finetune`` on the version it produced (two subflows).

One MLflow run per pipeline run in the ``pipeline`` experiment; the two subflow runs nest under
it and their stage runs under them (pipeline > pack-dataset > tokenize ...). The fine-tune reads
the concrete version directory just written (not ``latest``), so a nightly re-pack running at the
same time cannot change the data under a training run. Run: ``python -m flows.pipeline CONFIG``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow

from flows import reporting
from flows.finetune import finetune_flow
from flows.pack_dataset import pack_dataset
from flows.results import PipelineRunResult
from packft.dataset.stats import DatasetStats
from packft.pipeline_config import PipelineConfig, load_flow_config
from packft.track import ui_command
from packft.track.tracking import Tracker
from packft.train.summary import TrainSummary


def log_headline(
    tracker: Tracker, stats: DatasetStats, summary: TrainSummary, save: str, seconds: float
) -> None:
    """The figures people look at first, on the top-level run: utilization, samples in/valid/
    rejected, final loss, tokens/s, wall time, the ``train/loss`` curve and the loss/lr plot."""
    from packft.track import metric_names as names
    from packft.train.history import curves_figure, log_steps, read_steps

    figures = names.named(stats.model_dump(), names.DATA)
    figures |= names.named(summary.figures(), names.SUMMARY)
    figures |= names.named({"seconds": seconds}, names.RUN)
    tracker.log({k: v for k, v in figures.items() if k in names.HEADLINE}, step=0)
    try:
        steps = read_steps(save)
    except (OSError, ValueError):  # e.g. the save dir was moved since the cached finetune ran
        return
    log_steps(tracker, steps, keys=("loss",))
    figure = curves_figure(steps)
    if figure is not None:
        tracker.log_artifact("plots/loss_lr.png", figure)


@flow(name="pipeline", log_prints=True)
def pipeline(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> PipelineRunResult:
    """Pack a dataset, then fine-tune on it.

    Args:
        config_file: YAML with ``preprocess``, ``more_inputs``, ``convert``, ``train``, ``export``,
            ``run`` (``train.data_path`` etc. default to the pack output).
        overrides: nested values merged over the file.
        config: a ready config (programmatic use); wins over the file.
    """
    started = time.perf_counter()
    cfg = config or load_flow_config(PipelineConfig, config_file, overrides)
    with reporting.flow_tracker(
        cfg.run.tracking_uri, cfg.run.experiment or "pipeline", enabled=cfg.run.tracking,
        required=cfg.run.tracking_required,
    ) as tracker:  # fmt: skip
        tracker.log_params(cfg.model_dump(mode="json"))
        run = cfg.run.model_copy(update={"experiment": tracker.experiment or "pipeline"})
        pack_cfg = cfg.pack_config().model_copy(update={"run": run})
        data = pack_dataset(config=pack_cfg, mlflow_parent_run_id=tracker.run_id)
        tune_cfg = cfg.finetune_config(data_path=data.prefix).model_copy(update={"run": run})
        model = finetune_flow(config=tune_cfg, mlflow_parent_run_id=tracker.run_id)
        seconds = time.perf_counter() - started
        log_headline(tracker, data.stats, model.train, tune_cfg.train.save, seconds)
        reporting.publish_markdown(
            "pipeline-summary",
            "pipeline",
            [
                (
                    "Outputs",
                    [
                        ("dataset", data.headline),
                        ("trained on", f"`{data.prefix}`"),
                        *[(f"{k} weights", f"`{v}`") for k, v in model.exported.weights().items()],
                        ("final loss", model.train.final_loss),
                        ("seconds", round(seconds, 1)),
                        *reporting.run_links(tracker),
                    ],
                )
            ],
        )
        if tracker.run_id:
            print(f"MLflow UI: {ui_command(tracker.tracking_uri)}")
        print(f"Prefect UI: {reporting.prefect_ui_command()}")
    return PipelineRunResult(pack=data, finetune=model, mlflow_run_id=tracker.run_id,
                             seconds=round(seconds, 2))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline [CONFIG.yaml] [--set section.key=VALUE ...]``."""
    from flows.cli import run_flow_main

    return run_flow_main(
        "python -m flows.pipeline", argv, PipelineConfig, lambda cfg: pipeline(config=cfg)
    )


if __name__ == "__main__":
    sys.exit(main())
