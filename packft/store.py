"""Versioned dataset directories with an atomically swapped ``latest`` symlink.

Layout under an output root (``dirname(--output-prefix)``)::

    root/versions/20261128-021500-3f9c0a1b2d/   one complete dataset (name = UTC time + fingerprint)
        <name>_packed_{input_ids,attention_mask,labels}_document.{bin,idx}
        <name>.packft.json  <name>.packft.plan.npz  samples.u64.npy  VERSION.json
    root/latest -> versions/20261128-021500-3f9c0a1b2d

Guarantees:

* A version is built in ``versions/.tmp-<name>`` and renamed into place only when complete
  (``VERSION.json`` written last), so ``versions/*`` holds only complete datasets.
* ``latest`` moves by creating a new relative symlink beside it and ``os.replace``-ing it over the
  old one (atomic on POSIX): a reader resolving ``root/latest/...`` sees the old or the new
  dataset, never a mix. Only then are versions beyond ``keep_previous`` older ones deleted.
* A version is named by the dataset fingerprint (inputs' content digests, tokenizer digest,
  every option, packft version), so "nothing changed" is a lookup, not a rebuild.
* ``samples.u64.npy`` holds one 64-bit BLAKE2b digest per tokenized sample (ids + labels), sorted;
  the diff between two versions (samples added/removed) is a set difference of those arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packft.atomic import atomic_write_bytes, fsync_dir

LATEST = "latest"
VERSIONS = "versions"
MANIFEST = "VERSION.json"
SAMPLES = "samples.u64.npy"

__all__ = [
    "PublishResult",
    "current_version",
    "diff_versions",
    "find_version",
    "list_versions",
    "new_version_dir",
    "sample_digests",
    "shard_sample_digests",
    "finalize_version",
    "publish",
]


def _short(fingerprint: str) -> str:
    return fingerprint[:10]


def list_versions(root: Path) -> list[Path]:
    """Complete versions, oldest first (names start with a UTC timestamp)."""
    base = Path(root) / VERSIONS
    if not base.is_dir():
        return []
    return sorted(
        p for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def find_version(root: Path, fingerprint: str) -> Path | None:
    """The newest complete version built from exactly this fingerprint, if any."""
    for path in reversed(list_versions(root)):
        if read_manifest(path).get("fingerprint") == fingerprint:
            return path
    return None


def current_version(root: Path) -> Path | None:
    """What ``root/latest`` points at (resolved), or None."""
    link = Path(root) / LATEST
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if (target / MANIFEST).is_file() else None


def read_manifest(version: Path) -> dict[str, Any]:
    return json.loads((Path(version) / MANIFEST).read_text())


def new_version_dir(root: Path, fingerprint: str) -> tuple[Path, Path]:
    """A fresh temporary build dir and the final name it will get: ``(tmp, final)``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(root) / VERSIONS
    final = base / f"{stamp}-{_short(fingerprint)}"
    n = 1
    while final.exists():  # two builds in the same second
        final = base / f"{stamp}-{_short(fingerprint)}-{n}"
        n += 1
    tmp = base / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp, final


def shard_sample_digests(shards: list[Path]) -> np.ndarray:
    """Sorted digests of every sample of the tokenized shards (read sample by sample)."""
    from packft.tokenize import ShardReader

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


def finalize_version(
    tmp: Path, final: Path, fingerprint: str, digests: np.ndarray, info: dict[str, Any]
) -> Path:
    """Write the sample digests and ``VERSION.json`` (last), then rename ``tmp`` to ``final``."""
    with open(tmp / SAMPLES, "wb") as handle:
        np.save(handle, np.asarray(digests, dtype=np.uint64))
        handle.flush()
        os.fsync(handle.fileno())
    manifest = {"fingerprint": fingerprint, "created": time.time(), **info}
    atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


@dataclass
class PublishResult:
    """What a publish did: which version is live now, what it replaced, what was pruned."""

    current: str
    previous: str | None
    changed: bool
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish(root: Path, version: Path, keep_previous: int = 2) -> PublishResult:
    """Point ``root/latest`` at ``version`` atomically, then prune old versions.

    Args:
        root: output root holding ``versions/`` and ``latest``.
        version: a complete version directory under ``root/versions``.
        keep_previous: complete versions kept besides the live one (older ones are deleted).

    Raises:
        ValueError: ``version`` is not a complete version under ``root/versions``.
    """
    root, version = Path(root), Path(version).resolve()
    if version.parent != (root / VERSIONS).resolve() or not (version / MANIFEST).is_file():
        raise ValueError(f"{version} is not a complete version under {root / VERSIONS}")
    if keep_previous < 0:
        raise ValueError(f"keep_previous must be >= 0, got {keep_previous}")
    before = current_version(root)
    changed = before is None or before.resolve() != version
    if changed:
        link = root / LATEST
        tmp_link = root / f".{LATEST}.tmp-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(Path(VERSIONS) / version.name)
        os.replace(tmp_link, link)
        fsync_dir(root)
    pruned: list[str] = []
    others = [v for v in list_versions(root) if v.resolve() != version]
    for old in others[: max(0, len(others) - keep_previous)]:
        shutil.rmtree(old)
        pruned.append(old.name)
    return PublishResult(
        current=version.name,
        previous=before.name if before is not None else None,
        changed=changed,
        pruned=pruned,
    )


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
