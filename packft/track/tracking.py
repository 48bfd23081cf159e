"""Experiment tracking behind a small protocol; MLflow is one implementation, imported lazily.

Everything in packft that records metrics (the preprocess job, the trainer, the Prefect flows)
talks to a :class:`Tracker` of five methods: ``log`` (step metrics), ``log_params`` (flattened
params, or tags), ``log_artifact`` (a JSON mapping, a figure, a file or directory, or an
:class:`InputDataset`), ``child`` (a nested run) and ``close``. :func:`make_tracker` returns an :class:`MlflowTracker` or, when tracking is
disabled or unusable, a :class:`NullTracker` that accepts every call and does nothing, so
callers never branch on "is tracking on".

Guarantees:

* Tracking never stops the work (:mod:`packft.track.tracking_link`): an http(s) server is probed
  before the run is created (an unreachable one is known within ~7 s, and the run continues
  untracked after one warning line); every later call is queued and sent by a background
  thread, so a training step never waits for the server; a server that dies mid-run costs one
  warning, no step. ``required=True`` (``--tracking-required``) turns both into an error.

* ``mlflow`` is imported only here, and only when a real tracker is made (its import is slow).
* The tracker uses an explicit ``MlflowClient`` and run id, never MLflow's thread-local "active
  run": a nested run is created with an explicit ``parent_run_id`` (the ``mlflow.parentRunId``
  tag), so it nests correctly from any thread (Prefect ``.submit``/``.map`` pool threads see no
  active run; ecosystem.md section 5).
* Tracking URI precedence: the ``tracking_uri`` argument, then ``MLFLOW_TRACKING_URI``, then a
  SQLite file in the project's data dir (``$PACKFT_DATA_DIR`` or ``./.packft``):
  ``sqlite:///<data_dir>/mlflow.db`` (MLflow 3.17 refuses the ``./mlruns`` file store).
  For SQLite stores, artifacts go to ``<db dir>/mlartifacts/<experiment>`` (absolute), not to a
  ``./mlruns`` relative to whatever the working directory was when the experiment was created.
* Params are flattened (``a.b.c``), stringified, truncated to MLflow's 6000-char limit and sent
  in batches of 100; non-numeric metric values are skipped rather than failing a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from packft.track.tracking_link import Link, TrackingUnavailable, probe, recently_lost

__all__ = [
    "Artifact",
    "InputDataset",
    "MlflowTracker",
    "nest_runs_under",
    "NullTracker",
    "Tracker",
    "TrackingUnavailable",
    "data_dir",
    "default_tracking_uri",
    "flatten_params",
    "make_tracker",
    "resolve_tracking_uri",
    "tool_path",
    "ui_command",
]

MAX_PARAM_VALUE = 6000
MAX_DIGEST = 36  # MLflow's limit on a dataset digest

_DEFAULT_PARENT: contextvars.ContextVar[tuple[str, str, str | None] | None] = (
    contextvars.ContextVar("packft_default_parent_run", default=None)
)


@contextlib.contextmanager
def nest_runs_under(tracker: Tracker) -> Iterator[None]:
    """Runs opened by :func:`make_tracker` in this context (thread) nest under ``tracker``.

    Lets an orchestrator nest a library's own run (e.g. ``packft.train``'s) under its stage run
    without threading a parent id through the library's config: the experiment and parent are
    taken from ``tracker`` whenever the caller passes no ``parent_run_id``.
    """
    run_id = getattr(tracker, "run_id", None)
    experiment = getattr(tracker, "experiment", None)
    uri = getattr(tracker, "tracking_uri", None)
    token = _DEFAULT_PARENT.set((run_id, experiment, uri) if run_id and experiment else None)
    try:
        yield
    finally:
        _DEFAULT_PARENT.reset(token)


@dataclass(frozen=True)
class InputDataset:
    """An input dataset for :meth:`Tracker.log_artifact`: recorded as a run input (source and
    content digest, searchable in MLflow's dataset view), not uploaded."""

    source: str  # a path or an http(s) URL
    digest: str  # sha256 of the content
    context: str = "input"
    tags: Mapping[str, Any] = field(default_factory=dict)


Artifact = Mapping[str, Any] | InputDataset | str | Path | Any
"""What :meth:`Tracker.log_artifact` takes: a mapping (JSON/YAML by the name's extension), an
:class:`InputDataset`, a local file or directory, or a matplotlib figure (PNG)."""


@runtime_checkable
class Tracker(Protocol):
    """What packft logs through: five methods. Implementations must be safe to call from worker
    threads. Tags set at creation go through :func:`make_tracker` / :meth:`child`."""

    run_id: str | None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at a step (training step, or 0 for one-shot stats)."""

    def log_params(self, params: Mapping[str, Any], *, tags: bool = False) -> None:
        """Record a (nested) config as flat params; ``tags=True``: as searchable run tags
        (values known only after the run started: the tokenizer's sha256, the version)."""

    def log_artifact(self, name: str, payload: Artifact) -> None:
        """Store ``payload`` (see :data:`Artifact`) under the artifact name ``name`` (a file's
        or a directory's contents go under the artifact directory ``name``)."""

    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Tracker:
        """A nested run under this one (same experiment)."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run; later calls are ignored."""


class NullTracker:
    """Tracking disabled: accepts every call, records nothing."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    experiment: str | None = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_params(self, params: Mapping[str, Any], *, tags: bool = False) -> None:
        pass

    def log_artifact(self, name: str, payload: Artifact) -> None:
        pass

    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> NullTracker:
        return NullTracker()

    def close(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


def data_dir() -> Path:
    """The project's data dir: ``$PACKFT_DATA_DIR`` or ``./.packft`` (absolute)."""
    return Path(os.environ.get("PACKFT_DATA_DIR", ".packft")).expanduser().resolve()


def default_tracking_uri(base: Path | None = None) -> str:
    """``sqlite:///<data dir>/mlflow.db``; creates the directory so SQLite can open the file."""
    base = (base or data_dir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Argument, else ``MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def tool_path(name: str) -> str:
    """``name`` if it is on PATH, else the copy beside this interpreter (e.g. ``.venv/bin``)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store (printed after every run)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}  (MLflow server)"
    return f"{tool_path('mlflow')} ui --backend-store-uri {tracking_uri} --port 5000"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Nested mappings become dotted keys; values become strings cut to MLflow's limit."""
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten_params(value, prefix=f"{name}.")
            continue
        text = value if isinstance(value, str) else _to_text(value)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        yield name, text


def _to_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_to_text(v) for v in value) + "]"
    return str(value)


def _finite_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


class MlflowTracker:
    """One MLflow run, driven through an explicit client (thread-safe, no global active run).

    Creating the run talks to the store now (its id is needed); every later call is queued on
    the run family's :class:`~packft.track.tracking_link.Link` and sent by its thread.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        link: Link | None = None,
        owns_link: bool = True,
        experiment_id: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._owns_link = owns_link  # the top-level run drains the link when it closes
        self._link = link or Link(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._lock = threading.Lock()
        self._closed = False
        self._params: dict[str, str] = {}
        self.experiment_id = experiment_id or self._experiment_id(experiment)
        run_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            location = (db.parent / "mlartifacts" / name.replace("/", "_")).resolve().as_uri()
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process/thread
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            number = _finite_number(value)
            if number is not None:
                batch.append(Metric(key=key, value=number, timestamp=now, step=int(step)))
        for start in range(0, len(batch), 1000):
            self._link.send(
                self._client.log_batch, self.run_id, metrics=batch[start : start + 1000]
            )

    def log_params(self, params: Mapping[str, Any], *, tags: bool = False) -> None:
        from mlflow.entities import Param, RunTag

        if tags:
            given = {k: v for k, v in params.items() if v is not None}
            items = [RunTag(k, v) for k, v in flatten_params(given)]
            if items:
                self._link.send(self._client.log_batch, self.run_id, tags=items)
            return
        with self._lock:  # MLflow rejects re-logging a param with a different value
            fresh = {k: v for k, v in flatten_params(params) if k not in self._params}
            self._params.update(fresh)
        items = [Param(k, v) for k, v in fresh.items()]
        for start in range(0, len(items), 100):
            self._link.send(self._client.log_batch, self.run_id, params=items[start : start + 100])

    def log_artifact(self, name: str, payload: Artifact) -> None:
        """Dispatch on the payload; a figure is rendered to PNG here (matplotlib stays on the
        caller's thread), a mapping copied now; both are uploaded later by the link."""
        if isinstance(payload, InputDataset):
            self._link.send(self._client.log_inputs, self.run_id, [_dataset_input(name, payload)])
        elif isinstance(payload, Mapping):
            self._link.send(self._client.log_dict, self.run_id, _plain(payload), name)
        elif isinstance(payload, str | os.PathLike):
            path = Path(payload)
            upload = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
            self._link.send(upload, self.run_id, str(path), name)
        elif hasattr(payload, "savefig"):
            buffer = io.BytesIO()
            payload.savefig(buffer, format="png")
            self._link.send(self._upload, buffer.getvalue(), name)
        else:
            raise TypeError(f"log_artifact({name!r}): cannot store a {type(payload).__name__}")

    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Tracker:
        """A nested run sharing this run's link; a :class:`NullTracker` once tracking is lost."""
        made = self._link.call(
            MlflowTracker, self.tracking_uri, self.experiment, run_name,
            parent_run_id=self.run_id, tags=tags, link=self._link,
            owns_link=False, experiment_id=self.experiment_id,
        )  # fmt: skip
        return made if made is not None else NullTracker()

    def close(self, status: str = "FINISHED") -> None:
        """End the run; the top-level run also waits (bounded) until everything is sent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._link.send(self._client.set_terminated, self.run_id, status=status)
        if self._owns_link:
            self._link.close()

    def _upload(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory(prefix="packft-artifact-") as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self._client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe deep copy, taken now (the caller may change ``data`` before it is sent)."""
    return json.loads(json.dumps(dict(data), default=str))


def _dataset_input(name: str, dataset: InputDataset) -> Any:
    """``mlflow.data`` MetaDataset (source + digest); the full digest also goes in a tag."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    if urlparse(dataset.source).scheme in ("http", "https"):
        src = HTTPDatasetSource(url=dataset.source)
    else:
        local = next(s for s in get_registered_sources() if s.__name__.startswith("LocalArt"))
        src = local(str(dataset.source))
    meta = MetaDataset(src, name=name, digest=dataset.digest[:MAX_DIGEST])
    tags = [InputTag("mlflow.data.context", dataset.context), InputTag("sha256", dataset.digest)]
    tags += [InputTag(str(k), str(v)) for k, v in dataset.tags.items()]
    return DatasetInput(meta._to_mlflow_entity(), tags=tags)


def make_tracker(
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None = None,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    enabled: bool = True,
    required: bool = False,
    untracked_hint: str = "",
) -> Tracker:
    """Open a run (nested under ``parent_run_id`` when given) or a :class:`NullTracker`.

    Args:
        tracking_uri: MLflow URI; None -> ``MLFLOW_TRACKING_URI`` -> project SQLite file.
        experiment: experiment name (created on first use).
        run_name: display name of the run.
        parent_run_id: makes this a nested run of that run (works from any thread); default:
            the run given to an enclosing :func:`nest_runs_under`.
        tags: initial run tags.
        enabled: False returns a :class:`NullTracker` without importing mlflow.
        required: an unusable store raises :class:`TrackingUnavailable` (now, or at the first
            call after it fails) instead of warning once and continuing untracked.
        untracked_hint: appended to that warning: where the data still is, how to import it.

    Raises:
        ValueError: the experiment name is empty.
        TrackingUnavailable: ``required`` and the store is unreachable or failing.
    """
    if not enabled:
        return NullTracker()
    default = _DEFAULT_PARENT.get()
    if parent_run_id is None and default is not None:
        parent_run_id, experiment, parent_uri = default  # nesting needs one experiment
        tracking_uri = tracking_uri or parent_uri
    if not experiment:
        raise ValueError("make_tracker: experiment name is empty; pass e.g. 'pack-dataset'.")
    uri = resolve_tracking_uri(tracking_uri)
    link = Link(uri, required=required, hint=untracked_hint)
    known = recently_lost(uri)
    if known is not None:
        link.lose(known, quiet=True)  # this process has already warned about this store
    elif (reason := probe(uri)) is not None:
        link.lose(f"unreachable: {reason}")
    tracker = link.call(
        MlflowTracker, uri, experiment, run_name, parent_run_id=parent_run_id, tags=tags, link=link
    )
    return tracker if tracker is not None else NullTracker()
