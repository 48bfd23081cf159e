"""Deployment smoke test: real ``prefect server`` + process pool + ``deploy --all`` + worker.

Triggers ``pack-dataset/nightly-repack`` twice on small data: the first run builds version 1 and
moves ``latest``; the second re-fetches, finds nothing changed and leaves ``latest`` alone. Every
process is started here and stopped by PID (the worker needs a second SIGTERM). ~60-90 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.orchestration import BIN, REPO, free_port, stop_process, wait_http

pytestmark = pytest.mark.slow


def prefect(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"prefect {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def test_nightly_repack_deployment(
    tmp_path: Path, small_inputs: list[Path], llama2_tokenizer_dir: Path
) -> None:
    data = tmp_path / "in"
    data.mkdir()
    for path in small_inputs[:2]:
        shutil.copy(path, data / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PACKFT_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DO_NOT_TRACK": "true",
    }
    port = free_port()
    server_log = tmp_path / "server.log"
    worker_log = tmp_path / "worker.log"
    server = worker = None
    try:
        with server_log.open("wb") as sink:
            server = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(port), "--no-ui"],
                env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/api/health", server, server_log, timeout=180)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        prefect("work-pool", "create", "packft-process", "--type", "process", "--overwrite",
                env=env, cwd=tmp_path)  # fmt: skip
        prefect("--no-prompt", "deploy", "--all", env=env, cwd=REPO, timeout=180)
        with worker_log.open("wb") as sink:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "packft-process"],
                env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        params = {
            "overrides": {
                "preprocess": {
                    "input": str(data),
                    "tokenizer_name_or_path": str(llama2_tokenizer_dir),
                    "output_prefix": str(tmp_path / "out" / "alpaca"),
                    "prompt_type": "llama2",
                },
                "more_inputs": [],
                "run": {"work_dir": str(tmp_path / "work")},
            }
        }
        for attempt in range(2):
            try:
                prefect("deployment", "run", "pack-dataset/nightly-repack", "--params",
                        json.dumps(params), "--watch", "--watch-timeout", "300",
                        env=env, cwd=tmp_path, timeout=330)  # fmt: skip
            except AssertionError:
                print(worker_log.read_text()[-6000:])
                raise
            latest = tmp_path / "out" / "latest"
            assert (latest / "alpaca_packed_input_ids_document.bin").stat().st_size > 0
            assert (latest / "alpaca.packft.json").is_file()
            if attempt == 0:
                first_version = latest.resolve()
        assert latest.resolve() == first_version  # second run: nothing changed, latest kept
        assert len(list((tmp_path / "out" / "versions").iterdir())) == 1
        log = worker_log.read_text()
        assert "nothing changed" in log and "Cached" in log

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("pack-dataset")
        runs = client.search_runs(
            [exp.experiment_id], "tags.`prefect.deployment` = 'pack-dataset/nightly-repack'"
        )
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["packft.changed"] for r in runs} == {"true", "false"}
    finally:
        if worker is not None:
            stop_process(worker)
        if server is not None:
            stop_process(server)
    assert worker.poll() is not None and server.poll() is not None
