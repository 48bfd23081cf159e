"""Hostile and broken input through the real ``packft`` CLI, each in its own process.

Every failure class must end with exactly one line on stderr (no traceback) and the right exit
code (1 for data, 2 for usage/config), show a traceback with ``PACKFT_DEBUG=1``, and leave the
previous dataset byte-identical. Records that are merely hostile (200 MB long, 200k levels deep)
are rejected rows of a run that otherwise succeeds, in bounded memory (peak RSS of the packft
process measured with ``wait4``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tests" / "assets" / "llama2-tokenizer"
GOOD = [{"instruction": f"Say {i}", "input": "", "output": f"Answer {i}."} for i in range(3)]
HUGE_BYTES = 200 * 1024 * 1024
DEEP = 200_000
RSS_LIMIT = 2 * 1024**3


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, of the packft process (ru_maxrss from wait4)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


# A forked child starts from its parent's RSS high-water mark (Linux keeps the pre-exec peak), so
# a direct child of a pytest process that ran the model tests would report pytest's RSS. This
# small launcher forks and execs the module itself and reports that process's own peak.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_module(module: str, *args: str, cwd: Path, debug: bool = False) -> Run:
    """``python -m module args`` with this worktree first on the path; measures its peak RSS."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
               os.environ.get("PYTHONPATH")])), HF_HUB_OFFLINE="1")  # fmt: skip
    env.pop("PACKFT_DEBUG", None)
    env.pop("PACKFT_FAULT", None)
    if debug:
        env["PACKFT_DEBUG"] = "1"
    out, err, rss = (cwd / f".{module}.{name}" for name in ("out", "err", "rss"))
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(rss), module, *args], cwd=cwd,
                              env=env, stdout=stdout, stderr=stderr, check=False)  # fmt: skip
    return Run(proc.returncode, out.read_text(), err.read_text(), int(rss.read_text()) * 1024)


def preprocess_args(data: Path | str, prefix: Path, *extra: str) -> list[str]:
    return ["preprocess", "--input", str(data), "--tokenizer-name-or-path", str(TOKENIZER),
            "--output-prefix", str(prefix), "--prompt-type", "llama2", "--pack",
            "--seq-length", "64", "--cache-dir", str(prefix.parent / "cache"), *extra]  # fmt: skip


def dataset_digest(prefix: Path) -> dict[str, str]:
    """sha256 of every file of the dataset at ``prefix`` (data, sidecar, plan, rejects)."""
    files = sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))
    files += sorted(prefix.parent.glob(f"{prefix.name}_packed_*"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def write_hostile(path: Path, as_list: bool) -> None:
    """3 good records, one nested 200k levels deep, one with a 200 MB string (streamed out)."""
    deep = '{"instruction": "d", "output": "x", "extra": ' + "[" * DEEP + "]" * DEEP + "}"
    sep = ",\n" if as_list else "\n"
    chunk = "a" * (1 << 20)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[" if as_list else "")
        handle.write(json.dumps(GOOD[0]) + sep + deep + sep + json.dumps(GOOD[1]) + sep)
        handle.write('{"instruction": "')
        for _ in range(HUGE_BYTES // len(chunk)):
            handle.write(chunk)
        handle.write('", "input": "", "output": "y"}' + sep + json.dumps(GOOD[2]))
        handle.write("]" if as_list else "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def good_dataset(work: Path) -> Path:
    """A dataset built from a 200 MB-record JSON-lines file; later failures must not touch it."""
    data = work / "hostile.jsonl"
    write_hostile(data, as_list=False)
    prefix = work / "out" / "ds"
    prefix.parent.mkdir()
    run = run_module("packft", *preprocess_args(data, prefix), cwd=work)
    data.unlink()
    assert run.code == 0, run.stderr[-3000:]
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / 2**30:.2f} GiB"
    print(f"JSON lines, 200 MB record: peak RSS {run.max_rss / 2**20:.0f} MiB")
    stats = json.loads(Path(f"{prefix}.packft.json").read_text())["stats"]
    assert (stats["samples_in"], stats["valid"]) == (5, 3)
    assert stats["rejected"] == {"too_deep": 1, "too_large": 1}
    assert "rejected: too_large" in run.stderr and "rejected: too_deep" in run.stderr  # the table
    rejects = [
        json.loads(line) for line in Path(f"{prefix}.rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["row"], r["reason"]) for r in rejects] == [(1, "too_deep"), (3, "too_large")]
    assert max(map(len, Path(f"{prefix}.rejects.jsonl").read_text().splitlines())) < 2000
    return prefix


def test_200mb_record_in_a_json_list_is_one_rejected_row_in_bounded_memory(work: Path) -> None:
    data = work / "hostile.json"
    write_hostile(data, as_list=True)
    prefix = work / "list-out" / "ds"
    prefix.parent.mkdir()
    started = time.monotonic()
    run = run_module("packft", *preprocess_args(data, prefix), cwd=work)
    data.unlink()
    assert run.code == 0, run.stderr[-3000:]
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / 2**30:.2f} GiB"
    stats = json.loads(Path(f"{prefix}.packft.json").read_text())["stats"]
    assert stats["rejected"] == {"too_deep": 1, "too_large": 1} and stats["valid"] == 3
    print(f"json list, 200 MB record: {time.monotonic() - started:.1f} s, "
          f"peak RSS {run.max_rss / 2**20:.0f} MiB")  # fmt: skip


# ---------------------------------------------------------------------------- one line each


def _random_json(tmp: Path) -> Path:
    (tmp / "noise.json").write_bytes(random.Random(1).randbytes(2 * 1024 * 1024))
    return tmp / "noise.json"


def _gzip_json(tmp: Path) -> Path:
    (tmp / "d.json").write_bytes(gzip.compress(json.dumps(GOOD).encode()))
    return tmp / "d.json"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.jsonl").write_bytes(b"")
    return tmp / "empty.jsonl"


def _wrong_types_parquet(tmp: Path) -> Path:
    table = pa.table({"instruction": [1, 2, 3], "input": [None] * 3, "output": [4.0, 5.0, 6.0]})
    pq.write_table(table, tmp / "typed.parquet")
    return tmp / "typed.parquet"


def _good(tmp: Path) -> Path:
    (tmp / "good.json").write_text(json.dumps(GOOD))
    return tmp / "good.json"


PREPROCESS_FAILURES = [
    # (id, input builder, extra flags, exit code, text on the one line)
    ("random-bytes", _random_json, [], 1, "noise.json: looks like binary data, not UTF-8 text"),
    ("gzip-named-json", _gzip_json, [], 1, "looks like gzip-compressed data, not JSON text: "
     "rename it to d.json.gz"),
    ("empty-file", _empty, [], 1, "quality gate: no records in"),
    ("parquet-wrong-types", _wrong_types_parquet, [], 1,
     "quality gate: none of 3 records is valid; rejected: wrong_type 3; e.g. "),
    ("missing-input", lambda tmp: tmp / "nope.json", [], 1, "--input"),
    ("hf-dotdot", lambda tmp: "hf://datasets/o/n/../../x.json", [], 2, "may not start with '/' or "
     "contain '..'"),
    ("bad-flag-value", _good, ["--seq-length", "abc"], 2, "argument --seq-length: invalid int"),
    ("unknown-flag", _good, ["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    ("config-values", _good, ["--handler-name", "Nope", "--min-valid-fraction", "1.5"], 2,
     "unknown --handler-name 'Nope'"),
    ("map-keys", _good, ["--map-keys", '{"bogus": "x"}'], 2, "unknown key 'bogus'"),
]  # fmt: skip
DEBUG_TOO = {"random-bytes", "empty-file", "hf-dotdot", "config-values"}


@pytest.mark.parametrize(
    ("case", "make", "extra", "code", "text"),
    PREPROCESS_FAILURES,
    ids=[c[0] for c in PREPROCESS_FAILURES],
)
def test_preprocess_failure_is_one_line_and_keeps_the_previous_dataset(
    good_dataset: Path, work: Path, case: str, make, extra: list, code: int, text: str
) -> None:
    tmp = work / case
    tmp.mkdir()
    before = dataset_digest(good_dataset)
    args = preprocess_args(make(tmp), good_dataset, *extra)
    run = run_module("packft", *args, cwd=tmp)
    assert run.code == code, run.stderr
    assert len(run.err_lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.err_lines[0].startswith("packft preprocess: error: ") or code == 2, run.stderr
    assert text in run.err_lines[0]
    assert dataset_digest(good_dataset) == before  # nothing written, previous dataset intact
    if case in DEBUG_TOO:  # the same failure with the traceback
        debug = run_module("packft", *args, cwd=tmp, debug=True)
        assert debug.code != 0 and "Traceback (most recent call last)" in debug.stderr


def test_inspect_failures_are_one_line(good_dataset: Path, work: Path) -> None:
    tmp = work / "inspect"
    tmp.mkdir()
    cases = [
        (["inspect", str(tmp / "missing")], 1, "no dataset at "),
        (["inspect", str(good_dataset), "--row", "99999"], 2, "--row 99999 is out of range"),
        (["inspect"], 2, "the following arguments are required: prefix"),
    ]
    broken = tmp / "broken"
    for name in dataset_digest(good_dataset):
        (tmp / name.replace("ds", "broken", 1)).write_bytes(
            (good_dataset.parent / name).read_bytes()
        )
    Path(f"{broken}.packft.json").write_text('{"stats": ')
    cases.append((["inspect", str(broken)], 1, "the sidecar is not valid JSON"))
    for args, code, text in cases:
        run = run_module("packft", *args, cwd=tmp)
        assert (run.code, len(run.err_lines)) == (code, 1), (args, run.stderr)
        assert text in run.stderr and "Traceback" not in run.stderr, run.stderr
    debug = run_module("packft", "inspect", str(broken), cwd=tmp, debug=True)
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "IntegrityError" in debug.stderr
