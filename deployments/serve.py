"""Serve every deployment of ``prefect.yaml`` from one process: no work pool, no worker.

For a single machine without a pool: ``python deployments/serve.py`` (from the checkout root,
with ``PREFECT_API_URL`` pointing at a running ``prefect server``). The process registers the same
deployments (names, parameters, schedules) as ``prefect deploy --all`` and runs their flow runs
itself until stopped (Ctrl-C); ``prefect deployment run 'pack-dataset/nightly-repack'`` works the
same way. ``prefect.yaml`` stays the single source of truth: this file only reads it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks import _env  # noqa: E402, F401  (Prefect settings before prefect is imported)


def read_deployments(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("deployments") or []
    if not entries:
        raise ValueError(f"{path} defines no deployments")
    return entries


def build_deployments(entries: list[dict[str, Any]]) -> list[Any]:
    """RunnerDeployments equivalent to the prefect.yaml entries (flows loaded from entrypoints)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    out = []
    for entry in entries:
        flow = load_flow_from_entrypoint(str(ROOT / entry["entrypoint"]))
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone")) for s in entry.get("schedules") or []
        ]
        out.append(
            flow.to_deployment(
                name=entry["name"],
                parameters=entry.get("parameters") or {},
                schedules=schedules or None,
                concurrency_limit=entry.get("concurrency_limit"),
                description=entry.get("description"),
                tags=entry.get("tags"),
            )
        )
    return out


def main() -> None:
    from prefect import serve

    os.chdir(ROOT)  # parameter files and relative paths resolve against the checkout
    serve(*build_deployments(read_deployments()), limit=1)


if __name__ == "__main__":
    main()
