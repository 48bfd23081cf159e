"""benchmarks/gpu_check.py runs: `--tiny` on CPU as the one command a GPU owner will run (same
code path: attention check, bench_train modes, recomputation), and prints the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_on_cpu_and_reports_every_figure():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["dtype"] == "fp32" and result["passed"] is True
    sdpa = result["attention"]["sdpa"]
    assert sdpa["ok"] and sdpa["rel_diff"] <= result["pass_tolerance"] == 1e-5
    assert sdpa["loss_packed"] > 0 and sdpa["tolerance"] <= 1e-5
    modes = result["bench"]["modes"]
    assert set(modes) == {"padded", "packed_isolated", "packed_naive",
                          "packed_isolated_recompute_full"}  # fmt: skip
    assert all(m["tokens_per_s"] > 0 for m in modes.values())
    assert (
        modes["packed_isolated"]["micro_batches_per_step"]
        == modes["padded"]["micro_batches_per_step"]
    )
    assert set(result["bench"]["targets_met"]) == {"isolated_vs_padded>=2.0",
                                                   "isolated_vs_naive>=0.95"}  # fmt: skip
    for granularity in ("none", "full"):
        check = result["memory_plan"][granularity]
        assert check["measured_peak_bytes"] > 0 and check["within_25_percent"], check
