"""The versioned store under concurrent writers and SIGKILL (real processes, real flock).

Readers check ``latest`` the way a trainer would use it, while several processes create, publish
and prune versions in one root; kills are placed with ``packft.core.faults`` points in store.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from packft.core.writers import TEMP_RE
from packft.dataset import store, store_layout
from tests.faults.store_worker import PAYLOAD_BYTES, payload

WORKER = Path(__file__).with_name("store_worker.py")
REPO = Path(__file__).resolve().parents[2]


def worker_env(fault: str | None = None) -> dict[str, str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("PACKFT_FAULT", None)
    if fault:
        env["PACKFT_FAULT"] = fault
    return env


def run_worker(*args: object, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        env=worker_env(fault),
        capture_output=True,
        text=True,
        timeout=120,
    )


def leftovers(root: Path) -> list[str]:
    """Everything a dead or finished writer could leave behind: any hidden entry but the store
    lock (staged builds and links, writer locks, leases, trash)."""
    hidden = [p for d in (root, root / "versions") for p in d.iterdir() if p.name[0] == "."]
    return sorted(p.name for p in hidden if p.name != ".store.lock")


def latest_is_complete(root: Path) -> Path:
    target = (root / "latest").resolve(strict=True)
    assert (target / "VERSION.json").is_file()
    assert (target / "data.bin").read_bytes() == payload(target.name)
    return target


class LatestWatcher(threading.Thread):
    """Resolves ``latest`` in a loop; a violation is ``latest`` naming a missing or partial
    version while the link did not change (read again after the failed check)."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.checks, self.violations = root, 0, []
        self.done = threading.Event()

    def run(self) -> None:
        link = self.root / "latest"
        while not self.done.is_set():
            try:
                target = os.readlink(link)
            except FileNotFoundError:
                continue  # nothing published yet
            version = self.root / target
            try:
                ok = (version / "data.bin").read_bytes() == payload(version.name)
                ok = ok and (version / "VERSION.json").is_file()
            except FileNotFoundError:
                ok = False
            self.checks += 1
            if not ok and os.readlink(link) == target:
                self.violations.append(target)


def test_concurrent_writers_keep_latest_valid_and_names_ordered(tmp_path: Path) -> None:
    root, workers, per_worker = tmp_path / "store", 3, 25
    root.mkdir()
    watcher = LatestWatcher(root)
    watcher.start()
    logs = [tmp_path / f"w{i}.jsonl" for i in range(workers)]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "churn", str(root), str(per_worker), "0", str(log)],
            env=worker_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    watcher.done.set()
    watcher.join()
    assert [p.returncode for p in procs] == [0] * workers, errors
    records = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert len(records) == workers * per_worker
    print(f"{len(records)} versions by {workers} processes in {time.monotonic() - started:.1f} s, "
          f"{watcher.checks} reads of latest")  # fmt: skip

    # latest always named a complete version (checked thousands of times while they raced)
    assert watcher.checks > 100 and watcher.violations == []
    latest_is_complete(root)

    # no version dir lost: each is on disk or was pruned exactly once by a publish
    created = {r["name"] for r in records}
    pruned = [name for r in records for name in r["pruned"]]
    on_disk = {p.name for p in store_layout.list_versions(root)}
    assert len(created) == len(records)  # unique names
    assert len(pruned) == len(set(pruned))
    assert on_disk | set(pruned) == created and not on_disk & set(pruned)
    assert leftovers(root) == []

    # names sort by creation time: a version allocated strictly after another sorts after it
    for a, b in combinations(records, 2):
        first, second = (a, b) if a["after"] < b["before"] else (b, a)
        if first["after"] < second["before"]:
            assert first["name"] < second["name"], (first, second)
    assert [p.name for p in store_layout.list_versions(root)] == sorted(on_disk)


def published(root: Path, keep: int = 2) -> Path:
    """One complete, published version built in this process."""
    tmp, final = store.new_version_dir(root, os.urandom(32).hex())
    (tmp / "data.bin").write_bytes(payload(final.name))
    digests = np.arange(4, dtype=np.uint64)
    version = store.finalize_version(tmp, final, final.name, digests, {"efficiency": 0.9})
    store.publish(root, version, keep)
    return version


KILL_POINTS = {
    # point: whether `latest` names the new version after the kill
    "store.version.staged": False,
    "store.version.renamed": False,
    "store.publish.staged": False,
    "store.publish.renamed": True,
    "store.prune.trashed": True,
}


def test_sigkill_at_each_store_step_leaves_latest_intact_and_next_run_cleans(
    tmp_path: Path,
) -> None:
    for point, moved in KILL_POINTS.items():
        root = tmp_path / point
        first, second = published(root), published(root)  # keep_previous=0 below prunes `first`
        killed = run_worker("build", root, 0, fault=f"{point}=kill")
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        target = latest_is_complete(root)
        assert (target != second) is moved, point
        assert leftovers(root), f"{point}: the kill left nothing to clean, so nothing was tested"

        after = published(root, keep=1)  # the next run on the same store
        assert latest_is_complete(root) == after
        assert leftovers(root) == [], point
        kept = {p.name for p in store_layout.list_versions(root)}
        assert first.name not in kept  # pruned as asked


def test_cleanup_never_touches_a_live_concurrent_build(tmp_path: Path) -> None:
    root = tmp_path / "store"
    published(root)
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "hold", str(root)],
        env=worker_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        building = Path(holder.stdout.readline().strip())
        assert TEMP_RE.match(building.name) and building.is_dir()
        mine = published(root, keep=0)  # cleans dead leftovers and prunes: must spare the build
        assert building.is_dir() and (building / "data.bin").stat().st_size == PAYLOAD_BYTES
        out, _ = holder.communicate("go\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0
    theirs = out.strip().splitlines()[-1]
    assert theirs < mine.name  # its name was allocated first, so it sorts first
    assert latest_is_complete(root).name == theirs and mine.is_dir()  # mine: newer, kept
    assert leftovers(root) == []
