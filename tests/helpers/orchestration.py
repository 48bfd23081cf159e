"""Process helpers shared by the orchestration tests (servers started and stopped by PID)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(home: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start ``mlflow server`` on 127.0.0.1 in its own session (job execution off, one worker,
    SQLite store and artifacts under ``home``) without waiting: ``(process, URI, log)``."""
    port = free_port()
    log = home / "server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
             "--artifacts-destination", str(home / "artifacts")],
            cwd=home, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", log


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


class ChildProcessWatch:
    """Samples the processes started under this one while a block runs (a cluster's processes).

    Records every new descendant and the addresses its sockets listen on, so a test can assert
    that a local cluster listened on 127.0.0.1 only and that none of its processes outlived it
    (:meth:`survivors`; a process re-parented to init after its parent died is still tracked).
    """

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self.before: set[int] = set()
        self.seen: dict[int, psutil.Process] = {}
        self.listening: set[tuple[str, str]] = set()  # (process name, ip)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChildProcessWatch:
        self.before = {p.pid for p in self.me.children(recursive=True)}
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for proc in self.me.children(recursive=True):
            if proc.pid in self.before:
                continue
            self.seen.setdefault(proc.pid, proc)
            try:
                name, conns = proc.name(), proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.listening |= {(name, c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN}

    def survivors(self, timeout: float = 30.0) -> list[str]:
        """The recorded processes still alive after waiting up to ``timeout`` s for them.

        Python's own ``multiprocessing`` resource tracker is not counted: the first spawn in an
        interpreter starts it, and by design it lives as long as the interpreter.
        """
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in self.seen.values() if _alive(p) and not _resource_tracker(p)]
            if not alive or time.monotonic() > deadline:
                return [f"{p.pid} {_describe(p)}" for p in alive]
            time.sleep(0.3)


def loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (``::ffff:127.0.0.1``, a dual-stack socket)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _resource_tracker(proc: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except psutil.Error:
        return "?"


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
