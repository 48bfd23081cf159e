"""``finetune``: convert_checkpoint (HF -> mcore) -> finetune (packft.train) -> export.

The trainer's own MLflow run (per-step ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``) is
nested under this flow run's ``train`` stage run; cached stages are still logged from their
stored results. Run: ``python -m flows.finetune CONFIG.yaml``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows import reporting
from flows.results import FinetuneRunResult
from packft.pipeline_config import FinetuneConfig, load_flow_config
from packft.track import metric_names
from packft.track.tracking import Tracker
from packft.train.engine import check_engine
from packft.train.summary import TrainSummary
from tasks.model import convert_checkpoint, dataset_digest, dir_digest, export, finetune
from tasks.results import ParentRun


def train_stage(cfg: FinetuneConfig, tracker: Tracker) -> tuple[TrainSummary, str]:
    """Run ``finetune`` with the trainer's MLflow run nested under a ``train`` stage run;
    returns the training summary and the task's final state name (``Completed``, ``Cached``)."""
    stage = tracker.child("train", tags={"packft.stage": "train"})
    train_cfg = cfg.train.model_copy(  # untracked stage (disabled or store lost): trainer too
        update={"tracking": stage.run_id is not None, "tracking_uri": tracker.tracking_uri,
                "tracking_required": cfg.run.tracking_required, "run_name": "trainer"}
    )  # fmt: skip
    parent = None
    if stage.run_id:
        parent = ParentRun(run_id=stage.run_id, experiment=stage.experiment,
                           tracking_uri=stage.tracking_uri)  # fmt: skip
    state = finetune.with_options(result_storage=cfg.run.result_path)(
        train_cfg,
        dataset_digest(train_cfg.data_path),
        dir_digest(train_cfg.model or train_cfg.load),
        parent,
        return_state=True,
    )
    result: TrainSummary = state.result()
    summary = {**result.figures(), "state": state.name}
    stage.log(metric_names.named(summary, metric_names.SUMMARY), step=0)
    stage.log_params(metric_names.stats_params(summary, "train", metric_names.SUMMARY))
    stage.log_artifact("train_summary.json", summary)
    stage.close()
    return result, state.name


def run_finetune(cfg: FinetuneConfig, parent_run_id: str | None = None) -> FinetuneRunResult:
    """The flow body (also called by ``pipeline``); returns the run summary."""
    check_engine(cfg.train)  # every engine setting, before anything is converted or tracked
    started = time.perf_counter()
    run = cfg.run
    storage = run.result_path
    with reporting.flow_tracker(
        run.tracking_uri, run.experiment or "finetune", enabled=run.tracking,
        parent_run_id=parent_run_id, required=run.tracking_required,
    ) as tracker:  # fmt: skip
        tracker.log_params(cfg.model_dump(mode="json"))
        states: dict[str, str] = {}
        if cfg.convert is not None:
            converted = convert_checkpoint.with_options(result_storage=storage)(
                cfg.convert, dir_digest(cfg.convert.load_dir), return_state=True
            )
            states["convert_checkpoint"] = converted.name
            reporting.log_stage(tracker, "convert", {}, details=converted.result()).close()
        summary, states["finetune"] = train_stage(cfg, tracker)
        hf_dir = summary.checkpoint or f"{cfg.train.save}/hf"
        exported = export.with_options(result_storage=storage)(
            hf_dir, dir_digest(hf_dir), cfg.export, return_state=True
        )
        states["export"] = exported.name
        if cfg.export.log_model:
            tracker.log_artifact("model", Path(hf_dir))
        return reporting.finish_finetune_run(
            tracker, summary, exported.result(), states, time.perf_counter() - started
        )


@flow(name="finetune", log_prints=True)
def finetune_flow(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: FinetuneConfig | None = None,
    mlflow_parent_run_id: str | None = None,
) -> FinetuneRunResult:
    """Fine-tune on a packed dataset; see the module docstring.

    Args:
        config_file: YAML with ``convert`` (convert-ckpt flags), ``train`` (packft train flags),
            ``export`` and ``run``.
        overrides: nested values merged over the file.
        config: a ready config (programmatic use); wins over the file.
        mlflow_parent_run_id: nest this run's MLflow run under that run (used by ``pipeline``).
    """
    cfg = config or load_flow_config(FinetuneConfig, config_file, overrides)
    return run_finetune(cfg, mlflow_parent_run_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.finetune [CONFIG.yaml] [--set section.key=VALUE ...]``."""
    from flows.cli import run_flow_main

    return run_flow_main(
        "python -m flows.finetune", argv, FinetuneConfig, lambda cfg: finetune_flow(config=cfg)
    )


if __name__ == "__main__":
    sys.exit(main())
