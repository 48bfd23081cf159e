"""Run tracking: figures in, MLflow runs (or nothing, without losing a step) out.

In: params, per-step metrics, dataset figures and plots from the trainer and the flows.
Out: MLflow runs (SQLite store under ``.packft/`` by default). The only place in packft that
imports ``mlflow``, and it does so lazily: importing this package stays cheap.

Modules: :mod:`~packft.track.tracking` (the :class:`~packft.track.tracking.Tracker` API, the
MLflow and null trackers, URIs), :mod:`~packft.track.tracking_link` (a non-blocking link that
survives an unreachable or dying server), :mod:`~packft.track.metric_names` (every metric name
in one place) and :mod:`~packft.track.plots` (the figures).
"""

from packft.track.tracking import (
    InputDataset,
    NullTracker,
    Tracker,
    data_dir,
    make_tracker,
    nest_runs_under,
    resolve_tracking_uri,
    ui_command,
)
from packft.track.tracking_link import TrackingUnavailable

__all__ = [
    "InputDataset",
    "NullTracker",
    "Tracker",
    "TrackingUnavailable",
    "data_dir",
    "make_tracker",
    "nest_runs_under",
    "resolve_tracking_uri",
    "ui_command",
]
