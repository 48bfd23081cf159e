"""What the flows return: typed run summaries (the flow's body builds them, tests and callers
read attributes).

A flow's return value is what ``pipeline`` hands from ``pack-dataset`` to ``finetune`` and what a
caller of ``pack_dataset(...)`` gets. Each model keeps the field names (and order) the summaries
had as mappings, so ``model_dump(mode="json")`` is the summary JSON as before. They are allow-listed
with :func:`tasks.serializer.allow`, so a flow result Prefect persists is JSON, rebuilt only into
these models.
"""

from __future__ import annotations

from packft.core.results import Result
from packft.dataset.stats import DatasetStats
from packft.preprocess.results import RecordCounts
from packft.train.summary import TrainSummary
from tasks.results import ExportResult
from tasks.serializer import allow


@allow
class PackRunResult(Result):
    """A ``pack-dataset`` run: the version written (or found), whether ``latest`` moved, stats."""

    headline: str
    """One line: new version published, or nothing changed."""
    changed: bool
    """``latest`` moved to a new version."""
    version: str
    """This run's version directory."""
    prefix: str
    """``{version}/{name}``: the dataset of this run (``--data-path``)."""
    latest: str
    """``{output_root}/latest/{name}``: the published dataset."""
    stats: DatasetStats
    diff: dict[str, int | float | None]
    """:func:`packft.dataset.store.diff_versions` against the previous ``latest`` (when changed)."""
    states: dict[str, list[str]]
    """Each task's final Prefect state name (``Completed``, ``Cached``), per file where per file."""
    validation: RecordCounts
    """Records read, valid, rejected and repaired over all inputs (the validate step)."""
    mlflow_run_id: str | None
    flow_run_id: str
    seconds: float


@allow
class FinetuneRunResult(Result):
    """A ``finetune`` run: the training summary, the exported weights, each task's state."""

    train: TrainSummary
    exported: ExportResult
    states: dict[str, str]
    mlflow_run_id: str | None
    seconds: float


@allow
class PipelineRunResult(Result):
    """A ``pipeline`` run: its two subflows' results."""

    pack: PackRunResult
    finetune: FinetuneRunResult
    mlflow_run_id: str | None
    seconds: float
