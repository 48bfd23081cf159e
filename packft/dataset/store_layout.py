"""The layout of a dataset store: where versions live and how they are named and ordered.

Layout under an output root (``dirname(--output-prefix)``)::

    root/versions/20261128-021500.123456-3f9c0a1b2d/   one complete dataset (UTC time + fingerprint)
        <name>_packed_{input_ids,attention_mask,labels}_document.{bin,idx}
        <name>.packft.json  <name>.packft.plan.npz  samples.u64.npy  VERSION.json
    root/versions/.<version>.packft-<writer>.tmp   a build in progress (a staged directory)
    root/versions/.lease-<version>   flock held by the process that owns that name
    root/latest -> versions/20261128-021500.123456-3f9c0a1b2d
    root/published.json              publish history (see packft.dataset.store_retention)
    root/.store.lock                 the store lock (see packft.dataset.store_lock)

Guarantees:

* ``versions/*`` holds only complete datasets: :func:`list_versions` lists the directories that
  have their ``VERSION.json`` (written last, see :func:`packft.dataset.store.finalize_version`).
* Names sort by creation time: the UTC time in microseconds at allocation (under the lock), bumped
  to 1 us after the newest existing name if the clock did not advance or went back
  (:func:`next_stamp`). Two versions never share a stamp, so the fingerprint never decides the
  order. Names of packft versions before microsecond stamps (``20261128-021500-<fp>``) still sort.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from packft.core.writers import TEMP_RE
from packft.dataset.store_lock import LEASE_PREFIX

VERSIONS = "versions"
MANIFEST = "VERSION.json"
SAMPLES = "samples.u64.npy"
LEGACY_TMP_PREFIX = ".tmp-"  # builds of packft versions before the staged directories

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def stamp_of(name: str) -> int | None:
    """Creation time (UTC microseconds) encoded in a version name; also reads the old
    second-resolution names (``20261128-021500-<fp>``). None for a foreign name."""
    for width, pattern in ((22, "%Y%m%d-%H%M%S.%f"), (15, "%Y%m%d-%H%M%S")):
        try:
            moment = datetime.strptime(name[:width], pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return (moment - _EPOCH) // _ONE_US
    return None


def sort_key(name: str) -> tuple[int, str]:
    stamp = stamp_of(name)
    return (-1 if stamp is None else stamp, name)


def _format_stamp(micros: int) -> str:
    return (_EPOCH + micros * _ONE_US).strftime("%Y%m%d-%H%M%S.%f")


def next_stamp(base: Path) -> str:
    """Now, or 1 us after the newest name in ``base`` (built, building or leased): strictly
    increasing under the store lock even when the clock stalls or steps back."""
    now = time.time_ns() // 1000
    for entry in os.listdir(base):
        if match := TEMP_RE.match(entry):
            entry = match["target"]
        for prefix in (LEGACY_TMP_PREFIX, LEASE_PREFIX, ""):
            if entry.startswith(prefix):
                stamp = stamp_of(entry[len(prefix) :])
                if stamp is not None and stamp >= now:
                    now = stamp + 1
                break
    return _format_stamp(now)


def list_versions(root: Path) -> list[Path]:
    """Complete versions, oldest first (by the creation time in their names)."""
    base = Path(root) / VERSIONS
    if not base.is_dir():
        return []
    done = [p for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()]
    return sorted(done, key=lambda p: sort_key(p.name))


def read_manifest(version: Path) -> dict[str, Any]:
    return json.loads((Path(version) / MANIFEST).read_text())
