"""Versioned dataset directories with an atomically swapped ``latest`` symlink, safe to share.

A store is an output root (``dirname(--output-prefix)``) holding ``versions/`` and ``latest``
(layout and naming: :mod:`~packft.dataset.store_layout`; publish history, pruning and cleanup:
:mod:`~packft.dataset.store_retention`; the cross-process lock: :mod:`~packft.dataset.store_lock`).
This module builds versions and publishes them.

Guarantees (several processes may build and publish into one root at the same time):

* Every change of the namespace (name allocation, build -> version rename, ``latest`` swap,
  prune, cleanup) happens under the cross-process store lock; datasets are written outside it.
* A version is built in a staged directory (:meth:`packft.core.atomic.Stage.make_dir`) and
  committed (fsynced, renamed into place) only when complete (``VERSION.json`` written last), so
  ``versions/*`` holds only complete datasets.
* ``latest`` moves by a staged relative symlink committed over the old one in one rename
  (:meth:`packft.core.atomic.Stage.symlink`): a reader sees the old or the new dataset, never a
  mix. It is only ever pointed at a complete version, checked under the lock, and prune (also
  under the lock) reads ``latest`` itself, so it never deletes what ``latest`` names, whoever
  moved it last.
* :func:`publish` records the publish, then swaps ``latest``, then prunes (what is kept:
  :mod:`~packft.dataset.store_retention`).
* :func:`publish` can take a :class:`~packft.dataset.publish_gate.PublishGate`: the diff against the
  current ``latest`` is computed under the lock and a regression raises
  :class:`~packft.dataset.publish_gate.PublishRefused` with ``latest`` unchanged.
* A version is named by the dataset fingerprint (inputs' content digests, tokenizer digest,
  every option, packft version), so "nothing changed" is a lookup, not a rebuild.
* ``samples.u64.npy`` holds one 64-bit BLAKE2b digest per tokenized sample (ids + labels), sorted;
  the diff between two versions (samples added/removed) is a set difference of those arrays.

Cost: one lock round trip and a directory scan per allocation/publish (~1 ms for 100 versions).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from packft.core.atomic import Stage, atomic_write_bytes, atomic_writer
from packft.core.durable import remove_tree
from packft.core.results import Result
from packft.dataset.publish_gate import PublishGate, PublishRefused
from packft.dataset.store_layout import (
    MANIFEST,
    SAMPLES,
    VERSIONS,
    list_versions,
    next_stamp,
    read_manifest,
)
from packft.dataset.store_lock import Lease, lease_path, store_lock
from packft.dataset.store_retention import (
    empty_trash,
    prune,
    record_publish,
    remove_dead_leftovers,
    sweep_stages,
)

LATEST = "latest"

__all__ = [
    "LATEST",
    "PublishResult",
    "abandon_version",
    "current_version",
    "diff_versions",
    "find_version",
    "finalize_version",
    "new_version_dir",
    "publish",
    "release_version",
    "sample_digests",
    "shard_sample_digests",
]

_leases: dict[str, Lease] = {}  # version path -> this process's lease on it
_builds: dict[str, Stage] = {}  # version path -> the stage holding its build directory
_leases_guard = threading.Lock()


def _short(fingerprint: str) -> str:
    return fingerprint[:10]


# --- reading ------------------------------------------------------------------------------------


def find_version(root: Path, fingerprint: str) -> Path | None:
    """The newest complete version built from exactly this fingerprint, if any."""
    for path in reversed(list_versions(root)):
        try:
            if read_manifest(path).get("fingerprint") == fingerprint:
                return path
        except FileNotFoundError:  # pruned by another process since the listing
            continue
    return None


def current_version(root: Path) -> Path | None:
    """What ``root/latest`` points at (resolved), or None."""
    link = Path(root) / LATEST
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if (target / MANIFEST).is_file() else None


# --- building -----------------------------------------------------------------------------------


def _lease_key(version: Path) -> str:
    return str(Path(version).resolve())


def new_version_dir(root: Path, fingerprint: str) -> tuple[Path, Path]:
    """A fresh build dir and the final name it will get: ``(tmp, final)``.

    Under the store lock: removes dead writers' leftovers, allocates a time-ordered unique name
    and takes this process's lease on it (released by :func:`publish`, :func:`release_version`
    or :func:`abandon_version`, or by the kernel when the process dies).
    """
    root = Path(root)
    base = root / VERSIONS
    base.mkdir(parents=True, exist_ok=True)
    sweep_stages(root)
    trash: list[Path] = []
    with store_lock(root):
        trash += remove_dead_leftovers(root)
        final = base / f"{next_stamp(base)}-{_short(fingerprint)}"
        lease = Lease(lease_path(base, final.name))
        try:
            stage = Stage(base, label="store.version")
            tmp = stage.make_dir(final)
        except BaseException:
            lease.release()
            raise
        with _leases_guard:
            _leases[_lease_key(final)] = lease
            _builds[_lease_key(final)] = stage
    empty_trash(trash)
    return tmp, final


def _build_stage(tmp: Path, final: Path) -> Stage:
    with _leases_guard:
        stage = _builds.pop(_lease_key(final), None)
    if stage is None or stage.temp(final) != tmp:
        raise ValueError(f"{tmp} is not a build this process allocated for {final}")
    return stage


def finalize_version(
    tmp: Path, final: Path, fingerprint: str, digests: np.ndarray, info: dict[str, Any]
) -> Path:
    """Write the sample digests and ``VERSION.json`` (last), then commit the build ``tmp`` as
    ``final`` (fault points ``store.version.staged``, ``.renamed``, ``.committed``)."""
    stage = _build_stage(tmp, final)
    try:
        with atomic_writer(tmp / SAMPLES) as handle:
            np.save(handle, np.asarray(digests, dtype=np.uint64))
        manifest = {"fingerprint": fingerprint, "created": time.time(), **info}
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
        stage.seal(final)
        with store_lock(final.parent.parent):
            stage.commit()
    except BaseException:
        stage.abort()
        raise
    finally:
        stage.close()
    return final


def release_version(version: Path) -> None:
    """Drop this process's lease on ``version`` (a no-op when it holds none)."""
    with _leases_guard:
        lease = _leases.pop(_lease_key(version), None)
    if lease is not None:
        with store_lock(Path(version).parent.parent):
            lease.release()


def abandon_version(tmp: Path, final: Path) -> None:
    """A build failed: remove its temporary dir, then give up its name."""
    try:
        stage = _build_stage(tmp, final)
    except ValueError:
        remove_tree(tmp)
    else:
        stage.abort()
        stage.close()
    release_version(final)


# --- publishing ---------------------------------------------------------------------------------


class PublishResult(Result):
    """What a publish did: which version is live now, what it replaced, what was pruned."""

    model_config = ConfigDict(frozen=False)  # filled in by ``publish`` as it goes

    current: str
    previous: str | None
    changed: bool
    pruned: list[str] = Field(default_factory=list)
    diff: dict[str, int | float | None] = Field(default_factory=dict)
    """:func:`diff_versions` of the previous and the new version (empty when unchanged)."""
    gate: dict[str, Any] | None = None
    """The publish gate's verdict (:meth:`GateVerdict.to_dict`); None when no gate ran."""


def publish(
    root: Path,
    version: Path,
    keep_previous: int = 2,
    *,
    gate: PublishGate | None = None,
    force: bool = False,
    override: str = "force=True",
) -> PublishResult:
    """Point ``root/latest`` at ``version`` atomically (if the gate lets it), then prune.

    Args:
        root: output root holding ``versions/`` and ``latest``.
        version: a complete version directory under ``root/versions``.
        keep_previous: once-published versions kept besides the live one, and as many
            never-published ones (see :mod:`~packft.dataset.store_retention`).
        gate: limits against the current ``latest``; None publishes unconditionally.
        force: publish even when the gate refuses (the verdict still says what it found).
        override: how the caller's user forces a publish, quoted in the refusal message.

    Raises:
        ValueError: ``version`` is not a complete version under ``root/versions`` (never
            built, or pruned by another run since this one found it).
        PublishRefused: the gate refused; ``latest`` is unchanged, ``version`` kept unpublished.
    """
    root, target = Path(root), Path(version).resolve()
    if keep_previous < 0:
        raise ValueError(f"keep_previous must be >= 0, got {keep_previous}")
    trash: list[Path] = []
    sweep_stages(root)
    try:
        with store_lock(root):
            trash += remove_dead_leftovers(root)
            result = _publish_locked(root, target, keep_previous, gate, force, override, trash)
    finally:
        empty_trash(trash)
    if isinstance(result, PublishRefused):
        raise result
    return result


def _publish_locked(
    root: Path,
    target: Path,
    keep: int,
    gate: PublishGate | None,
    force: bool,
    override: str,
    trash: list[Path],
) -> PublishResult | PublishRefused:
    """The body of :func:`publish`, under the store lock; pruned dirs are added to ``trash``."""
    if target.parent != (root / VERSIONS).resolve() or not (target / MANIFEST).is_file():
        raise ValueError(
            f"{target} is not a complete version under {root / VERSIONS} (was it pruned by "
            "another run? re-run to rebuild it)"
        )
    before = current_version(root)
    result = PublishResult(current=target.name, previous=before.name if before else None,
                           changed=before != target)  # fmt: skip
    outcome: PublishResult | PublishRefused = result
    if result.changed:
        result.diff = diff_versions(before, target)
        verdict = gate.check(result.diff, forced=force) if gate is not None else None
        result.gate = verdict.to_dict() if verdict is not None else None
        if verdict is not None and not verdict.passed and not force:
            outcome = PublishRefused(str(target), str(before) if before else None,
                                     result.diff, verdict, override)  # fmt: skip
        else:
            record_publish(root, target.name, forced=bool(verdict and not verdict.passed))
            _swap_latest(root, target.name)
    if outcome is result:
        result.pruned, doomed = prune(root, target, keep)
        trash += doomed
    with _leases_guard:
        lease = _leases.pop(_lease_key(target), None)
    if lease is not None:
        lease.release()
    return outcome


def _swap_latest(root: Path, name: str) -> None:
    """``latest -> versions/name`` in one rename (fault points ``store.publish.staged``,
    ``.renamed``, ``.committed``)."""
    with Stage(root, label="store.publish") as stage:
        stage.symlink(root / LATEST, Path(VERSIONS) / name)
        stage.commit()


# --- samples and diffs ----------------------------------------------------------------------------


def shard_sample_digests(shards: list[Path]) -> np.ndarray:
    """Sorted digests of every sample of the tokenized shards (read sample by sample)."""
    from packft.tokenize.shards import ShardReader

    parts = []
    for path in shards:
        reader = ShardReader(path)
        parts.append(sample_digests(reader.sample(i) for i in range(reader.num_samples)))
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def sample_digests(samples: Any) -> np.ndarray:
    """Sorted uint64 digests of ``(ids, labels)`` pairs (an iterable of two int arrays)."""
    out = [
        int.from_bytes(
            hashlib.blake2b(
                np.ascontiguousarray(ids).tobytes() + b"|" + np.ascontiguousarray(lab).tobytes(),
                digest_size=8,
            ).digest(),
            "little",
        )
        for ids, lab in samples
    ]
    return np.sort(np.array(out, dtype=np.uint64))


def diff_versions(old: Path | None, new: Path) -> dict[str, Any]:
    """Samples added/removed and efficiency before/after between two versions."""
    new_manifest = read_manifest(new)
    new_samples = np.load(Path(new) / SAMPLES)
    result: dict[str, Any] = {
        "samples_after": int(new_samples.size),
        "efficiency_after": new_manifest.get("efficiency"),
    }
    if old is None:
        result |= {
            "samples_before": 0,
            "samples_added": int(new_samples.size),
            "samples_removed": 0,
            "efficiency_before": None,
        }
        return result
    old_samples = np.load(Path(old) / SAMPLES)
    result |= {
        "samples_before": int(old_samples.size),
        "samples_added": int(np.setdiff1d(new_samples, old_samples).size),
        "samples_removed": int(np.setdiff1d(old_samples, new_samples).size),
        "efficiency_before": read_manifest(old).get("efficiency"),
    }
    return result
