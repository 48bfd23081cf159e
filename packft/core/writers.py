"""Writers, their locks and the sweep of dead writers' temporaries.

Every staged commit (:class:`packft.core.atomic.Stage`) belongs to a writer:

* **A writer id** ``<pid>-<8 hex>`` names its temporaries ``.<target name>.packft-<id>.tmp``
  (:func:`temp_path`, :data:`TEMP_RE`) and its lock file ``.packft-<id>.lock`` (:data:`LOCK_RE`)
  in the target directory. The writer holds an ``flock`` on that file for the stage's whole life
  (:func:`take_writer_lock`).
* **The sweep.** A writer is dead when its lock file is missing or can be locked: the kernel drops
  a dead process's locks. :func:`sweep` removes the temporaries and lock files of dead writers,
  never those of a live writer, and never those a pending journal still needs
  (:func:`packft.core.journal.journaled_writers`: the roll-forward renames them).
* **The commit lock** (:func:`commit_lock`) of a set of targets: readers take it shared while
  they open and check a set, writers exclusive for the commit only (milliseconds), so a commit
  never changes files under a reader that is opening them.
* :func:`probe_writable` creates and removes a writer lock, so an unwritable output directory
  fails before any expensive work.

Cost: the lock files are empty; a sweep is one directory listing plus one non-blocking ``flock``
per writer found.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from packft.core.digest import named_os_error
from packft.core.durable import remove_tree
from packft.core.errors import IntegrityError
from packft.core.faults import inject
from packft.core.journal import journaled_writers

WRITER = r"(?P<writer>\d+-[0-9a-f]{8})"
TEMP_RE = re.compile(rf"^\.(?P<target>.+)\.packft-{WRITER}\.tmp$")
LOCK_RE = re.compile(rf"^\.packft-{WRITER}\.lock$")


def temp_path(final: Path, writer: str) -> Path:
    return final.with_name(f".{final.name}.packft-{writer}.tmp")


def writer_lock_path(directory: Path, writer: str) -> Path:
    return directory / f".packft-{writer}.lock"


def take_writer_lock(directory: Path) -> tuple[int, str]:
    """Create and lock ``.packft-<id>.lock``; retried if a sweeper removed it in between."""
    while True:
        writer = f"{os.getpid()}-{secrets.token_hex(4)}"
        path = writer_lock_path(directory, writer)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        except OSError as error:
            raise named_os_error(error, directory) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, writer
        except FileNotFoundError:
            pass
        os.close(fd)  # a sweeper took the unlocked file for a dead writer's: start again


@contextlib.contextmanager
def commit_lock(path: Path, *, shared: bool = False, timeout: float = 60.0) -> Iterator[bool]:
    """Hold the ``flock`` at ``path``: exclusive for a writer's commit (the file is created),
    shared for a reader opening a set. A reader yields False when the file does not exist (no
    packft writer has committed there, so there is nothing to wait for; readers never create
    files). Waits up to ``timeout`` seconds for a concurrent holder."""
    try:
        fd = os.open(path, os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        if shared:
            yield False
            return
        raise
    except OSError as error:
        raise named_os_error(error, path.parent) from None
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IntegrityError(
                        f"{path} stayed locked for {timeout:.0f} s: another packft process is "
                        "committing there; retry when it has finished"
                    ) from None
                time.sleep(0.02)
        yield True
    finally:
        os.close(fd)


def sweep(directory: str | Path) -> list[Path]:
    """Remove the temporaries and lock files of dead writers in ``directory``; returns them.

    A writer is dead when its lock file is missing or can be locked (see module doc). Writers
    named by a pending journal are kept: :func:`roll_forward` needs their files.
    """
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    temps: dict[str, list[str]] = {}
    for name in names:
        if match := TEMP_RE.match(name):
            temps.setdefault(match["writer"], []).append(name)
        elif match := LOCK_RE.match(name):
            temps.setdefault(match["writer"], [])
    removed: list[Path] = []
    keep = journaled_writers(directory, names)
    for writer, files in temps.items():
        if writer in keep:
            continue
        with _dead_writer(directory, writer) as dead:
            if dead:
                for name in files:
                    if os.path.lexists(directory / name):
                        remove_tree(directory / name)
                        removed.append(directory / name)
                lock = writer_lock_path(directory, writer)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                    removed.append(lock)
    return removed


@contextlib.contextmanager
def _dead_writer(directory: Path, writer: str) -> Iterator[bool]:
    """True (holding the writer's lock) when ``writer`` is dead; False when it is alive."""
    path = writer_lock_path(directory, writer)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True  # a writer creates its lock before any temporary and removes it after them
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def probe_writable(directory: str | Path, what: str = "the output directory") -> None:
    """Create and remove a writer lock in ``directory``: an unwritable one fails here, with one
    ``OSError`` naming it, before any expensive work."""
    directory = Path(directory)
    try:
        inject("probe.create", directory)
        fd, writer = take_writer_lock(directory)
    except OSError as error:
        reason = f"{error.strerror or error}; {what} must be writable"
        raise OSError(error.errno, reason, os.fspath(directory)) from None
    writer_lock_path(directory, writer).unlink(missing_ok=True)
    os.close(fd)
