"""Fixtures for the orchestration tests: a Prefect harness, MLflow stores, small inputs, servers.

Nothing here is autouse: unit tests elsewhere never pay for Prefect (the harness import alone is
~6 s and its server start 11-20 s on this machine). Tests that run flows in-process request
``prefect_api``; it reuses a running server when ``PREFECT_API_URL`` is set (CI may start one),
otherwise it starts ``prefect_test_harness`` once per session on a temporary database.

Prefect reads ``PREFECT_HOME`` at import, so it is pointed at a temporary directory here, before
anything imports prefect (unless the caller already chose one).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

if "prefect" not in sys.modules and "PACKFT_TEST_KEEP_PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="packft-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from tests.helpers.orchestration import start_mlflow_server, stop_process, wait_http  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Prefect API for in-process flow runs (existing server, else the test harness)."""
    os.environ.setdefault(
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path_factory.mktemp("prefect-results"))
    )
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.testing.utilities import prefect_test_harness  # lazy: ~6 s import

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def mlflow_uri(mlflow_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """One SQLite store per session; the run's CWD is a temp dir (no stray ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    yield mlflow_db


@pytest.fixture(scope="session")
def small_inputs(tmp_path_factory: pytest.TempPathFactory, alpaca_en_path: Path) -> list[Path]:
    """Three small Alpaca files (60 records each) cut from the shared demo file."""
    rows = json.loads(alpaca_en_path.read_text())
    out = tmp_path_factory.mktemp("inputs")
    paths = []
    for i in range(3):
        path = out / f"part{i}.json"
        path.write_text(json.dumps(rows[i * 60 : (i + 1) * 60], ensure_ascii=False))
        paths.append(path)
    return paths


@pytest.fixture
def fresh_inputs(tmp_path: Path, small_inputs: list[Path]) -> list[Path]:
    """A private, editable copy of :func:`small_inputs`."""
    paths = []
    for src in small_inputs:
        dst = tmp_path / "in" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        paths.append(dst)
    return paths


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """Starts ``mlflow server`` on 127.0.0.1 (job execution off, one worker) without waiting.

    Request it before ``prefect_api`` so the two ~20 s start-ups overlap.
    """
    proc, uri, log = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield proc, uri, log
    finally:
        stop_process(proc, grace=20)
        with contextlib.suppress(ProcessLookupError):  # its children share our new session
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: tuple) -> str:
    """The URL of the running ``mlflow server`` (waits until ``/health`` answers)."""
    proc, url, log = mlflow_server_process
    wait_http(f"{url}/health", proc, log, timeout=120)
    return url
