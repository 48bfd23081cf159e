"""The flows' command lines end a config or data error with one line, not a traceback.

``python -m flows.pack_dataset`` / ``flows.pipeline`` run in their own processes: config errors
exit 2 before any flow starts; a data error inside the flow (here the quality gate, on an
ephemeral Prefect server) exits 1 with ``python -m flows.pack_dataset: error: ...`` as the last
line and no traceback anywhere in the output (Prefect's own state lines stay);
``PACKFT_DEBUG=1`` brings the tracebacks back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tests" / "assets" / "llama2-tokenizer"

pytestmark = pytest.mark.slow


def run_flow(
    module: str, *args: str, cwd: Path, debug: bool = False
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
               os.environ.get("PYTHONPATH")])), PREFECT_HOME=str(cwd / "prefect-home"))  # fmt: skip
    env.pop("PACKFT_DEBUG", None)
    if debug:
        env["PACKFT_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_config_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("preprocess: [unclosed\n")
    wrong = {"preprocess": {"input": "x", "prompt_type": "zz"}}
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    cases = [
        ("flows.pack_dataset", [str(tmp_path / "none.yaml")], "config file"),
        ("flows.pack_dataset", [str(tmp_path / "bad.yaml")], "bad.yaml: not valid YAML at line 2"),
        (
            "flows.pack_dataset",
            [str(tmp_path / "wrong.yaml")],
            "problem(s) in the PackDatasetConfig",
        ),
        ("flows.pack_dataset", ["--seq-length", "abc"], "invalid int value"),
        ("flows.pipeline", [str(tmp_path / "none.yaml")], "config file"),
    ]
    for module, args, text in cases:
        run = run_flow(module, *args, cwd=tmp_path)
        assert (run.returncode, len(lines(run.stderr))) == (2, 1), (module, args, run.stderr)
        assert lines(run.stderr)[0].startswith(f"python -m {module}: error: ")
        assert text in run.stderr and "Traceback" not in run.stderr, run.stderr
    debug = run_flow("flows.pack_dataset", str(tmp_path / "wrong.yaml"), cwd=tmp_path, debug=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_data_error_inside_the_flow_is_one_line_with_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "mostly-bad.jsonl"
    rows = [{"instruction": "q", "input": "", "output": "a"}]
    rows += [{"instruction": "q", "input": "", "output": ""}] * 3
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "out").mkdir()
    args = ["--input", str(data), "--tokenizer-name-or-path", str(TOKENIZER), "--output-prefix",
            str(tmp_path / "out" / "ds"), "--prompt-type", "llama2", "--seq-length", "64",
            "--pack", "--work-dir", str(tmp_path / "work"), "--no-tracking"]  # fmt: skip
    run = run_flow("flows.pack_dataset", *args, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    ours = [line for line in lines(run.stderr) if line.startswith("python -m flows.pack_dataset")]
    assert len(ours) == 1, run.stderr  # one line of ours; Prefect's temporary server may follow
    assert ours[0].startswith("python -m flows.pack_dataset: error: quality gate: only 1 of 4")
    assert "Finished in state Failed" in output  # Prefect's own state lines are still there
    assert (
        not (tmp_path / "out" / "versions").exists() and not (tmp_path / "out" / "latest").exists()
    )
    debug = run_flow("flows.pack_dataset", *args, cwd=tmp_path, debug=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
