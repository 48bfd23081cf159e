"""Process helpers shared by the orchestration tests (servers started and stopped by PID)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log) if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before {url}:\n{text}")
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """TERM, wait, TERM again (a Prefect worker survives its first TERM), then KILL. By PID only."""
    for _ in range(2):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait(timeout=10)


def pack_config(inputs: Path | str, tmp_path: Path, **preprocess: Any) -> Any:
    from packft.pipeline_config import PackDatasetConfig, load_flow_config

    return load_flow_config(
        PackDatasetConfig,
        overrides={
            "preprocess": {
                "input": str(inputs),
                "tokenizer_name_or_path": str(ASSETS / "llama2-tokenizer"),
                "output_prefix": str(tmp_path / "out" / "alpaca"),
                "handler_name": "AlpacaStyleInstructionHandler",
                "prompt_type": "llama2",
                "seq_length": 512,
                "pack": True,
                "neat_pack": True,
                **preprocess,
            },
            "run": {"work_dir": str(tmp_path / "work"), "parallel": 2},
        },
    )
