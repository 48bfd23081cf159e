"""Task runners for the tokenize fan-out: local threads, or an existing Dask / Ray cluster.

``threads`` (default) runs ``parallel`` shards at once in this process; each shard's tokenizer may
itself use ``workers`` processes, so ``parallel x workers`` should not exceed the cores.
``dask`` with ``cluster_address`` (``tcp://scheduler:8786``) sends every shard to that cluster:
this is how the pack flow scales past one machine (the workers need packft installed, read the
same input/work paths, i.e. a shared filesystem, and write shards there). Without an address a
``LocalCluster`` of ``parallel`` single-threaded worker processes is started for the run.
``ray`` with ``cluster_address`` (``ray://head:10001``) does the same through ``prefect-ray``
(``pip install prefect-ray``; not installed by default).

Measured on 2 shared cores: a LocalCluster adds ~5-10 s of start-up to a flow run, so it only
pays off on many cores or a real cluster.
"""

from __future__ import annotations

from typing import Any

from packft.config import ConfigError


def current_api_url() -> str | None:
    """The API this process talks to (also the temporary server of an ephemeral run)."""
    from prefect.client.orchestration import get_client

    return str(get_client().api_url) or None


def make_task_runner(kind: str, parallel: int, address: str | None = None) -> Any:
    """The Prefect task runner for ``kind`` in {threads, dask, ray}.

    A local Dask cluster's worker processes get this process's ``PREFECT_API_URL``: without it
    each worker would start its own temporary Prefect server and report task runs there.

    Raises:
        ConfigError: unknown kind, or the integration package is not installed.
    """
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, parallel))
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ConfigError(
                "task_runner 'dask' needs prefect-dask: pip install 'packft[dask]'"
            ) from exc
        if address:
            return DaskTaskRunner(address=address)
        api_url = current_api_url()
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": max(1, parallel),
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "env": {"PREFECT_API_URL": api_url} if api_url else {},
            }
        )
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise ConfigError(
                "task_runner 'ray' needs prefect-ray: pip install prefect-ray"
            ) from exc
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ConfigError(f"task_runner must be one of threads, dask, ray; got {kind!r}")
