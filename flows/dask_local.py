"""A Dask ``LocalCluster`` for one flow run that leaves this process's environment unchanged.

Imported by :mod:`flows.runners` only when a local Dask cluster is asked for (``distributed`` is
optional). A nanny writes its ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1``,
MKL/OpenBLAS threads, ``MALLOC_TRIM_THRESHOLD_``, ``PYTHONHASHSEED``, ``__DASK_PARENT_PID``) into
the *parent's* ``os.environ`` before each worker (re)start, so every process started from here
later inherited one-thread torch. The keys the start-up changed are put back right after it, and
again at ``close`` if a worker restart set them once more (a value changed by someone else in
between is left alone).
"""

from __future__ import annotations

import os
from typing import Any

import distributed

from flows.runners import changed_since, restore_environ


class EnvSafeLocalCluster(distributed.LocalCluster):
    """``distributed.LocalCluster`` that undoes what its nannies write into ``os.environ``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        before = dict(os.environ)
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._environ_before = before
            self._nanny_environ = changed_since(before)
            restore_environ(before, set(self._nanny_environ))

    def close(self, timeout: float | None = None) -> Any:
        try:
            return super().close(timeout)
        finally:
            set_again = {k for k, v in self._nanny_environ.items() if os.environ.get(k) == v}
            restore_environ(self._environ_before, set_again)
