"""Planner speed and tightness on Alpaca-like lengths; prints one JSON object.

Lengths are drawn (seeded, with replacement) from the real Alpaca demo file's lengths under the
llama2 template with the Llama-2 tokenizer (tests/assets) (mean ~175 tokens), seq_length 4096 (capacity
4095). For 1M and 10M lengths it reports seconds, rows, the lower bound ceil(tokens/capacity) and
efficiency (tokens / (rows * seq_length)) for bfd (default), ffd, knapsack and sequential, plus a
pure-Python greedy knapsack (MindSpeed-LLM's algorithm: sorted list, bisect, pop) on 1M in the
same process. JIT cost is reported honestly: ``cold_process_bfd_*`` time import + JIT + planning
the largest size with bfd in a fresh process, with an empty numba cache (first run ever: compile)
and with numba's on-disk cache (every later run); the per-size runs are warm.

``plan_big`` (issue 14, goal 2): a fresh process draws ``--big-n`` (default 100M) clipped
lognormal lengths into an int32 array (in chunks, so drawing them costs no memory peak) and plans
them with bfd; it reports seconds, the process's peak RSS (``ru_maxrss``, everything included)
and the bytes per sample planning added, against the goal (< 30 s, < 3 GiB).

    .venv/bin/python benchmarks/bench_pack.py [--sizes 1000000 10000000] [--no-baseline]
    .venv/bin/python benchmarks/bench_pack.py --quick      # 1M sizes, 10M big plan, no baseline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the baseline is the tests' transcription of MindSpeed's packer

from tests.helpers.mindspeed_reference import mindspeed_knapsack  # noqa: E402

ASSETS = REPO / "tests" / "assets"  # see its MANIFEST.md
SEQ_LENGTH = 4096


def alpaca_lengths() -> np.ndarray:
    """Token counts of the real Alpaca demo records under the llama2 template."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ASSETS / "llama2-tokenizer/tokenizer.json"))
    records = json.loads((ASSETS / "alpaca/llamafactory_alpaca_en_demo.json").read_text())
    texts = []
    for r in records:
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        texts.append(f"[INST] {user} [/INST] {r['output']}")
    enc = tok.encode_batch(texts, add_special_tokens=False)
    return np.array([len(e.ids) + 3 for e in enc], dtype=np.int32)  # <s>, </s>, eod


def cold_plan_seconds(lengths_file: str, cache_dir: str | None) -> float:
    """Fresh process: import packft.pack and plan the saved lengths with bfd, JIT included."""
    env = dict(os.environ)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = (
        "import sys, time, numpy as np; lengths = np.load(sys.argv[1]); t = time.perf_counter(); "
        "from packft.pack import plan_packing; plan_packing(lengths, 4095, 'bfd'); "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, lengths_file], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return float(out.stdout.strip())


def _plan_big_child(n: int) -> None:
    """Child body: n synthetic lengths (int32) planned with bfd; prints JSON."""
    import resource

    from packft.pack.plan import plan_packing, warmup

    warmup()  # numba's cached kernels (JIT on the first run ever): not part of the planning
    lengths = np.empty(n, np.int32)
    rng = np.random.default_rng(2)
    for at in range(0, n, 10_000_000):
        k = min(10_000_000, n - at)
        lengths[at : at + k] = np.clip(rng.lognormal(np.log(117), 0.95, k), 4, 760)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t, cpu = time.perf_counter(), time.process_time()
    plan = plan_packing(lengths, SEQ_LENGTH - 1, "bfd")
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = int(lengths.sum(dtype=np.int64))
    print(json.dumps({
        "n": n, "algorithm": "bfd", "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2), "rows": plan.num_rows,
        "lower_bound": -(-tokens // (SEQ_LENGTH - 1)),
        "peak_rss_gib": round(peak / 2**30, 3),
        "rss_before_planning_gib": round(before / 2**30, 3),
        "planning_bytes_per_sample": round((peak - before) / n, 1),
        "plan_bytes_per_sample": round((plan.items.nbytes + plan.lengths.nbytes) / n, 1),
        "goal_under_30s": seconds < 30, "goal_under_3gib": peak < 3 * 2**30,
    }))  # fmt: skip


def plan_big(n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--plan-big-child", str(n)], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return {"load1_before": LOAD_BEFORE, **json.loads(out.stdout)}


LOAD_BEFORE: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--baseline-size", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--big-n", type=int, default=None, help="default 100M (quick 10M); 0: off")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plan-big-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_big_child is not None:
        _plan_big_child(args.plan_big_child)
        return
    if args.quick:
        args.sizes, args.no_baseline = [1_000_000], True
    big_n = args.big_n if args.big_n is not None else (10_000_000 if args.quick else 100_000_000)

    capacity = SEQ_LENGTH - 1
    source = alpaca_lengths()
    with tempfile.TemporaryDirectory() as tmp:
        lengths_file = str(Path(tmp) / "lengths.npy")
        np.save(lengths_file, np.random.default_rng(0).choice(source, size=max(args.sizes)))
        cold_empty = cold_plan_seconds(lengths_file, str(Path(tmp) / "numba-cache"))
        cold_cached = cold_plan_seconds(lengths_file, None)

    from packft.pack.plan import lower_bound_rows, plan_packing, warmup

    warmup()
    result: dict = {
        "seq_length": SEQ_LENGTH,
        "length_source": "llamafactory_alpaca_en_demo.json, llama2 template, Llama-2 tokenizer",
        "source_mean": round(float(source.mean()), 1),
        "source_median": float(np.median(source)),
        "source_p99": float(np.percentile(source, 99)),
        "source_max": int(source.max()),
        "load_avg_start": os.getloadavg(),
        "cold_process_bfd_n": max(args.sizes),
        "cold_process_bfd_empty_numba_cache_s": round(cold_empty, 2),
        "cold_process_bfd_cached_kernels_s": round(cold_cached, 2),
        "runs": [],
    }
    rng = np.random.default_rng(0)
    for n in args.sizes:
        lengths = rng.choice(source, size=n, replace=True)
        tokens = int(lengths.sum(dtype=np.int64))
        bound = lower_bound_rows(tokens, capacity)
        for algorithm in ("bfd", "ffd", "knapsack", "sequential"):
            t = time.perf_counter()
            plan = plan_packing(lengths, capacity, algorithm)
            seconds = time.perf_counter() - t
            result["runs"].append(
                {
                    "n": n,
                    "algorithm": algorithm,
                    "seconds": round(seconds, 3),
                    "rows": plan.num_rows,
                    "lower_bound": bound,
                    "excess_rows_pct": round(100 * (plan.num_rows / bound - 1), 4),
                    "efficiency": round(tokens / (plan.num_rows * SEQ_LENGTH), 5),
                }
            )
        t = time.perf_counter()
        plan = plan_packing(lengths, capacity, "bfd", seed=0, mix=100_000)
        result["runs"].append(
            {
                "n": n,
                "algorithm": "bfd seed=0 mix=100000",
                "seconds": round(time.perf_counter() - t, 3),
                "rows": plan.num_rows,
                "lower_bound": bound,
                "excess_rows_pct": round(100 * (plan.num_rows / bound - 1), 4),
                "efficiency": round(tokens / (plan.num_rows * SEQ_LENGTH), 5),
            }
        )
        print(json.dumps(result["runs"][-5:]), file=sys.stderr)
    # the summary figures (mean ~175, median ~117, max ~760) as a clipped lognormal
    spec = np.clip(np.random.default_rng(1).lognormal(np.log(117), 0.95, 10_000_000), 4, 760)
    spec = spec.astype(np.int32)
    tokens = int(spec.sum(dtype=np.int64))
    bound = lower_bound_rows(tokens, capacity)
    result["spec_lognormal"] = {
        "n": len(spec), "mean": round(float(spec.mean()), 1), "median": float(np.median(spec)),
        "p99": float(np.percentile(spec, 99)), "max": int(spec.max()), "runs": [],
    }  # fmt: skip
    for algorithm in ("bfd", "knapsack"):
        t = time.perf_counter()
        plan = plan_packing(spec, capacity, algorithm)
        result["spec_lognormal"]["runs"].append(
            {
                "algorithm": algorithm,
                "seconds": round(time.perf_counter() - t, 3),
                "rows": plan.num_rows,
                "lower_bound": bound,
                "excess_rows_pct": round(100 * (plan.num_rows / bound - 1), 4),
                "efficiency": round(tokens / (plan.num_rows * SEQ_LENGTH), 5),
            }
        )
    if not args.no_baseline:
        n = args.baseline_size
        lengths = np.random.default_rng(0).choice(source, size=n, replace=True)
        tokens = int(lengths.sum(dtype=np.int64))
        listed = lengths.tolist()
        t = time.perf_counter()
        rows = mindspeed_knapsack(listed, capacity)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        ours = plan_packing(lengths, capacity, "knapsack")
        ours_s = time.perf_counter() - t
        same = [list(map(int, ours.row(r)[0])) for r in range(ours.num_rows)] == rows
        result["python_knapsack_baseline"] = {
            "n": n,
            "seconds": round(seconds, 3),
            "rows": len(rows),
            "lower_bound": lower_bound_rows(tokens, capacity),
            "efficiency": round(tokens / (len(rows) * SEQ_LENGTH), 5),
            "packft_knapsack_seconds": round(ours_s, 3),
            "packft_knapsack_identical_rows": same,
            "speedup": round(seconds / ours_s, 1),
        }
    if big_n:
        global LOAD_BEFORE
        LOAD_BEFORE = round(os.getloadavg()[0], 2)
        result["plan_big"] = plan_big(big_n)
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
