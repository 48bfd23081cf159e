"""End-to-end `packft preprocess` (the seed's command) vs a tokenizer floor; prints JSON.

Input: the Alpaca demo records of tests/assets repeated to N records (a JSON list, like the original
file). For each run the seed's command line (llama2 template, ``--pack --append-eod
--seq-length 4096``, ``--overwrite-cache``, a fresh cache dir) runs in a fresh process; we
measure wall seconds and peak RSS (the main process's ``ru_maxrss`` and the sampled sum over its
process tree). The floor is one batched encode of the same records' templated texts with the
fast tokenizer's Rust backend (all cores), timed in a child process after loading the tokenizer,
measured right before each packft run (the machine is shared, so both see the same load).
Also printed: packft's own per-step seconds (fetch/tokenize/plan/write) from its sidecar run.

    .venv/bin/python benchmarks/bench_preprocess.py [--records 100000] [--rss-records 400000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"  # see its MANIFEST.md
ALPACA = ASSETS / "alpaca/llamafactory_alpaca_en_demo.json"
TOKENIZER = ASSETS / "llama2-tokenizer"
PACKFT = Path(sys.executable).with_name("packft")


def record(i: int, records: list[dict], unique: bool) -> dict:
    """Record i of the repeated file; ``unique`` makes every instruction and output distinct
    (" #i") so no tokenizer can reuse the encoding of an identical string within a batch."""
    r = dict(records[i % len(records)])
    if unique:
        r["instruction"] = f"{r['instruction']} #{i}"
        r["output"] = f"{r['output']} #{i}"
    return r


def make_input(directory: Path, n: int, unique: bool = False) -> Path:
    records = json.loads(ALPACA.read_text())
    path = directory / f"alpaca_{n}{'_unique' if unique else ''}.json"
    with open(path, "w") as out:
        out.write("[\n")
        for i in range(n):
            out.write(json.dumps(record(i, records, unique), ensure_ascii=False))
            out.write(",\n" if i + 1 < n else "\n")
        out.write("]\n")
    return path


def _floor(n: int, unique: bool) -> None:
    """Child process body: time one batched encode; print seconds and tokens as JSON."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    records = json.loads(ALPACA.read_text())
    texts = []
    for i in range(n):
        r = record(i, records, unique)
        user = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        texts.append(f"[INST] {user} [/INST] {r['output']}")
    start = time.perf_counter()
    enc = tok.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": sum(len(e.ids) for e in enc)}))


def floor_seconds(n: int, unique: bool = False) -> tuple[float, int]:
    """One batched Rust encode of the templated texts (what any tokenizer-bound tool must pay),
    in a child process so this harness stays small (a fork inherits its RSS)."""
    out = subprocess.run(
        [sys.executable, __file__, "--floor-child", str(n), *(["--unique"] if unique else [])],
        capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    return data["seconds"], data["tokens"]


def run_packft(data: Path, work: Path, workers: int) -> dict:
    prefix = work / f"out_w{workers}_{data.stem}"
    cmd = [
        str(PACKFT), "preprocess", "--input", str(data),
        "--tokenizer-name-or-path", str(TOKENIZER), "--output-prefix", str(prefix),
        "--workers", str(workers), "--log-interval", "1000",
        "--tokenizer-type", "PretrainedFromHF", "--overwrite-cache",
        "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "llama2",
        "--pack", "--append-eod", "--seq-length", "4096",
        "--map-keys", '{"prompt":"instruction","query":"input","response":"output"}',
        "--cache-dir", str(work / f"cache_w{workers}_{data.stem}"),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak_tree = max(peak_tree, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"packft failed:\n{err[-3000:]}")
    side = json.loads(Path(f"{prefix}.packft.json").read_text())["stats"]
    steps = [json.loads(line[8:]) for line in err.splitlines() if line.startswith("timings: ")]
    return {
        "workers": workers,
        "records": side["samples_in"],
        "seconds": round(seconds, 2),
        "peak_rss_main_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_rss_tree_mib": round(peak_tree / 2**20, 1),
        "tokens": side["total_tokens"],
        "rows": side["rows"],
        "efficiency": round(side["efficiency"], 5),
        "step_seconds": steps[-1] if steps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rss-records", type=int, default=400_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--unique", action="store_true", help="make every record distinct")
    parser.add_argument("--floor-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child is not None:
        _floor(args.floor_child, args.unique)
        return
    result: dict = {"cpus": os.cpu_count(), "records": args.records, "unique": args.unique}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        data = make_input(work, args.records, args.unique)
        result["runs"] = []
        for workers in args.workers:
            # the floor right before each run, so both see the same machine load
            floor, tokens = floor_seconds(args.records, args.unique)
            run = run_packft(data, work, workers)
            run["floor_seconds"] = round(floor, 2)
            run["floor_tokens"] = tokens
            run["x_floor"] = round(run["seconds"] / floor, 2)
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
        if args.rss_records:
            big = make_input(work, args.rss_records, args.unique)
            run = run_packft(big, work, max(args.workers))
            result["rss_scaling"] = {
                str(args.records): result["runs"][-1]["peak_rss_tree_mib"],
                str(args.rss_records): run["peak_rss_tree_mib"],
                "large_run": run,
            }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
