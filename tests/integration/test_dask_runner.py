"""Tokenization on a local Dask cluster (prefect-dask): same outputs and cache as threads.

Also what a private local cluster must not do: listen on anything but 127.0.0.1, leave a process
behind, or change this process's environment (a Dask nanny writes OMP_NUM_THREADS=1 and more
into its parent's ``os.environ``; every later subprocess, e.g. a ``packft train`` run, inherited
one-thread torch: see ``flows/dask_local.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.orchestration import ChildProcessWatch, loopback, pack_config

pytestmark = pytest.mark.slow


def test_dask_local_cluster_matches_threads(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset
    from packft.track.tracking_link import apply_http_defaults

    apply_http_defaults()  # packft's own, deliberate MLflow settings: not the cluster's doing
    fresh_inputs[2].unlink()  # two files: one per Dask worker
    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    on_dask = cfg.model_copy(update={"run": cfg.run.model_copy(update={"task_runner": "dask"})})
    environ = dict(os.environ)
    with ChildProcessWatch() as watch:
        first = pack_dataset(config=on_dask)
    assert first.states["tokenize"] == ["Completed", "Completed"]
    assert first.stats.valid == 120
    again = pack_dataset(config=cfg)  # threads: the cache does not depend on the runner
    assert again.states["tokenize"] == ["Cached", "Cached"]
    assert again.version == first.version and not again.changed

    assert len(watch.seen) >= 2 and watch.listening, (watch.seen, watch.listening)  # 2 workers
    assert all(loopback(ip) for _, ip in watch.listening), watch.listening
    assert watch.survivors() == []
    assert os.environ.get("OMP_NUM_THREADS") == environ.get("OMP_NUM_THREADS")
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == {
        k: v for k, v in environ.items() if k != "PYTEST_CURRENT_TEST"
    }
