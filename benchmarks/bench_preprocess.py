"""End-to-end `packft preprocess` (the seed's command) vs the Rust encode floor and a TRL script.

Prints ONE JSON object with the issue-14 goal figures, every ratio measured in one run:

* ``floor``: one batched ``encode_batch_fast`` of the same records' templated texts with the
  fast tokenizer's Rust backend (all cores), after loading the tokenizer, in a child process.
* ``packft_wN``: the seed's command line (llama2, ``--pack --append-eod --seq-length 4096``,
  ``--overwrite-cache``, a fresh cache dir) with ``--workers N``, in a fresh process.
* ``trl``: :mod:`benchmarks.trl_sft_script` (``datasets`` map + ``trl.pack_dataset``, bfd), the
  same job as a TRL user writes it (needs the ``bench`` extra; skipped with a note if absent).

Runs are interleaved (floor, packft per worker count, trl) for ``--rounds`` rounds, so all see
the same machine load; medians per tool and the median of the per-round ratios are reported,
with the 1-minute load average before every run. Each run's wall seconds, peak RSS of the main
process (``ru_maxrss``) and of its whole process tree (sampled every 50 ms) are recorded.
``goals`` says whether packft is within 1.3x the floor and at least 2x faster than TRL for
every worker count, and whether peak RSS at ``--rss-records`` is within 10% of that at
``--records``. ``--data sharegpt`` runs the same on the ShareGPT demos (multi-turn, tools) and
reports samples/s and tokens/s (the TRL script is Alpaca-only there).

Input: the demo records of tests/assets repeated to N records (a JSON list like the original
file); ``--unique`` makes every record distinct (no repeated string helps anyone).

    .venv/bin/python benchmarks/bench_preprocess.py            # 100k x 3 rounds + 1.6M RSS run
    .venv/bin/python benchmarks/bench_preprocess.py --quick    # 20k x 1 round + 100k RSS run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "tests" / "assets"  # see its MANIFEST.md
ALPACA = [ASSETS / "alpaca/llamafactory_alpaca_en_demo.json"]
SHAREGPT = [
    ASSETS / "sharegpt/llamafactory_glaive_toolcall_en_demo.json",
    ASSETS / "sharegpt/fastchat_dummy_conversation_with_system.json",
]
TOKENIZER = ASSETS / "llama2-tokenizer"
PACKFT = Path(sys.executable).with_name("packft")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def source_records(data: str) -> list[dict]:
    return [
        r
        for path in (ALPACA if data == "alpaca" else SHAREGPT)
        for r in json.loads(path.read_text())
    ]


def record(i: int, records: list[dict], unique: bool, data: str) -> dict:
    """Record i of the repeated file; ``unique`` appends " #i" to the first user text and the
    answer so no tool can reuse the encoding of an identical string."""
    r = json.loads(json.dumps(records[i % len(records)]))
    if unique and data == "alpaca":
        r["instruction"] = f"{r['instruction']} #{i}"
        r["output"] = f"{r['output']} #{i}"
    elif unique:
        r["conversations"][0]["value"] += f" #{i}"
    return r


def make_input(directory: Path, n: int, unique: bool = False, data: str = "alpaca") -> Path:
    records = source_records(data)
    path = directory / f"{data}_{n}{'_unique' if unique else ''}.json"
    with open(path, "w") as out:
        out.write("[\n")
        for i in range(n):
            out.write(json.dumps(record(i, records, unique, data), ensure_ascii=False))
            out.write(",\n" if i + 1 < n else "\n")
        out.write("]\n")
    return path


def templated_texts(n: int, unique: bool, data: str) -> list[str]:
    """The llama2-templated text of every record (what any tokenizer-bound tool must encode)."""
    records = source_records(data)
    texts = []
    for i in range(n):
        r = record(i, records, unique, data)
        if data == "alpaca":
            user = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
            texts.append(f"[INST] {user} [/INST] {r['output']}")
        else:
            parts = [r.get("system") or "", r.get("tools") or ""]
            parts += [f"[INST] {t['value']} [/INST]" if k % 2 == 0 else t["value"]
                      for k, t in enumerate(r["conversations"])]  # fmt: skip
            texts.append(" ".join(p for p in parts if p))
    return texts


def _floor(n: int, unique: bool, data: str) -> None:
    """Child process body: time one batched encode; print seconds and tokens as JSON."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    texts = templated_texts(n, unique, data)
    start = time.perf_counter()
    enc = tok.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": sum(len(e.ids) for e in enc)}))


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, main ``ru_maxrss`` and the sampled peak RSS of its tree."""
    load = load1()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, env=env)
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
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read().decode(), err_file.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_main_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_rss_tree_mib": round(peak_tree / 2**20, 1),
        "load1_before": load,
        "stdout": out,
        "stderr": err,
    }


def run_floor(n: int, unique: bool, data: str) -> dict:
    cmd = [sys.executable, __file__, "--floor-child", str(n), "--data", data]
    run = measure(cmd + (["--unique"] if unique else []))
    child = json.loads(run.pop("stdout"))
    run.pop("stderr")
    return {**run, "encode_seconds": round(child["seconds"], 2), "tokens": child["tokens"]}


def run_packft(data: Path, work: Path, workers: int, fmt: str, cached: bool = False) -> dict:
    """The seed's command; ``cached`` re-runs it reusing the tokenized shard (no --overwrite-cache)."""
    prefix = work / f"out_w{workers}_{data.stem}"
    handler = (
        "AlpacaStyleInstructionHandler" if fmt == "alpaca" else "SharegptStyleInstructionHandler"
    )
    cmd = [
        str(PACKFT), "preprocess", "--input", str(data),
        "--tokenizer-name-or-path", str(TOKENIZER), "--output-prefix", str(prefix),
        "--workers", str(workers), "--log-interval", "1000",
        "--tokenizer-type", "PretrainedFromHF",
        *([] if cached else ["--overwrite-cache"]), "--handler-name", handler, "--prompt-type", "llama2",
        "--pack", "--append-eod", "--seq-length", "4096",
        "--cache-dir", str(work / f"cache_w{workers}_{data.stem}"),
    ]  # fmt: skip
    if fmt == "alpaca":
        cmd += ["--map-keys", '{"prompt":"instruction","query":"input","response":"output"}']
    run = measure(cmd)
    err = run.pop("stderr")
    run.pop("stdout")
    side = json.loads(Path(f"{prefix}.packft.json").read_text())["stats"]
    steps = [json.loads(line[8:]) for line in err.splitlines() if line.startswith("timings: ")]
    chosen = [line for line in err.splitlines() if "tokenize workers:" in line]
    return {
        **run,
        "workers": workers,
        "chosen": chosen[-1].split("tokenize workers:", 1)[1].strip() if chosen else None,
        "records": side["samples_in"],
        "tokens": side["total_tokens"],
        "rows": side["rows"],
        "lower_bound_rows": side.get("lower_bound_rows"),
        "efficiency": round(side["efficiency"], 5),
        "samples_per_s": round(side["samples_in"] / run["seconds"], 1),
        "tokens_per_s": round(side["total_tokens"] / run["seconds"]),
        "step_seconds": steps[-1] if steps else None,
    }


def run_trl(data: Path, work: Path) -> dict:
    out = work / f"trl_{data.stem}"
    cmd = [sys.executable, str(HERE / "trl_sft_script.py"), str(data), str(TOKENIZER), str(out)]
    run = measure(cmd, env={**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    line = [x for x in run.pop("stdout").splitlines() if x.startswith("{")][-1]
    run.pop("stderr")
    return {**run, **json.loads(line)}


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k records, 1 round, 100k RSS run")
    parser.add_argument("--data", choices=("alpaca", "sharegpt"), default="alpaca")
    parser.add_argument("--records", type=int, default=None, help="default 100000 (quick 20000)")
    parser.add_argument("--rss-records", type=int, default=None,
                        help="second, larger run for RSS flatness (default 1600000, quick 100000; 0: off)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--unique", action="store_true", help="make every record distinct")
    parser.add_argument("--floor-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child is not None:
        _floor(args.floor_child, args.unique, args.data)
        return
    records = args.records or (20_000 if args.quick else 100_000)
    rss_records = args.rss_records if args.rss_records is not None else (
        100_000 if args.quick else 1_600_000)  # fmt: skip
    rounds = args.rounds or (1 if args.quick else 3)
    trl = not args.no_trl and args.data == "alpaca" and importlib.util.find_spec("trl") is not None
    result: dict = {
        "cpus": os.cpu_count(), "data": args.data, "records": records, "unique": args.unique,
        "rounds": rounds, "load_avg_start": os.getloadavg(),
        "trl": trl or "skipped (no trl installed, --no-trl or ShareGPT data)",
    }  # fmt: skip
    runs: dict[str, list[dict]] = {"floor": [], "trl": []}
    runs.update({f"packft_w{w}": [] for w in args.workers})
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        data = make_input(work, records, args.unique, args.data)
        for _ in range(rounds):
            runs["floor"].append(run_floor(records, args.unique, args.data))
            for w in args.workers:
                runs[f"packft_w{w}"].append(run_packft(data, work, w, args.data))
            if trl:
                runs["trl"].append(run_trl(data, work))
            print(json.dumps({k: v[-1] for k, v in runs.items() if v}), file=sys.stderr)
        summary: dict = {}
        for name, rs in runs.items():
            if rs:
                summary[name] = {
                    "seconds_median": median(rs, "seconds"),
                    "peak_rss_tree_mib_median": median(rs, "peak_rss_tree_mib"),
                    "peak_rss_main_mib_median": median(rs, "peak_rss_main_mib"),
                    **({"encode_seconds_median": median(rs, "encode_seconds")} if name == "floor" else {}),
                }  # fmt: skip
        helps = [measure([str(PACKFT), "--help"])["seconds"] for _ in range(3)]
        w = args.workers[0]
        rerun = [run_packft(data, work, w, args.data, cached=True)["seconds"] for _ in range(3)]
        summary["startup"] = {
            "packft_help_seconds_median": statistics.median(helps),
            f"cached_rerun_w{w}_seconds_median": statistics.median(rerun),
            "load1": load1(),
        }
        goals: dict = {
            "help_under_1s": statistics.median(helps) < 1.0,
            "cached_rerun_under_1s": statistics.median(rerun) < 1.0,
        }
        for w in args.workers:
            pk = runs[f"packft_w{w}"]
            # against the encode call alone (not the floor child's start-up): the strict ratio
            x_floor = [
                p["seconds"] / f["encode_seconds"] for p, f in zip(pk, runs["floor"], strict=True)
            ]
            goals[f"packft_w{w}_over_floor"] = round(statistics.median(x_floor), 3)
            goals[f"packft_w{w}_within_1.3x_floor"] = goals[f"packft_w{w}_over_floor"] <= 1.3
            if trl:
                x_trl = [t["seconds"] / p["seconds"] for p, t in zip(pk, runs["trl"], strict=True)]
                goals[f"trl_over_packft_w{w}"] = round(statistics.median(x_trl), 3)
                goals[f"packft_w{w}_2x_faster_than_trl"] = goals[f"trl_over_packft_w{w}"] >= 2.0
        if rss_records:
            big = make_input(work, rss_records, args.unique, args.data)
            w = max(args.workers)
            large = run_packft(big, work, w, args.data)
            small = summary[f"packft_w{w}"]["peak_rss_tree_mib_median"]
            growth = large["peak_rss_tree_mib"] / small - 1
            result["rss_scaling"] = {
                "workers": w, str(records): small, str(rss_records): large["peak_rss_tree_mib"],
                "growth_pct": round(100 * growth, 1), "large_run": large,
            }  # fmt: skip
            goals["rss_within_10pct"] = growth <= 0.10
    result.update(
        {"summary": summary, "goals": goals, "runs": runs, "load_avg_end": os.getloadavg()}
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
