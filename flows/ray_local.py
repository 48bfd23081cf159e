"""A Prefect ``RayTaskRunner`` for a private local Ray instance: loopback only, environment kept.

Imported by :mod:`flows.runners` only when a local Ray instance is asked for (``prefect-ray`` is
optional).

- **Loopback only.** Ray 2.60 resolves even ``127.0.0.1`` to the machine's address and binds its
  GCS, raylet, workers and agents there or on 0.0.0.0, except in its single-machine mode (the one
  it uses on macOS/Windows), chosen by ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. That variable is
  read once, at ``import ray``, and Prefect imports ``prefect_ray`` (so ``ray``) whenever it loads
  its integrations, so for the duration of ``ray.init`` the already-read flag
  (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) is switched off too and the variable is set
  for the processes Ray starts. A user's own ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` wins.
- **Prefect API.** ``worker_env`` (the run's ``PREFECT_API_URL``) is put in the environment Ray's
  processes start with, so the workers it pre-starts can run tasks at once (a ``runtime_env``
  would make Ray start fresh workers for it: seconds each on a small machine).
- **Environment kept.** ``ray.init`` writes ``RAY_AUTH_MODE=token`` and
  ``RAY_USAGE_STATS_ENABLED`` into ``os.environ`` (its processes are already started with them);
  they are put back on enter and on exit, so processes started from here later do not inherit
  them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from prefect_ray import RayTaskRunner

from flows.runners import environ_restored

SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
log = logging.getLogger("flows.ray_local")


@contextlib.contextmanager
def single_machine_mode() -> Iterator[None]:
    """Ray's single-machine (loopback) mode while a local instance starts; then as before."""
    if os.environ.get(SINGLE_MACHINE, "0") != "0":
        yield  # the user asked for cluster mode
        return
    from ray._private import ray_constants

    os.environ[SINGLE_MACHINE] = "0"  # for Ray's processes; the caller restores os.environ
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:  # a Ray without the flag: tests/integration/test_ray_runner.py will say
        log.warning("this Ray has no single-machine flag; its ports may not be loopback-only")
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


class EnvSafeRayTaskRunner(RayTaskRunner):
    """``RayTaskRunner`` that starts Ray on loopback and leaves ``os.environ`` as it was.

    ``worker_env`` is set in the environment Ray's processes are started with (so its pre-started
    workers already have it; a ``runtime_env`` would make Ray start new ones), not in ours.
    """

    def __init__(
        self, init_kwargs: dict[str, Any] | None = None, worker_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(init_kwargs=init_kwargs)
        self.worker_env = dict(worker_env or {})

    def __enter__(self) -> EnvSafeRayTaskRunner:
        with environ_restored(), single_machine_mode():
            os.environ.update(self.worker_env)
            return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        with environ_restored():
            super().__exit__(*exc_info)

    def duplicate(self) -> EnvSafeRayTaskRunner:
        return type(self)(init_kwargs=self.init_kwargs, worker_env=self.worker_env)

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.worker_env == getattr(other, "worker_env", None)
