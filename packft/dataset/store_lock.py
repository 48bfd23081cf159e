"""Cross-process locks of the dataset store: one store lock, one lease per version being built.

Both are ``flock(2)`` locks on small files. flock was chosen over PID files and timestamps because
the kernel drops the lock when its holder dies (SIGKILL, OOM kill, crash), so a lock is never
stale, and "is this lease still locked" is an exact test of "is that writer still alive": no PID
reuse, no clock skew, no timeout guessing. Each acquisition opens its own file description, so the
locks also exclude threads of one process from each other.

* :func:`store_lock` (``root/.store.lock``) serialises every change of the store's namespace:
  allocating a version name, renaming a build into ``versions/``, moving ``latest``, pruning,
  removing dead writers' leftovers. Held for milliseconds (no dataset is written under it).
* :class:`Lease` (``versions/.lease-<name>``) is held by the process that builds a version, from
  the allocation of its name until it publishes it or gives it up. Cleanup removes a staged build
  of ``<name>`` only when its lease is free (writer dead); prune never removes a leased version.
  Leases are created, probed and unlinked only under the store lock, so a probe never races an
  unlink (the classic "locked an unlinked inode" flock bug).

Scope: processes on one host, or hosts sharing a filesystem with working ``flock`` (local disks,
NFSv4, Lustre with ``flock``). A lease fd is not inherited across ``exec`` (Python opens fds
non-inheritable); a ``fork`` child shares it until it exits, which only delays a cleanup.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from packft.core.errors import PackftError

STORE_LOCK = ".store.lock"
LEASE_PREFIX = ".lease-"
DEFAULT_TIMEOUT_S = 600.0

__all__ = ["Lease", "StoreLockTimeout", "lease_is_live", "lease_path", "store_lock"]


class StoreLockTimeout(PackftError):
    """Another process held the store lock for longer than the timeout."""


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def store_lock(root: Path, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold ``root/.store.lock`` exclusively for the block (polls; never re-entrant).

    Raises:
        StoreLockTimeout: not acquired within ``timeout`` seconds (the message names the holder).
    """
    path = Path(root) / STORE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, pause = time.monotonic() + timeout, 0.001
        while not _try_flock(fd):
            if time.monotonic() > deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise StoreLockTimeout(
                    f"the dataset store {root} is locked by another process ({holder}) for more "
                    f"than {timeout:.0f} s ({path}); wait for it or stop it"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def lease_path(versions_dir: Path, name: str) -> Path:
    return Path(versions_dir) / f"{LEASE_PREFIX}{name}"


class Lease:
    """An exclusive flock on ``versions/.lease-<name>`` held while this process owns ``name``.

    Create and :meth:`release` it only under :func:`store_lock`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(self._fd):  # a fresh name: nobody else can hold it
            os.close(self._fd)
            self._fd = None
            raise PackftError(f"{self.path} is leased by another process")
        os.pwrite(self._fd, f"pid {os.getpid()}\n".encode(), 0)
        self._guard = threading.Lock()

    def release(self) -> None:
        """Unlink the lease file, then drop the lock (idempotent)."""
        with self._guard:
            if self._fd is None:
                return
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def lease_is_live(path: Path) -> bool:
    """Whether a live process (this one included) holds the lease at ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _try_flock(fd)
    finally:
        os.close(fd)
