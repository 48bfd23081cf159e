"""Environment defaults that must be in place before ``import prefect`` / ``import mlflow``.

Prefect reads ``PREFECT_HOME`` and its settings at import time (setting them later is ignored),
and the machine-wide ``~/.prefect`` is shared by everyone on the box. So every entry point into
``tasks``/``flows`` imports this module first. Only defaults are set (``os.environ.setdefault``):
a user's or CI's own values always win.
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
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TORCH_DEVICE_BACKEND_AUTOLOAD": "0",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


configure()
