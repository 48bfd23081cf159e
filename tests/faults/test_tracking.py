"""Tracking never stops the work: unreachable, dying and required MLflow servers.

Real ``mlflow server`` processes on 127.0.0.1 (job execution off, one worker), started by this
module and stopped by PID/process group; a real ``packft train`` subprocess on a tiny random
Llama. One server is SIGKILLed in the middle of a run; a second, fresh one receives the run
later through ``packft track-import``. An unreachable URI is port 1 (refuses at once) or a
listening socket that never answers (every request times out).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from packft.cli import main as cli_main
from tests.helpers.orchestration import REPO, start_mlflow_server, wait_http
from tests.helpers.sft_setup import make_sft_setup

WARNING = "packft: MLflow tracking at"
STEPS = 8


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the server and its workers (its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    """Two servers started at once (their ~10-20 s start-ups overlap): one to kill, one fresh."""
    started = {}
    try:
        for name in ("doomed", "fresh"):
            started[name] = start_mlflow_server(tmp_path_factory.mktemp(f"mlflow-{name}"))
        yield started
    finally:
        for proc, _, _ in started.values():
            kill_group(proc)


@pytest.fixture(scope="module")
def trainable(tmp_path_factory, alpaca_en_path: Path, llama2_tokenizer_dir: Path) -> dict:
    """A neat-packed dataset of 16 Alpaca samples (seq 256) and a tiny random Llama."""
    root = tmp_path_factory.mktemp("trainable")
    make_sft_setup(root, llama2_tokenizer_dir, alpaca_en_path, samples=16, seq=256,
                   initializer_range=0.02)  # fmt: skip
    return {"data": root / "packed", "model": root / "model", "tok": llama2_tokenizer_dir}


def train_command(
    trainable: dict, save: Path, uri: str, *extra: str, steps: int = STEPS
) -> list[str]:
    return [sys.executable, "-m", "packft", "train", "--data-path", str(trainable["data"]),
            "--model", str(trainable["model"]), "--tokenizer-name-or-path", str(trainable["tok"]),
            "--save", str(save), "--global-batch-size", "2", "--train-iters", str(steps),
            "--lr", "1e-3", "--fp32", "--device", "cpu", "--tracking-uri", uri,
            "--experiment", "faults", *extra]  # fmt: skip


def child_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PACKFT_DATA_DIR=str(tmp / "data"))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def steps_logged(save: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (save / "train_log.jsonl").read_text().splitlines()
    ]


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING in line]


def test_server_killed_mid_run_costs_no_step_and_imports_later(
    servers: dict, trainable: dict, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    doomed, doomed_url, doomed_log = servers["doomed"]
    fresh, fresh_url, fresh_log = servers["fresh"]
    wait_http(f"{doomed_url}/health", doomed, doomed_log, timeout=120)
    save = tmp_path / "save"
    train = subprocess.Popen(
        train_command(trainable, save, doomed_url), env=child_env(tmp_path), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = save / "train_log.jsonl"
    while train.poll() is None and not (log.exists() and log.read_text().strip()):
        time.sleep(0.02)
    killed_after = steps_logged(save)[-1] if log.exists() and log.read_text().strip() else 0
    kill_group(doomed)  # SIGKILL, mid-run: the trainer has logged step 1 and goes on
    out, err = train.communicate(timeout=300)

    assert train.returncode == 0, err[-3000:]
    assert killed_after < STEPS
    assert steps_logged(save) == list(range(1, STEPS + 1))  # every step ran and was recorded
    assert json.loads(out.strip().splitlines()[-1])["steps"] == STEPS
    (line,) = warning_lines(err)  # one warning, which says how to import the run later
    assert f"packft track-import {save} --tracking-uri {doomed_url}" in line
    assert "Traceback" not in err and "Retrying" not in err

    wait_http(f"{fresh_url}/health", fresh, fresh_log, timeout=120)
    done = subprocess.run(
        [sys.executable, "-m", "packft", "track-import", str(save), "--tracking-uri", fresh_url],
        env=child_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=fresh_url)
    (run,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert run.info.run_id in done.stdout and run.info.status == "FINISHED"
    assert run.data.tags["packft.imported_from"] == str(save)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    recorded = [json.loads(x)["loss"] for x in log.read_text().splitlines()]
    assert [(m.step, m.value) for m in history] == list(enumerate(recorded, 1))
    assert run.data.metrics["train/final_loss"] == pytest.approx(recorded[-1])
    assert run.data.metrics["data/seq_utilization"] > 0.5
    assert run.data.params["global_batch_size"] == "2"  # from {save}/train_config.json
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/loss_lr.png"
    ]


def test_unreachable_uri_is_detected_fast_and_the_run_completes(
    trainable: dict, tmp_path: Path
) -> None:
    save = tmp_path / "save"
    started = time.monotonic()
    done = subprocess.run(
        train_command(trainable, save, "http://127.0.0.1:1", steps=4), env=child_env(tmp_path),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_logged(save) == [1, 2, 3, 4]
    (line,) = warning_lines(done.stderr)
    assert "unreachable" in line and "Connection refused" in line
    assert f"packft track-import {save}" in line
    assert "Traceback" not in done.stderr
    assert wall < 100, wall  # MLflow's own retries used to hang here for ~250 s


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_server_is_known_within_10_s(kind: str, caplog) -> None:
    """In-process: make_tracker returns an untracked tracker within 10 s, with one warning."""
    from packft.track import tracking_link
    from packft.track.tracking import NullTracker, make_tracker

    with contextlib.ExitStack() as stack:
        if kind == "refused":
            uri = "http://127.0.0.1:1"
        else:  # accepts connections (kernel backlog) and never answers: every read times out
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        tracking_link._LOST.pop(uri, None)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="packft.track.tracking"):
            tracker = make_tracker(uri, "faults", untracked_hint="; see the log")
            tracker.log({"loss": 1.0}, step=1)  # accepted, dropped, never blocks
            tracker.close()
        took = time.monotonic() - started
    assert isinstance(tracker, NullTracker)
    assert took < 10, took
    (record,) = [r for r in caplog.records if r.name == "packft.track.tracking"]
    assert "unreachable" in record.getMessage() and record.getMessage().endswith("; see the log")


def test_tracking_required_with_unreachable_uri_fails_fast_in_one_line(
    trainable: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PACKFT_DATA_DIR", str(tmp_path / "data"))
    save = tmp_path / "save"
    command = train_command(trainable, save, "http://127.0.0.1:1", "--tracking-required")
    started = time.monotonic()
    assert cli_main(command[3:]) == 1  # in-process: the same `packft train` entry point
    wall = time.monotonic() - started
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("packft train: error: MLflow tracking at http://127.0.0.1:1 failed")
    assert "unreachable" in line and "--tracking-required" in line
    assert not (save / "train_log.jsonl").exists()  # it stopped before the first step
    assert wall < 10, wall


def test_missing_data_path_fails_before_any_tracking_store_or_run(
    servers: dict, trainable: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("PACKFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    fresh, url, log = servers["fresh"]
    wait_http(f"{url}/health", fresh, log, timeout=120)
    client = MlflowClient(tracking_uri=url)

    def runs() -> int:
        ids = [e.experiment_id for e in client.search_experiments()]
        return len(client.search_runs(ids)) if ids else 0

    before = runs()
    base = ["train", "--data-path", str(tmp_path / "nothing"), "--model", str(trainable["model"]),
            "--save", str(tmp_path / "save"), "--train-iters", "1"]  # fmt: skip
    for extra in ([], ["--tracking-uri", url]):
        assert cli_main(base + extra) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "missing" in err and "packft preprocess" in err
    assert not (tmp_path / "data").exists()  # no default SQLite store was created
    assert not (tmp_path / "save").exists() and not (tmp_path / "mlruns").exists()
    assert runs() == before  # nor any run on the server
