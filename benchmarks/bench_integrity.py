"""What integrity costs: checksums while writing a dataset, and checking it before use; prints JSON.

Input: N Alpaca records made distinct as in bench_preprocess.py, tokenized and planned once (seed
command: llama2, ``--pack --append-eod --seq-length 4096``). Then, interleaved ``--repeats`` times:

* ``write``: :func:`packft.preprocess.steps.write` as shipped (sha256 streamed over every byte
  written, fingerprints, fsyncs, journal);
* ``write_no_hash``: the same with the streaming sha256 replaced by a no-op (the checksum's share);
* ``write_landed`` (with ``--baseline DIR``, an export of an older commit, e.g.
  ``git archive f396660 | tar -x -C DIR``): that commit's write step, in a child process;

the streaming sha256's own cost is bounded by ``sha256_of_dataset_files`` (hashing the written
files from the page cache); and the reader side on the written set: ``open_verified`` (sizes, fingerprints, headers, row
counts: what ``packft train`` and ``packft inspect`` do), ``open_verified(full=True)``
(``inspect --verify``: sha256 of every byte, every id < vocab) and ``check_seal`` of the shard
(what a cache reuse costs). Medians in seconds.

    .venv/bin/python benchmarks/bench_integrity.py [--records 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import TOKENIZER, make_input  # noqa: E402

LANDED_WRITE = """
import sys, time
from pathlib import Path
from packft.preprocess import PreprocessConfig, write
cfg = PreprocessConfig.model_validate_json(sys.argv[1])
start = time.perf_counter()
write(cfg, [Path(sys.argv[2])], Path(sys.argv[3]))
print(time.perf_counter() - start)
"""


class _NoHash:
    def update(self, data: object) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64


def files_of(prefix: Path) -> list[str]:
    return list(json.loads(Path(f"{prefix}.packft.json").read_text())["integrity"]["files"])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="source tree of an old commit")
    args = parser.parse_args()

    from packft.core import digest
    from packft.core.digest import file_sha256
    from packft.dataset.integrity import check_seal, open_verified
    from packft.preprocess.config import PreprocessConfig
    from packft.preprocess.steps import plan, tokenize_input, write

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_input(root, args.records, unique=True)
        (root / "out").mkdir()
        cfg = PreprocessConfig(input=str(data), tokenizer_name_or_path=str(TOKENIZER),
                               output_prefix=str(root / "out" / "alpaca"), prompt_type="llama2",
                               pack=True, append_eod=True, seq_length=4096,
                               cache_dir=str(root / "cache"))  # fmt: skip
        shard = tokenize_input(data, cfg)
        plan_file = plan(cfg, [shard])
        times: dict[str, list[float]] = {"write": [], "write_no_hash": [], "write_landed": []}
        hashing_init = digest.HashingWriter.__init__

        def no_hash_init(self, *a, **k) -> None:
            hashing_init(self, *a, **k)
            self._hash = _NoHash()

        for _ in range(args.repeats):
            times["write"].append(timed(lambda: write(cfg, [shard], plan_file)))
            digest.HashingWriter.__init__ = no_hash_init
            try:
                times["write_no_hash"].append(timed(lambda: write(cfg, [shard], plan_file)))
            finally:
                digest.HashingWriter.__init__ = hashing_init
            if args.baseline is not None:
                landed = cfg.model_copy(update={"output_prefix": str(root / "out" / "landed")})
                out = subprocess.run(
                    [sys.executable, "-c", LANDED_WRITE, landed.model_dump_json(), str(shard),
                     str(plan_file)],
                    env={"PYTHONPATH": str(args.baseline.resolve())}, capture_output=True,
                    text=True, check=True,
                )  # fmt: skip
                times["write_landed"].append(float(out.stdout.strip().splitlines()[-1]))
        write(cfg, [shard], plan_file)
        prefix = cfg.prefix
        reader = {
            "open_verified": timed(lambda: open_verified(prefix)),
            "open_verified_full": timed(lambda: open_verified(prefix, full=True)),
            "check_seal_shard": timed(lambda: check_seal(shard)),
            "sha256_of_dataset_files": timed(
                lambda: [file_sha256(prefix.parent / n) for n in files_of(prefix)]
            ),
        }
        sidecar = json.loads(Path(f"{prefix}.packft.json").read_text())
        dataset_bytes = sum(f["size"] for f in sidecar["integrity"]["files"].values())
        result = {
            "records": args.records,
            "rows": sidecar["integrity"]["rows"],
            "dataset_mb": round(dataset_bytes / 2**20, 1),
            "shard_mb": round(shard.stat().st_size / 2**20, 1),
            **{k: round(statistics.median(v), 3) for k, v in times.items() if v},
            **{k: round(v, 3) for k, v in reader.items()},
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
