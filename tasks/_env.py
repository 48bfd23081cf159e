"""Environment defaults that must be in place before ``import prefect`` / ``import mlflow``.

Prefect reads ``PREFECT_HOME`` and its settings at import time (setting them later is ignored),
and the machine-wide ``~/.prefect`` is shared by everyone on the box. So every entry point into
``tasks``/``flows`` imports this module first. Only defaults are set (``os.environ.setdefault``):
a user's or CI's own values always win. :func:`flows.reporting.prefect_ui_command` prints the
same server settings for the UI server a user starts by hand.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The source checkout (when running from one), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd().resolve()


def configure() -> None:
    root = project_root()
    defaults = {
        "PREFECT_HOME": str(root / ".prefect"),
        "PACKFT_DATA_DIR": str(root / ".packft"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # offline, telemetry logs an ERROR
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        # SQLite: wait as long for a lock while a connection is set up (journal_mode=WAL runs
        # before Prefect's own 60 s busy_timeout) instead of failing after the default 10 s
        # when a second server (the UI) or migrations hold the database on a busy machine
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TORCH_DEVICE_BACKEND_AUTOLOAD": "0",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


configure()
