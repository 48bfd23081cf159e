"""Retention of a dataset store: the publish history, pruning, and dead writers' leftovers.

Guarantees (:mod:`packft.dataset.store` calls every function here that changes the namespace
under the store lock, except :func:`sweep_stages` and :func:`empty_trash`, safe without it):

* ``root/published.json`` lists every publish (version, UTC time, forced), written before the
  ``latest`` swap (:func:`record_publish`). Prune keeps ``latest``, every version leased by a
  live writer, the ``keep`` newest once-published versions (rollback targets) and the ``keep``
  newest never-published ones (refused by the publish gate, or finished by a run killed before
  its publish): garbage refused night after night can neither fill the disk nor push out the
  last good versions. (A store without the file counts versions up to ``latest`` as published.)
* Pruned versions are renamed to ``.trash-*`` (:func:`to_trash`, an atomic rename) before being
  deleted after the lock is released, so a half-deleted one is never visible.
* A killed writer's staged build or link (and its lease, ``.trash-*``) is removed by the next
  allocation or publish on the same root (:func:`sweep_stages`, :func:`remove_dead_leftovers`);
  a live writer's build is never touched (its stage's writer lock and its lease are held).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packft.core.atomic import atomic_write_bytes
from packft.core.durable import fsync_dir, remove_tree, retire
from packft.core.errors import IntegrityError
from packft.core.faults import inject
from packft.core.writers import sweep
from packft.dataset.store_layout import LEGACY_TMP_PREFIX, VERSIONS, list_versions, sort_key
from packft.dataset.store_lock import LEASE_PREFIX, lease_is_live, lease_path

TRASH_PREFIX = ".trash-"
HISTORY = "published.json"


def to_trash(path: Path) -> Path:
    """Rename ``path`` out of sight (atomic), to be deleted after the lock is released."""
    trash = path.parent / f"{TRASH_PREFIX}{path.name.lstrip('.')}-{uuid.uuid4().hex[:8]}"
    return retire(path, trash)


def empty_trash(paths: list[Path]) -> None:
    for path in paths:
        remove_tree(path)  # another run may be emptying the same trash


def sweep_stages(root: Path) -> None:
    """Dead writers' staged builds and links (safe without the store lock: a stage's writer lock
    says whether its writer lives)."""
    sweep(root / VERSIONS)
    sweep(root)


def remove_dead_leftovers(root: Path) -> list[Path]:
    """Dead writers' leases, unfinished deletions, builds of older packft versions.

    Returns the trash to delete once the lock is released (large builds take a while).
    """
    base = root / VERSIONS
    trash: list[Path] = []
    for entry in sorted(os.listdir(base)) if base.is_dir() else []:
        path = base / entry
        if entry.startswith(TRASH_PREFIX):
            trash.append(path)
        elif entry.startswith(LEGACY_TMP_PREFIX):
            lease = lease_path(base, entry[len(LEGACY_TMP_PREFIX) :])
            if not lease_is_live(lease):
                trash.append(to_trash(path))
                lease.unlink(missing_ok=True)
        elif entry.startswith(LEASE_PREFIX) and not lease_is_live(path):
            path.unlink(missing_ok=True)  # its writer died after finishing the version
    return trash


def read_history(root: Path) -> list[dict[str, Any]]:
    """Every publish of this store, oldest first (``[]`` before the first one).

    Raises:
        IntegrityError: ``published.json`` is not what this module writes.
    """
    path = Path(root) / HISTORY
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["published"]
        names = [str(e["version"]) for e in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityError(
            f"{path} is not a packft publish history ({error}); restore it or delete it (then "
            "versions up to latest count as published)"
        ) from error
    if len(names) != len(entries):
        raise IntegrityError(f"{path}: malformed entries")
    return entries


def record_publish(root: Path, name: str, forced: bool) -> None:
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    entries = [*read_history(root), {"version": name, "at": at, "forced": forced}]
    atomic_write_bytes(root / HISTORY, json.dumps({"published": entries}, indent=1).encode())


def published_names(root: Path, live: Path, versions: list[Path]) -> set[str]:
    if (root / HISTORY).is_file():
        return {e["version"] for e in read_history(root)}
    return {v.name for v in versions if sort_key(v.name) <= sort_key(live.name)}  # older store


def prune(root: Path, live: Path, keep: int) -> tuple[list[str], list[Path]]:
    """Move unprotected versions beyond ``keep`` once-published and ``keep`` never-published
    ones (newest kept) to the trash."""
    base = root / VERSIONS
    versions = list_versions(root)
    published = published_names(root, live, versions)
    free = [
        v for v in versions if v.name != live.name and not lease_is_live(lease_path(base, v.name))
    ]
    earlier = [v for v in free if v.name in published]
    never = [v for v in free if v.name not in published]
    doomed = earlier[: max(0, len(earlier) - keep)] + never[: max(0, len(never) - keep)]
    trash = []
    for old in doomed:
        trash.append(to_trash(old))
        inject("store.prune.trashed", trash[-1])
    if doomed:
        fsync_dir(base)
    return [v.name for v in doomed], trash
