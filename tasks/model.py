"""Model tasks: ``convert_checkpoint`` (HF <-> mcore), ``finetune`` (packft.train), ``export``.

All three are cached on content: the model/checkpoint directory's digest (every file), the
dataset's sidecar digest (it records inputs, tokenizer, options and stats of that exact version),
and the options, so re-running a pipeline whose data did not change does not retrain. A stored
result whose output directory is gone is not reused (``tasks.caching.content_cache``).
``finetune`` nests the trainer's own MLflow run (per-step loss, lr, grad norm, tokens/s) under the
flow's ``train`` stage run via :func:`packft.track.nest_runs_under`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from packft.pipeline_config import ConvertConfig, ExportConfig
from packft.train.config import TrainConfig
from packft.train.summary import TrainSummary
from tasks.caching import content_cache, tree_sha256
from tasks.results import ExportResult, ParentRun
from tasks.serializer import SERIALIZER

TRAIN_IGNORED = (
    "tracking", "tracking_uri", "tracking_required", "experiment", "run_name", "log_interval",
)  # fmt: skip
"""TrainConfig fields that do not change the trained weights."""


def dir_digest(path: str | Path) -> str:
    return tree_sha256(Path(path)) if Path(path).exists() else f"missing:{path}"


def dataset_digest(prefix: str | Path) -> str:
    """A dataset version's identity: its sidecar (inputs, tokenizer, options, stats, sizes)."""
    sidecar = Path(f"{prefix}.packft.json")
    return tree_sha256(sidecar) if sidecar.exists() else dir_digest(Path(prefix).parent)


@task(
    name="convert_checkpoint",
    cache_key_fn=content_cache(
        outputs=lambda p: [Path(p["config"].save_dir)],
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def convert_checkpoint(config: ConvertConfig, source_digest: str) -> str:
    """Run ``packft convert-ckpt`` (``config`` = its flags); returns the output directory."""
    from packft.ckpt.convert import convert

    return str(convert(config))


def _train_view(p: dict[str, Any]) -> dict[str, Any]:
    """What the ``finetune`` key sees of its parameters (a Prefect parameter mapping): the
    config without :data:`TRAIN_IGNORED` fields."""
    config = p["config"].model_dump(mode="json")
    return {**p, "config": {k: v for k, v in config.items() if k not in TRAIN_IGNORED}}


@task(
    name="finetune",
    cache_key_fn=content_cache(
        exclude=("mlflow_parent",),
        outputs=lambda p: [Path(p["config"].save) / "hf" / "config.json"],
        view=_train_view,
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def finetune(
    config: TrainConfig,
    data_digest: str,
    model_digest: str,
    mlflow_parent: ParentRun | None = None,
) -> TrainSummary:
    """Train with ``packft.train.train``; returns its summary (steps, losses, tokens/s, paths)."""
    from packft.track import nest_runs_under
    from packft.train import train

    if mlflow_parent is None:
        return TrainSummary.of(train(config))
    with nest_runs_under(mlflow_parent):
        return TrainSummary.of(train(config))


@task(
    name="export",
    cache_key_fn=content_cache(
        outputs=lambda p: [Path(p["config"].mcore_dir)] if p["config"].mcore_dir else [],
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def export(hf_dir: str, hf_digest: str, config: ExportConfig) -> ExportResult:
    """Final weights for users: the HF dir as trained, plus an mcore copy for MindSpeed if asked."""
    from packft.ckpt import save_hf_as_mcore

    if not config.mcore_dir:
        return ExportResult(hf=hf_dir)
    mcore = save_hf_as_mcore(hf_dir, config.mcore_dir, config.target_tensor_parallel_size,
                             config.target_pipeline_parallel_size, overwrite=True)  # fmt: skip
    return ExportResult(hf=hf_dir, mcore=str(mcore))
