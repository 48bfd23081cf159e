"""Tokenization on a real local Ray instance (prefect-ray): same outputs and cache as threads.

The runner starts Ray itself (``ray.init`` with ``parallel`` CPUs, dashboard off), exactly as a
user's ``run.task_runner: ray`` run without ``cluster_address`` does. Besides the results, the test
checks what a private local cluster must not do: listen on anything but 127.0.0.1, leave a process
behind, or change this process's environment. Measured on 2 shared cores: the test call takes 39 s
idle (Ray start 5 s, first tasks 12 s) to 56 s at load ~7 (Ray start 26 s), plus the session's
Prefect harness (33-80 s) when it is the first test to ask for it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.orchestration import ChildProcessWatch, loopback, pack_config

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Ray's session files in a temp dir, no usage stats, a token that is not written to ~/.ray."""
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_ray_local_instance_matches_threads(
    prefect_api: None,
    mlflow_uri: str,
    fresh_inputs: list[Path],
    tmp_path: Path,
    ray_sandbox: Path,
) -> None:
    from flows.pack_dataset import pack_dataset
    from packft.track.tracking_link import apply_http_defaults

    apply_http_defaults()  # packft's own, deliberate MLflow settings: not the cluster's doing
    fresh_inputs[2].unlink()  # two files: one per Ray CPU
    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    on_ray = cfg.model_copy(update={"run": cfg.run.model_copy(update={"task_runner": "ray"})})
    environ = dict(os.environ)
    started = time.monotonic()
    with ChildProcessWatch() as watch:
        first = pack_dataset(config=on_ray)
    ray_seconds = time.monotonic() - started
    print(f"ray flow run: {ray_seconds:.1f} s, {len(watch.seen)} processes")
    assert first.states["tokenize"] == ["Completed", "Completed"]
    assert first.stats.valid == 120
    again = pack_dataset(config=cfg)  # threads: the cache does not depend on the runner
    assert again.states["tokenize"] == ["Cached", "Cached"]
    assert again.version == first.version and not again.changed

    names = {name for name, _ in watch.listening}
    assert {"gcs_server", "raylet"} <= names, watch.listening  # Ray really ran here
    assert all(loopback(ip) for _, ip in watch.listening), watch.listening
    assert watch.survivors() == []
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == {
        k: v for k, v in environ.items() if k != "PYTEST_CURRENT_TEST"
    }
