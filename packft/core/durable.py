"""Durability primitives: fsync a file, a directory or a tree; swap or rename into place.

A rename is durable only once its directory is fsynced, and a file's bytes only once the file
is: :func:`fsync_file`, :func:`fsync_dir`, :func:`fsync_tree`. :func:`install` renames a sealed
temporary to its final name; a directory over an existing directory is swapped in with one
``renameat2(RENAME_EXCHANGE)`` (readers see the old tree or the new one, never neither) and the
old tree, now at the temporary name, is removed; where the file system cannot swap, the old tree
is first renamed to a hidden ``.<name>.packft-old-<hex>`` (:func:`retire`) that a crash leaves
complete.

These are the bricks of :class:`packft.core.atomic.Stage`; writers use the stage, not these
(tests/core/test_atomic.py checks on the source that only the staged-commit modules of
packft/core rename into place or fsync).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def fsync_file(target: int | IO | str | Path) -> None:
    """Force a file's bytes to disk: an open fd or file object (flushed first), or a path."""
    if isinstance(target, int):
        os.fsync(target)
    elif isinstance(target, str | os.PathLike):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        target.flush()
        os.fsync(target.fileno())


def fsync_dir(directory: str | Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root`` itself."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(dirpath)


def retire(path: Path, hidden: Path) -> Path:
    """Rename ``path`` to ``hidden`` (same directory) before deleting it, so a tree being deleted
    is never visible half-deleted under its name; the caller removes ``hidden`` (after a crash it
    finds it by its name)."""
    os.replace(path, hidden)
    return hidden


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or directory tree; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the kernel, the C library or the file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``. A directory over an existing directory is swapped in (see the
    module doc) and the old tree removed once the swap is on disk."""
    if not (tmp.is_dir() and not tmp.is_symlink() and final.is_dir() and not final.is_symlink()):
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old tree, now at the temporary name
        return
    old = retire(final, final.with_name(f".{final.name}.packft-old-{secrets.token_hex(4)}"))
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
