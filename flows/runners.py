"""Task runners for the tokenize fan-out: local threads, a Dask cluster or a Ray cluster.

``threads`` (default) runs ``parallel`` shards at once in this process; each shard's tokenizer may
itself use ``workers`` processes, so ``parallel x workers`` should not exceed the cores.
``dask`` with ``cluster_address`` (``tcp://scheduler:8786``) sends every shard to that cluster:
this is how the pack flow scales past one machine (the workers need packft installed, read the
same input/work paths, i.e. a shared filesystem, and write shards there). Without an address a
``LocalCluster`` of ``parallel`` single-threaded worker processes is started for the run.
``ray`` with ``cluster_address`` does the same through ``prefect-ray``: the cluster's GCS address
(``head:6379``) from a cluster node, or Ray Client's ``ray://head:10001`` (see the README for
what was verified); without one a local Ray instance with ``parallel`` CPUs is started for the run.

Local clusters are private to the run and leave this process as they found it:
- **Environment.** Dask's nanny writes ``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS threads,
  ``PYTHONHASHSEED``, ``MALLOC_TRIM_THRESHOLD_``) into the *parent's* ``os.environ`` before it
  spawns a worker, and ``ray.init`` writes ``RAY_AUTH_MODE``/``RAY_USAGE_STATS_ENABLED``. Every
  process this one starts later inherited them: a ``packft train`` child then ran torch on one
  thread instead of all cores (slower, and not bit-identical to an in-process run). Both runners
  here undo exactly the keys the cluster changed, once it is up and again when it closes.
- **Network.** Ray's servers listen on the machine's address by default; a local instance here
  starts in Ray's single-machine mode (see ``flows.ray_local``), so every Ray port is bound to
  127.0.0.1. Dask's LocalCluster binds 127.0.0.1 too. Both dashboards are off.
- **Worker environment.** Worker processes get this process's ``PREFECT_API_URL`` (without it each
  would start its own temporary Prefect server) and the checkout on ``PYTHONPATH`` (``tasks``).

Measured on 2 shared cores: a LocalCluster adds ~5-10 s of start-up to a flow run, a local Ray
instance 5 s (idle) to 26 s (load ~8), and each worker's first task imports Prefect and the
tokenizer; so they only pay off on many cores or a real cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from packft.core import ConfigError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner


def current_api_url() -> str | None:
    """The API this process talks to (also the temporary server of an ephemeral run)."""
    from prefect.client.orchestration import get_client

    return str(get_client().api_url) or None


def changed_since(before: dict[str, str]) -> dict[str, str | None]:
    """The ``os.environ`` keys that differ from ``before``, with their new value (None: removed)."""
    now = dict(os.environ)
    return {k: now.get(k) for k in before.keys() | now.keys() if before.get(k) != now.get(k)}


def restore_environ(before: dict[str, str], keys: set[str]) -> None:
    """Put ``keys`` of ``os.environ`` back to their values in ``before`` (absent = removed)."""
    for key in keys:
        if key not in before:
            os.environ.pop(key, None)
        elif os.environ.get(key) != before[key]:
            os.environ[key] = before[key]


@contextlib.contextmanager
def environ_restored() -> Iterator[None]:
    """Undo every change made to ``os.environ`` inside the block (only the keys that differ)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        restore_environ(before, set(changed_since(before)))


def make_task_runner(kind: str, parallel: int, address: str | None = None) -> TaskRunner:
    """The Prefect task runner for ``kind`` in {threads, dask, ray}.

    Raises:
        ConfigError: unknown kind, or the integration package is not installed.
    """
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, parallel))
    if kind == "dask":
        return dask_task_runner(parallel, address)
    if kind == "ray":
        return ray_task_runner(parallel, address)
    raise ConfigError(f"task_runner must be one of threads, dask, ray; got {kind!r}")


def local_worker_env() -> dict[str, str]:
    """Environment for the worker processes of a local cluster: this run's Prefect API and the
    checkout's root on ``PYTHONPATH``, since ``flows``/``tasks`` run from the checkout (only
    ``packft`` is installed) and Ray starts its workers from its own session directory."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    api_url = current_api_url()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def dask_task_runner(parallel: int, address: str | None) -> TaskRunner:
    """A DaskTaskRunner on ``address``, else on an environment-preserving LocalCluster."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "task_runner 'dask' needs prefect-dask: pip install 'packft[dask]'"
        ) from exc
    if address:
        return DaskTaskRunner(address=address)
    from flows.dask_local import EnvSafeLocalCluster

    return DaskTaskRunner(
        cluster_class=EnvSafeLocalCluster,
        cluster_kwargs={
            "n_workers": max(1, parallel),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "env": local_worker_env(),
        },
    )


def ray_task_runner(parallel: int, address: str | None) -> TaskRunner:
    """A RayTaskRunner on ``address`` (GCS ``host:port`` or ``ray://``), else a private local one."""
    _import_prefect_ray()
    if address:
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=address)
    from flows.ray_local import EnvSafeRayTaskRunner

    return EnvSafeRayTaskRunner(
        init_kwargs={"num_cpus": max(1, parallel), "include_dashboard": False},
        worker_env=local_worker_env(),
    )


def _import_prefect_ray() -> None:
    """Import ``prefect_ray``, and ``ray`` with a plain ``import`` (which loads it whole).

    prefect-ray binds ``ray`` through Prefect's ``lazy_import`` (an ``importlib`` LazyLoader), and
    Prefect imports prefect-ray whenever it loads its integrations. On Python 3.11, if the first
    touch of that lazy module is an attribute (``ray.is_initialized``) or a submodule import,
    Ray's circular imports leave ``ray._private`` without its submodules (seen here:
    "module 'ray._private' has no attribute 'worker'"); a plain ``import ray`` loads it whole.
    ``import ray`` also writes ``RAY_CLIENT_MODE=0`` into ``os.environ``: undone.
    """
    try:
        with environ_restored():
            import prefect_ray  # noqa: F401
            import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError("task_runner 'ray' needs prefect-ray: pip install 'packft[ray]'") from exc
