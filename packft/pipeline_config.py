"""One typed config per flow, composed from the step configs the CLI already uses.

* ``pack-dataset`` = :class:`PackDatasetConfig`: ``preprocess`` is exactly ``packft preprocess``'s
  :class:`~packft.preprocess.config.PreprocessConfig` (same field names as the flags), plus optional
  ``more_inputs`` (further sources, each with its own format) and ``run`` (orchestration only).
* ``finetune`` = :class:`FinetuneConfig`: ``convert`` (``packft convert-ckpt``'s flags),
  ``train`` (``packft train``'s :class:`~packft.train.config.TrainConfig`), ``export``, ``run``.
* ``pipeline`` = :class:`PipelineConfig`: both; ``train.data_path``, ``tokenizer_name_or_path``
  and ``seq_length`` default to the pack section's output, tokenizer and row length.

YAML files use the same names (``-`` or ``_``), nested by section; :func:`load_flow_config` reads
one, deep-merges overrides (what Prefect deployments and ``--set`` pass) and reports every problem
at once. Relative paths are relative to the working directory (the checkout, for deployments).

Dataset layout under ``root = dirname(preprocess.output_prefix)`` with ``name =
basename(output_prefix)``: ``root/versions/<stamp>-<fingerprint>/name_packed_*`` and
``root/latest -> versions/...``; train on ``root/latest/name``. ``run.max_removed_fraction`` and
``run.max_efficiency_drop`` are the publish gate (:mod:`packft.dataset.publish_gate`);
``run.force_publish`` overrides it for one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from packft.ckpt.options import ConvertConfig
from packft.core.config import read_yaml, validate
from packft.core.errors import ConfigError
from packft.dataset.publish_gate import (
    DEFAULT_MAX_EFFICIENCY_DROP,
    DEFAULT_MAX_REMOVED_FRACTION,
    PublishGate,
)
from packft.preprocess.config import PreprocessConfig
from packft.track.tracking import data_dir
from packft.train.config import TrainConfig

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "ConvertConfig",
    "ExportConfig",
    "FinetuneConfig",
    "InputSource",
    "PackDatasetConfig",
    "PipelineConfig",
    "RunOptions",
    "deep_merge",
    "load_flow_config",
]


class RunOptions(BaseModel):
    """How a flow runs (never what it computes): caches, parallelism, tracking, versions."""

    work_dir: Path | None = Field(None, description="shards, plans, downloads (default: DATA/work)")
    result_storage: Path | None = Field(
        None, description="Prefect task results = the cache (default: work_dir/prefect-results)"
    )
    parallel: int = Field(2, ge=1, description="input files tokenized at the same time")
    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads", description="where tokenize tasks run: threads | dask | ray"
    )
    cluster_address: str | None = Field(
        None,
        description="existing Dask scheduler (tcp://host:8786) or Ray cluster: its GCS address "
        "(host:6379, from a cluster node; tested) or Ray Client's ray://host:10001 (see README)",
    )
    tracking: bool = Field(True, description="record the run in MLflow")
    tracking_uri: str | None = Field(
        None, description="MLflow URI (default: MLFLOW_TRACKING_URI, else DATA/mlflow.db)"
    )
    tracking_required: bool = Field(
        False, description="fail the run when MLflow is unreachable (default: warn once, go on)"
    )
    experiment: str | None = Field(None, description="MLflow experiment (default: the flow name)")
    refresh_sources: bool = Field(False, description="download URLs again even if cached")
    keep_previous: int = Field(
        2,
        ge=0,
        description="published versions kept besides latest (rollback), and as many unpublished",
    )
    max_removed_fraction: float = Field(
        DEFAULT_MAX_REMOVED_FRACTION,
        ge=0,
        le=1,
        description="publish gate: refuse to move latest if the new version drops more than this "
        "fraction of latest's samples",
    )
    max_efficiency_drop: float = Field(
        DEFAULT_MAX_EFFICIENCY_DROP,
        ge=0,
        le=1,
        description="publish gate: refuse to move latest if packing efficiency falls by more than "
        "this (absolute; 0.05 = 5 points)",
    )
    force_publish: bool = Field(
        False,
        description="move latest even if the publish gate refuses (pass per run, not in YAML)",
    )

    def publish_gate(self) -> PublishGate:
        return PublishGate(self.max_removed_fraction, self.max_efficiency_drop)

    @property
    def work_path(self) -> Path:
        return (self.work_dir or data_dir() / "work").expanduser().resolve()

    @property
    def result_path(self) -> Path:
        return (self.result_storage or self.work_path / "prefect-results").expanduser().resolve()


class InputSource(BaseModel):
    """One more data source for the same dataset, possibly in another format."""

    input: str = Field(description="file, directory, http(s) URL or hf://datasets/OWNER/NAME")
    handler_name: str | None = Field(None, description="format (default: preprocess's)")
    map_keys: dict[str, Any] | None = Field(None, description="column renames for this source")
    input_sha256: str | None = Field(None, description="expected sha256 of a downloaded file")


class PackDatasetConfig(BaseModel):
    """Parameters of the ``pack-dataset`` flow."""

    preprocess: PreprocessConfig
    more_inputs: list[InputSource] = Field(default_factory=list)
    run: RunOptions = Field(default_factory=RunOptions)

    def sources(self) -> list[PreprocessConfig]:
        """One PreprocessConfig per source (the main one first), sharing every other option."""
        extra = [
            self.preprocess.model_copy(
                update={
                    "input": s.input,
                    "handler_name": s.handler_name or self.preprocess.handler_name,
                    "map_keys": s.map_keys,
                    "input_sha256": s.input_sha256,
                }
            )
            for s in self.more_inputs
        ]
        return [self.preprocess, *extra]

    @property
    def output_root(self) -> Path:
        return self.preprocess.prefix.parent

    @property
    def latest_prefix(self) -> Path:
        return self.output_root / "latest" / self.preprocess.prefix.name


class ExportConfig(BaseModel):
    """What happens to the fine-tuned weights ({train.save}/hf)."""

    mcore_dir: str | None = Field(None, description="also convert them to mcore (MindSpeed) here")
    target_tensor_parallel_size: int = Field(1, ge=1)
    target_pipeline_parallel_size: int = Field(1, ge=1)
    log_model: bool = Field(False, description="upload the HF weights to MLflow as artifacts")


class FinetuneConfig(BaseModel):
    """Parameters of the ``finetune`` flow: convert -> train -> export."""

    convert: ConvertConfig | None = None
    train: TrainConfig
    export: ExportConfig = Field(default_factory=ExportConfig)
    run: RunOptions = Field(default_factory=RunOptions)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        c = self.convert
        if c is not None and c.save_model_type == "mg" and self.train.load != c.save_dir:
            raise ValueError(
                f"train.load ({self.train.load}) must be convert.save_dir ({c.save_dir}): the "
                "trainer loads the converted checkpoint"
            )
        return self


class PipelineConfig(BaseModel):
    """Parameters of the ``pipeline`` flow: pack-dataset, then finetune on its output."""

    preprocess: PreprocessConfig
    more_inputs: list[InputSource] = Field(default_factory=list)
    convert: ConvertConfig | None = None
    train: TrainConfig
    export: ExportConfig = Field(default_factory=ExportConfig)
    run: RunOptions = Field(default_factory=RunOptions)

    @model_validator(mode="before")
    @classmethod
    def _train_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("preprocess"), dict):
            return data
        pre, train = data["preprocess"], dict(data.get("train") or {})
        prefix = Path(str(pre.get("output_prefix", "dataset"))).expanduser()
        train.setdefault("data_path", str(prefix.parent / "latest" / prefix.name))
        train.setdefault("tokenizer_name_or_path", pre.get("tokenizer_name_or_path"))
        train.setdefault("seq_length", pre.get("seq_length"))
        return {**data, "train": train}

    def pack_config(self) -> PackDatasetConfig:
        return PackDatasetConfig(
            preprocess=self.preprocess, more_inputs=self.more_inputs, run=self.run
        )

    def finetune_config(self, data_path: str | None = None) -> FinetuneConfig:
        train = self.train.model_copy(update={"data_path": data_path or self.train.data_path})
        return FinetuneConfig(convert=self.convert, train=train, export=self.export, run=self.run)


def _normalize(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).replace("-", "_"): _normalize(v) for k, v in data.items()}
    return data


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` into ``base``: nested dicts merge, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_flow_config(
    model: type[M],
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Build a flow config from a YAML file plus nested overrides; all problems in one error.

    The output prefix's directory is created first (the preprocess config requires it to exist).

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ConfigError: the merged config is invalid (every problem listed).
    """
    data = _normalize(read_yaml(config_file)) if config_file else {}
    data = deep_merge(data, _normalize(overrides or {}))
    if not data:
        raise ConfigError(
            f"no parameters for {model.__name__}: pass config_file (see deployments/*.yaml)"
        )
    prefix = (data.get("preprocess") or {}).get("output_prefix")
    if prefix:
        Path(str(prefix)).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return validate(model, data)
