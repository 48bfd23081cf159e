"""What a flow run leaves behind: one MLflow run (nested stage runs) and a Prefect artifact.

Stage results are logged by the flow itself, in its own thread, from the tasks' return values, so
a stage whose task was served from the cache is still logged completely (a cached task does not
run, so it could not log anything itself). The MLflow run carries the Prefect flow run id, name
and deployment as tags; the Prefect markdown artifact carries the MLflow run id and the command
that opens the UI, so each side links to the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.results import FinetuneRunResult, PackRunResult
from packft.dataset import PublishRefused
from packft.dataset.stats import DatasetStats, detail_rows
from packft.pipeline_config import PackDatasetConfig
from packft.preprocess.results import (
    PlanResult,
    RecordCounts,
    TokenizeResult,
    ValidationResult,
    WriteResult,
)
from packft.track import metric_names
from packft.track.tracking import (
    InputDataset,
    NullTracker,
    Tracker,
    make_tracker,
    resolve_tracking_uri,
    tool_path,
    ui_command,
)
from packft.train.summary import TrainSummary
from tasks.caching import FileRef
from tasks.results import ExportResult, PublishedVersion
from tasks.tokenize import TokenizerRef

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def prefect_tags() -> dict[str, str]:
    """Tags that link an MLflow run to the Prefect flow run (and deployment) it belongs to."""
    from prefect.runtime import deployment, flow_run

    tags = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.flow_name": str(flow_run.flow_name or ""),
        "prefect.deployment": "none",
    }
    if deployment.id:
        tags["prefect.deployment"] = f"{flow_run.flow_name}/{deployment.name}"
        tags["prefect.deployment_id"] = str(deployment.id)
    if flow_run.parent_flow_run_id:
        tags["prefect.parent_flow_run_id"] = str(flow_run.parent_flow_run_id)
    return tags


@contextmanager
def flow_tracker(
    tracking_uri: str | None,
    experiment: str,
    *,
    enabled: bool = True,
    parent_run_id: str | None = None,
    required: bool = False,
) -> Iterator[Tracker]:
    """The flow run's MLflow run: FINISHED on success, FAILED (and re-raised) on an error.

    An unreachable or failing store never fails the flow (one warning, then untracked) unless
    ``required`` (``run.tracking_required``).
    """
    from prefect.runtime import flow_run

    uri = resolve_tracking_uri(tracking_uri) if enabled else None
    tracker = make_tracker(
        uri,
        experiment,
        str(flow_run.name or experiment),
        parent_run_id=parent_run_id,
        tags=prefect_tags(),
        enabled=enabled,
        required=required,
        untracked_hint="; its results are in the flow's Prefect artifact and the dataset sidecar",
    )
    try:
        yield tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")


def log_stage(
    parent: Tracker, stage: str, metrics: Mapping[str, Any], *, details: Any = None
) -> Tracker:
    """A nested run ``stage``: headline figures as metrics (:mod:`packft.track.metric_names`), the
    other numbers as ``stats.*`` params, everything in ``{stage}.json``."""
    child = parent.child(stage, tags={"packft.stage": stage})
    table = {**metric_names.DATA, **metric_names.PUBLISH}
    child.log(metric_names.named(metrics, table), step=0)
    child.log_params(metric_names.stats_params(metrics, metrics=table))
    child.log_artifact(f"{stage}.json", {"metrics": dict(metrics), "details": details})
    return child


def markdown_table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines)


def run_links(tracker: Tracker) -> list[tuple[str, Any]]:
    """Rows that tell the reader where the MLflow run is and how to open it."""
    if isinstance(tracker, NullTracker) or tracker.run_id is None:
        return [("MLflow", "tracking disabled")]
    uri = tracker.tracking_uri
    return [
        ("MLflow experiment / run", f"{tracker.experiment} / `{tracker.run_id}`"),
        ("MLflow UI", f"`{ui_command(uri)}`"),
    ]


def publish_markdown(
    key: str, title: str, sections: list[tuple[str, list[tuple[str, Any]]]]
) -> str:
    """Create the flow's markdown artifact (key must be lowercase letters, digits, dashes)."""
    from prefect.artifacts import create_markdown_artifact

    parts = [f"# {title}"]
    for heading, rows in sections:
        parts += [f"## {heading}", markdown_table(rows)]
    text = "\n\n".join(parts) + "\n"
    create_markdown_artifact(key=key, markdown=text, description=title)
    return text


def prefect_ui_command() -> str:
    """How to look at the runs this process recorded (ephemeral runs live in PREFECT_HOME)."""
    import os

    api = os.environ.get("PREFECT_API_URL")
    if api:
        return f"open {api.removesuffix('/api')}"
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    prefect = tool_path("prefect")
    # the shell that runs this has none of tasks/_env.py's defaults: no telemetry (it fails
    # offline, with an ERROR line), and SQLite waits as long for a lock as Prefect's own 60 s
    return (
        f"PREFECT_HOME={home} PREFECT_SERVER_ANALYTICS_ENABLED=false "
        f"PREFECT_SERVER_DATABASE_TIMEOUT=60 {prefect} server start  "
        "# then open http://127.0.0.1:4200"
    )


# --- pack-dataset stages -----------------------------------------------------------------------


def log_inputs(tracker: Tracker, files: list[FileRef], tokenizer: TokenizerRef) -> None:
    """Each input as an ``mlflow.data`` dataset (source + content digest), plus the tokenizer."""
    for ref in files:
        source = InputDataset(ref.source or str(ref.path), ref.sha256, tags={"size": ref.size})
        tracker.log_artifact(Path(str(ref.path)).name, source)
    tracker.log_params({"packft.tokenizer_sha256": tokenizer.sha256}, tags=True)
    tracker.log_artifact(
        "inputs.json",
        {"inputs": [r.model_dump(mode="json") for r in files],
         "tokenizer": tokenizer.model_dump(mode="json")},
    )  # fmt: skip


def validation_totals(checks: list[ValidationResult]) -> RecordCounts:
    """Records read, valid, rejected per reason and repaired per kind over all files."""
    return RecordCounts.summed([c.counts for c in checks])


def log_validation(tracker: Tracker, checks: list[ValidationResult]) -> RecordCounts:
    """The ``validate`` stage run: the totals over all files, each file's result as details."""
    totals = validation_totals(checks)
    log_stage(tracker, "validate", totals.figures(),
              details=[c.model_dump(mode="json") for c in checks]).close()  # fmt: skip
    return totals


TOKENIZE_SUMS = ("truncated", "truncated_marker_lost", "dropped", "written", "tokens",
                 "supervised_tokens")  # fmt: skip


def log_tokenize(tracker: Tracker, shards: list[TokenizeResult]) -> RecordCounts:
    """The ``tokenize`` stage run: counts summed over the shards, each shard's result as
    details (without its length histogram); returns the record counts over all shards."""
    counts = RecordCounts.summed([s.counts for s in shards])
    totals = {"samples_in": counts.total, "valid": counts.valid,
              **{k: sum(getattr(s, k) for s in shards) for k in TOKENIZE_SUMS},
              "rejected": counts.rejected, "repaired": counts.repaired,
              "rejected_total": counts.rejected_total,
              "max_length": max((s.max_length for s in shards), default=0)}  # fmt: skip
    details = [s.model_dump(mode="json", exclude={"length_counts"}) for s in shards]
    log_stage(tracker, "tokenize", totals, details=details).close()
    return counts


def dataset_figures(
    shards: list[TokenizeResult], plan: PlanResult, seq_length: int, stats: DatasetStats
) -> tuple[Figure, Figure]:
    """(sample length histogram before truncation, row fill histogram) for a packed dataset.

    Both are counted where the data was in memory: lengths by the tokenize task
    (``TokenizeResult.length_counts``: every valid sample before any cut; a shard from before
    those counts gives its stored, cut lengths), row fill by the pack task
    (``PlanResult.row_fill``). Nothing is re-read from disk here.
    """
    import numpy as np

    from packft.track.plots import length_histogram, row_fill_histogram

    counts: dict[int, int] = {}
    for shard in shards:
        for length, n in shard.length_counts.items():
            counts[int(length)] = counts.get(int(length), 0) + int(n)
    exact = all(s.lengths_before_cut for s in shards)
    lengths = np.fromiter(counts, np.int64, len(counts))
    weights = np.fromiter(counts.values(), np.int64, len(counts))
    cut = {"truncated": stats.truncated, "dropped": stats.dropped, "split": stats.split}
    if exact:
        cut["tokens_cut"] = int((lengths * weights).sum()) - stats.total_tokens
    fills = np.fromiter(plan.row_fill, np.int64, len(plan.row_fill))
    rows = np.repeat(fills, np.fromiter(plan.row_fill.values(), np.int64, len(plan.row_fill)))
    return (
        length_histogram(lengths, seq_length, weights=weights, cut=cut, before_truncation=exact),
        row_fill_histogram(rows, seq_length),
    )


PACK_TABLE = (
    "samples_in", "valid", "rejected_total", "truncated", "truncated_marker_lost", "dropped",
    "split", "rows",
    "lower_bound_rows", "efficiency", "pad_fraction", "samples_per_row_mean",
    "samples_per_row_max", "total_tokens", "supervised_tokens", "efficiency_padded_alone",
)  # fmt: skip


def finish_pack_run(
    tracker: Tracker,
    cfg: PackDatasetConfig,
    *,
    plan: PlanResult,
    dataset: WriteResult,
    published: PublishedVersion,
    shards: list[TokenizeResult],
    checks: list[ValidationResult],
    states: dict[str, list[str]],
    seconds: float,
) -> PackRunResult:
    """Log pack/write/publish stages and plots, publish the Prefect artifact, print the summary."""
    stats = dataset.stats.model_dump()
    seq = int(cfg.preprocess.seq_length or dataset.stats.seq_length or 1)
    planned = plan.model_dump(mode="json", exclude={"row_fill"})
    pack_run = log_stage(tracker, "pack", {**planned, **stats}, details=planned)
    if cfg.preprocess.pack:
        lengths_fig, fill_fig = dataset_figures(shards, plan, seq, dataset.stats)
        for run in (pack_run, tracker):
            run.log_artifact("plots/sample_lengths.png", lengths_fig)
            run.log_artifact("plots/row_fill.png", fill_fig)
    pack_run.close()
    tracker.log(metric_names.named(stats, metric_names.DATA), step=0)
    tracker.log_params(metric_names.stats_params(stats))
    cached = [s for name in ("validate", "tokenize", "pack", "write") for s in states[name]]
    n_cached = sum(s == "Cached" for s in cached)
    diff, gate = published.diff, published.gate or {}
    change = {"changed": int(published.changed), "published": int(published.changed),
              "tasks_cached": n_cached, "tasks_total": len(cached), **diff,
              **gate_metrics(gate)}  # fmt: skip
    log_stage(tracker, "publish", change, details=published.model_dump(mode="json")).close()
    tracker.log(metric_names.named(diff, metric_names.DATA), step=0)  # gate figures: stage run
    tracker.log_params(metric_names.stats_params(diff, prefix="diff"))
    tracker.log_params({"packft.dataset_version": dataset.version.name,
                        "packft.changed": str(published.changed).lower(),
                        "packft.publish": publish_outcome(published)}, tags=True)  # fmt: skip
    headline = (
        f"dataset changed: new version {published.current} (previous: {published.previous})"
        if published.changed
        else f"nothing changed: {published.current} is still latest "
        f"({n_cached}/{len(cached)} tasks from cache)"
    )
    latest = Path(published.latest) / dataset.prefix.name
    outputs = [
        ("status", headline),
        ("train on (latest)", f"`{latest}`"),
        ("this version", f"`{dataset.prefix}`"),
        ("rejects", f"`{dataset.prefix}.rejects.jsonl`"),
        ("tasks cached", f"{n_cached}/{len(cached)}"),
        ("seconds", round(seconds, 1)),
        *run_links(tracker),
    ]
    table = [(k, stats[k]) for k in PACK_TABLE if k in stats]
    table += detail_rows(stats)  # rejects by reason (top 5), repairs by kind
    if diff:
        table += [(f"diff: {k}", v) for k, v in diff.items()]
    if gate.get("forced") and gate.get("problems"):
        outputs.insert(1, ("publish gate", "FORCED past: " + "; ".join(gate["problems"])))
    publish_markdown(
        "pack-dataset-summary", "pack-dataset", [("Outputs", outputs), ("Stats", table)]
    )
    print(headline)
    for key, value in table:
        print(f"  {key:>28}: {value:.4f}" if isinstance(value, float) else f"  {key:>28}: {value}")
    print(f"train on: {latest}")
    if not isinstance(tracker, NullTracker):
        print(f"MLflow UI: {ui_command(tracker.tracking_uri)}")
    return PackRunResult(
        headline=headline,
        changed=published.changed,
        version=str(dataset.version),
        prefix=str(dataset.prefix),
        latest=str(latest),
        stats=dataset.stats,
        diff=diff,
        states=states,
        validation=validation_totals(checks),
        mlflow_run_id=tracker.run_id,
        flow_run_id=prefect_tags()["prefect.flow_run_id"],
        seconds=round(seconds, 2),
    )


def gate_metrics(gate: Mapping[str, Any]) -> dict[str, float | int]:
    """The publish gate's measurements and decision (``metric_names.PUBLISH`` keys, plus its
    thresholds, which ``log_stage`` records as params); empty when no gate ran."""
    if not gate:
        return {}
    keys = ("removed_fraction", "efficiency_drop", "max_removed_fraction", "max_efficiency_drop")
    return {**{k: gate[k] for k in keys if gate.get(k) is not None},
            "gate_passed": int(bool(gate.get("passed"))),
            "gate_forced": int(bool(gate.get("forced")))}  # fmt: skip


def publish_outcome(published: PublishedVersion) -> str:
    """``published``, ``forced`` (past a refusing gate) or ``unchanged``: the run's tag."""
    gate = published.gate or {}
    if not published.changed:
        return "unchanged"
    return "forced" if gate.get("problems") and gate.get("forced") else "published"


def report_refused_publish(tracker: Tracker, refused: PublishRefused, dataset: WriteResult) -> str:
    """A refused publish (:class:`packft.dataset.PublishRefused`): the diff and verdict to
    MLflow (``publish`` stage, ``diff.*`` metrics, tags, ``publish_refused.json``) and to the
    ``pack-dataset-publish-refused`` Prefect artifact. Returns the artifact's markdown."""
    diff, verdict = refused.diff, refused.verdict.to_dict()
    metrics = {"changed": 0, "published": 0, **diff, **gate_metrics(verdict)}
    log_stage(tracker, "publish", metrics, details=refused.to_dict()).close()
    tracker.log(metric_names.named(diff, metric_names.DATA), 0)  # gate figures: stage run
    tracker.log_params(metric_names.stats_params(diff, prefix="diff"))
    tracker.log_params({"packft.publish": "refused", "packft.changed": "false",
                        "packft.unpublished_version": Path(refused.version).name},
                       tags=True)  # fmt: skip
    tracker.log_artifact("publish_refused.json", refused.to_dict())
    outputs = [
        ("status", "publish refused: latest unchanged, this run Failed"),
        ("why", "; ".join(refused.verdict.problems)),
        ("latest (unchanged)", f"`{refused.latest}`"),
        ("unpublished version (inspect it)", f"`{dataset.prefix}`"),
        ("publish it anyway", f"re-run with {refused.override}"),
        *run_links(tracker),
    ]
    table = [(f"diff: {k}", v) for k, v in diff.items()]
    table += [(f"gate: {k}", v) for k, v in verdict.items() if k != "problems"]
    print(str(refused))
    return publish_markdown(
        "pack-dataset-publish-refused",
        "pack-dataset: publish refused",
        [("Outputs", outputs), ("Diff", table)],
    )


# --- finetune and pipeline ----------------------------------------------------------------------

TRAIN_TABLE = ("steps", "first_loss", "final_loss", "tokens_per_s", "real_tokens_per_s", "seconds")


def finish_finetune_run(
    tracker: Tracker,
    train: TrainSummary,
    exported: ExportResult,
    states: dict[str, str],
    seconds: float,
) -> FinetuneRunResult:
    """Log the export stage, publish the finetune artifact, print where the weights are."""
    weights, summary = exported.weights(), train.figures()
    log_stage(tracker, "export", {}, details=weights).close()
    tracker.log(metric_names.named(summary, metric_names.SUMMARY), step=0)
    tracker.log_params(metric_names.stats_params(summary, "train", metric_names.SUMMARY))
    table = [(k, summary[k]) for k in TRAIN_TABLE if k in summary]
    table += [(k, v) for k, v in summary.items() if k not in TRAIN_TABLE and k.endswith("loss")]
    outputs = [(f"{k} weights", f"`{v}`") for k, v in weights.items()]
    outputs += [("task states", ", ".join(f"{k}: {v}" for k, v in states.items()))]
    outputs += [("seconds", round(seconds, 1)), *run_links(tracker)]
    publish_markdown("finetune-summary", "finetune", [("Outputs", outputs), ("Training", table)])
    for key, value in table + outputs[:-2]:
        print(f"  {key:>20}: {value}")
    if not isinstance(tracker, NullTracker):
        print(f"MLflow UI: {ui_command(tracker.tracking_uri)}")
    return FinetuneRunResult(train=train, exported=exported, states=states,
                             mlflow_run_id=tracker.run_id, seconds=round(seconds, 2))  # fmt: skip
