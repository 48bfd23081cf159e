"""A real process that builds and publishes versions into a store (driven by tests/faults).

``python store_worker.py churn ROOT N KEEP LOG``: N times: allocate, write a payload, finalize,
publish with keep_previous=KEEP; one JSON line per version in LOG (name, allocation window in
CLOCK_MONOTONIC ns, what the publish pruned).
``python store_worker.py build ROOT KEEP``: one version, published (``PACKFT_FAULT`` kills it).
``python store_worker.py hold ROOT``: allocate and write, print the build dir, wait for a line on
stdin, then finalize and publish (a live build that runs concurrently with others).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from packft.dataset import store

PAYLOAD_BYTES = 64 * 1024


def payload(name: str) -> bytes:
    """The content every version's ``data.bin`` must have (checked by the readers)."""
    seed = name.encode()
    return (seed * (PAYLOAD_BYTES // len(seed) + 1))[:PAYLOAD_BYTES]


def start(root: Path) -> tuple[Path, Path, str, int]:
    fingerprint = os.urandom(32).hex()  # random: a hash order would differ from the time order
    before = time.monotonic_ns()
    tmp, final = store.new_version_dir(root, fingerprint)
    (tmp / "data.bin").write_bytes(payload(final.name))
    return tmp, final, fingerprint, before


def finish(tmp: Path, final: Path, fingerprint: str) -> Path:
    digests = np.random.default_rng().integers(0, 2**63, 8, dtype=np.uint64)
    info = {"efficiency": 0.9, "payload": PAYLOAD_BYTES}
    return store.finalize_version(tmp, final, fingerprint, np.sort(digests), info)


def churn(root: Path, n: int, keep: int, log: Path) -> None:
    with log.open("a") as out:
        for _ in range(n):
            before = time.monotonic_ns()
            tmp, final, fingerprint, _ = start(root)
            allocated = time.monotonic_ns()
            version = finish(tmp, final, fingerprint)
            result = store.publish(root, version, keep)
            record = {"name": version.name, "before": before, "after": allocated,
                      "pruned": result.pruned, "pid": os.getpid()}  # fmt: skip
            out.write(json.dumps(record) + "\n")
            out.flush()


def main(argv: list[str]) -> None:
    mode, root = argv[0], Path(argv[1])
    if mode == "churn":
        churn(root, int(argv[2]), int(argv[3]), Path(argv[4]))
    elif mode == "build":
        tmp, final, fingerprint, _ = start(root)
        store.publish(root, finish(tmp, final, fingerprint), int(argv[2]))
    elif mode == "hold":
        tmp, final, fingerprint, _ = start(root)
        print(tmp, flush=True)
        sys.stdin.readline()
        version = finish(tmp, final, fingerprint)
        print(store.publish(root, version, 1).current, flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
