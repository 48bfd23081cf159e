"""``pack-dataset``: download -> validate -> quality gate -> tokenize (per file, parallel) -> pack
-> write -> publish.

The quality gate (``tasks.ingest.quality_gate``, the same check as ``packft preprocess``) fails
the run when too few records are valid, before anything is tokenized, written or published.

Every expensive task is cached on content (see ``tasks/caching.py``), so a second identical run
finishes from the cache, a changed input re-tokenizes only that file, and a failed run re-run
resumes from its cached tasks. ``write`` produces a new version directory only when the dataset
fingerprint changed; ``publish`` then moves ``latest`` atomically and the diff goes to MLflow.

Publish gate: when the new version drops more than ``run.max_removed_fraction`` of ``latest``'s
samples or loses more than ``run.max_efficiency_drop`` of efficiency, ``latest`` stays where it is,
the diff goes to MLflow (``publish`` stage, tag ``packft.publish=refused``) and to a Prefect
artifact (``pack-dataset-publish-refused``), and the run ends Failed. The new version stays on disk,
unpublished; ``run.force_publish=true`` on a re-run publishes it (tokenize/pack/write Cached).

Run it: ``python -m flows.pack_dataset deployments/pack-dataset-manual.yaml [packft preprocess
flags]`` (ephemeral Prefect, MLflow in ``.packft/mlflow.db``), or through ``prefect.yaml``.

Measured (2 shared cores, Llama-2 tokenizer, 3 x 60 Alpaca records, seq 512): first run ~10 s of
flow time, identical re-run ~6.6 s (all 8 expensive tasks Cached), plus ~5 s (existing DB) to
~17 s (fresh PREFECT_HOME) for the ephemeral Prefect server of a plain ``python -m`` run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.states import State

from flows import reporting
from flows.results import PackRunResult
from flows.runners import make_task_runner
from packft.dataset import PublishRefused
from packft.pipeline_config import PackDatasetConfig, load_flow_config
from packft.preprocess import PreprocessConfig, TokenizeResult, ValidationResult, WriteResult
from packft.track.tracking import Tracker
from tasks.caching import FileRef
from tasks.ingest import download, quality_gate, validate
from tasks.pack import dataset_fingerprint, pack, publish, shard_ref, write
from tasks.results import PublishedVersion
from tasks.tokenize import TokenizerRef, pin_tokenizer, tokenize

CACHED_TASKS = ("validate", "tokenize", "pack", "write")


def _state(future_or_state: PrefectFuture[Any] | State) -> str:
    state = getattr(future_or_state, "state", future_or_state)
    return state.name


def validate_parameters(ref: FileRef, cfg: PreprocessConfig, work_dir: Path) -> dict[str, Any]:
    """The ``validate`` task's parameters for one file (its options: the CLI's definition)."""
    return {"source": ref, "options": cfg.validate_options(), "work_dir": work_dir}


def tokenize_parameters(
    ref: FileRef, tokenizer: TokenizerRef, cfg: PreprocessConfig, work_dir: Path
) -> dict[str, Any]:
    """The ``tokenize`` task's parameters for one file (``cfg.tokenize_options()``)."""
    return {"source": ref, "tokenizer": tokenizer, "options": cfg.tokenize_options(),
            "work_dir": work_dir}  # fmt: skip


def pack_parameters(shards: list[FileRef], cfg: PreprocessConfig, work_dir: Path) -> dict[str, Any]:
    """The ``pack`` task's parameters (``cfg.pack_options()``)."""
    return {"shards": shards, "options": cfg.pack_options(), "work_dir": work_dir}


@flow(name="tokenize-shards")
def tokenize_shards(
    jobs: list[tuple[FileRef, PreprocessConfig]],
    tokenizer: TokenizerRef,
    work_dir: Path,
    storage: Path,
    refresh: bool = False,
) -> list[tuple[TokenizeResult, str]]:
    """Fan ``tokenize`` out over the files on this flow's task runner (threads/Dask/Ray)."""
    from transformers import AutoTokenizer  # noqa: F401  (its lazy first import is not thread-safe)

    task = tokenize.with_options(result_storage=storage, refresh_cache=refresh or None)
    futures = [task.submit(**tokenize_parameters(ref, tokenizer, c, work_dir)) for ref, c in jobs]
    return [(f.result(), _state(f)) for f in futures]


def fetch_inputs(
    cfg: PackDatasetConfig,
) -> tuple[list[tuple[FileRef, PreprocessConfig]], list[str]]:
    """``download`` each source; pairs every local file with its source's PreprocessConfig."""
    jobs, states = [], []
    for source in cfg.sources():
        state = download(
            source.input,
            cfg.run.work_path / "downloads",
            refresh=cfg.run.refresh_sources,
            sha256=source.input_sha256,
            return_state=True,
        )
        states.append(_state(state))
        jobs += [(ref, source) for ref in state.result()]
    return jobs, states


def validate_inputs(
    jobs: list[tuple[FileRef, PreprocessConfig]], cfg: PackDatasetConfig
) -> list[tuple[ValidationResult, str]]:
    """``validate`` every file in parallel, before anything is tokenized."""
    task = validate.with_options(result_storage=cfg.run.result_path)
    futures = [task.submit(**validate_parameters(ref, c, cfg.run.work_path)) for ref, c in jobs]
    return [(f.result(), _state(f)) for f in futures]


def tokenize_inputs(
    jobs: list[tuple[FileRef, PreprocessConfig]], tokenizer: TokenizerRef, cfg: PackDatasetConfig
) -> list[tuple[TokenizeResult, str]]:
    """The ``tokenize-shards`` subflow on the configured runner (threads, Dask or Ray)."""
    run = cfg.run
    runner = make_task_runner(run.task_runner, run.parallel, run.cluster_address)
    return tokenize_shards.with_options(task_runner=runner)(
        jobs, tokenizer, run.work_path, run.result_path, cfg.preprocess.overwrite_cache
    )


def plan_rows(shards: list[tuple[TokenizeResult, str]], cfg: PackDatasetConfig) -> State:
    refs = [shard_ref(s) for s, _ in shards]
    task = pack.with_options(result_storage=cfg.run.result_path)
    return task(**pack_parameters(refs, cfg.preprocess, cfg.run.work_path), return_state=True)


def write_version(plan: State, shards: list[tuple[TokenizeResult, str]],
                  jobs: list[tuple[FileRef, PreprocessConfig]], tokenizer: TokenizerRef,
                  cfg: PackDatasetConfig) -> State:  # fmt: skip
    """``write`` into the version named by the dataset fingerprint (cached when it exists)."""
    pre, inputs, planned = cfg.preprocess, [ref for ref, _ in jobs], plan.result()
    fingerprint = dataset_fingerprint(planned.plan_key, pre.write_options())
    task = write.with_options(result_storage=cfg.run.result_path)
    return task(
        FileRef(path=planned.plan, sha256=planned.plan_key),
        [shard_ref(s) for s, _ in shards],
        pre,
        inputs,
        tokenizer,
        cfg.output_root,
        fingerprint,
        return_state=True,
    )


def publish_version(
    dataset: WriteResult, tracker: Tracker, cfg: PackDatasetConfig
) -> PublishedVersion:
    """``publish`` behind the gate; a refusal is reported (MLflow, artifact), then re-raised."""
    run = cfg.run
    try:
        return publish(cfg.output_root, str(dataset.version), run.keep_previous,
                       run.publish_gate(), run.force_publish)  # fmt: skip
    except PublishRefused as refused:
        reporting.report_refused_publish(tracker, refused, dataset)
        raise


def run_pack_dataset(cfg: PackDatasetConfig, parent_run_id: str | None = None) -> PackRunResult:
    """The flow body (also called by ``pipeline``); returns the run summary."""
    started, run = time.perf_counter(), cfg.run
    experiment = run.experiment or "pack-dataset"
    with reporting.flow_tracker(run.tracking_uri, experiment, enabled=run.tracking,
                                parent_run_id=parent_run_id,
                                required=run.tracking_required) as tracker:  # fmt: skip
        tracker.log_params(cfg.model_dump(mode="json"))
        jobs, downloads = fetch_inputs(cfg)
        tokenizer = pin_tokenizer(cfg.preprocess.tokenizer_name_or_path)
        reporting.log_inputs(tracker, [ref for ref, _ in jobs], tokenizer)
        checks = validate_inputs(jobs, cfg)
        reporting.log_validation(tracker, [c for c, _ in checks])
        quality_gate([c for c, _ in checks], cfg.preprocess.min_valid_fraction)
        shards = tokenize_inputs(jobs, tokenizer, cfg)
        reporting.log_tokenize(tracker, [s for s, _ in shards])
        plan = plan_rows(shards, cfg)
        dataset = write_version(plan, shards, jobs, tokenizer, cfg)
        published = publish_version(dataset.result(), tracker, cfg)
        states = {"download": downloads, "validate": [s for _, s in checks],
                  "tokenize": [s for _, s in shards], "pack": [plan.name],
                  "write": [dataset.name]}  # fmt: skip
        return reporting.finish_pack_run(
            tracker, cfg, plan=plan.result(), dataset=dataset.result(), published=published,
            shards=[s for s, _ in shards], checks=[c for c, _ in checks], states=states,
            seconds=time.perf_counter() - started,
        )  # fmt: skip


@flow(name="pack-dataset", log_prints=True)
def pack_dataset(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: PackDatasetConfig | None = None,
    mlflow_parent_run_id: str | None = None,
) -> PackRunResult:
    """Build (or refresh) a packed SFT dataset version; see the module docstring.

    Args:
        config_file: YAML with ``preprocess`` (packft preprocess flags), ``more_inputs``, ``run``.
        overrides: nested values merged over the file (e.g. ``{"preprocess": {"seq_length": 1024}}``).
        config: a ready config (programmatic use); wins over the file.
        mlflow_parent_run_id: nest this run's MLflow run under that run (used by ``pipeline``).
    """
    cfg = config or load_flow_config(PackDatasetConfig, config_file, overrides)
    return run_pack_dataset(cfg, mlflow_parent_run_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pack_dataset [CONFIG.yaml] [packft preprocess flags] [run flags]``."""
    from flows.cli import run_flow_main
    from packft.pipeline_config import RunOptions

    sections = {"preprocess": PreprocessConfig, "run": RunOptions}
    return run_flow_main(
        "python -m flows.pack_dataset", argv, PackDatasetConfig,
        lambda cfg: pack_dataset(config=cfg), sections,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
