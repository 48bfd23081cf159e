"""Tokenization on a local Dask cluster (prefect-dask): same outputs and cache as threads."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestration_helpers import pack_config

pytestmark = pytest.mark.slow


def test_dask_local_cluster_matches_threads(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset

    fresh_inputs[2].unlink()  # two files: one per Dask worker
    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    on_dask = cfg.model_copy(update={"run": cfg.run.model_copy(update={"task_runner": "dask"})})
    first = pack_dataset(config=on_dask)
    assert first["states"]["tokenize"] == ["Completed", "Completed"]
    assert first["stats"]["valid"] == 120
    again = pack_dataset(config=cfg)  # threads: the cache does not depend on the runner
    assert again["states"]["tokenize"] == ["Cached", "Cached"]
    assert again["version"] == first["version"] and not again["changed"]
