"""``packft inspect PREFIX [--row N]``: a packed dataset's stats, consistency and decoded rows.

Reads the sidecar ``{prefix}.packft.json`` and opens the three SFT datasets with
:func:`packft.indexed.open_sft_dataset` (which checks headers and matching lengths). It reports
whether the data files still have the sizes the sidecar recorded (a crash in the rename window,
or files replaced by another tool, shows up here). ``--row N`` decodes row N segment by segment
(segments from the plan file), showing which tokens are trained (labels != -100).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from packft.errors import IntegrityError, UsageError
from packft.indexed import SFT_KEYS, open_sft_dataset, sft_prefix
from packft.rows import IGNORE_INDEX, plan_path, sidecar_path


def load_sidecar(prefix: str | Path) -> dict[str, Any]:
    path = sidecar_path(prefix)
    if not path.exists():
        data_files = [f"{sft_prefix(prefix, k)}.bin" for k in SFT_KEYS]
        present = [f for f in data_files if os.path.exists(f)]
        hint = (
            "the data files exist without a sidecar: the write was interrupted or the dataset "
            "was not written by packft; rerun `packft preprocess`"
            if present
            else "no dataset at this prefix; run `packft preprocess --output-prefix PREFIX ...`"
        )
        raise FileNotFoundError(f"{path} not found: {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise IntegrityError(
            f"{path}: the sidecar is not valid JSON ({error}); the dataset's record is damaged: "
            "rerun `packft preprocess` to rebuild it"
        ) from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{path}: the sidecar holds {type(data).__name__}, not an object")
    return data


def check_files(prefix: str | Path, sidecar: dict[str, Any]) -> list[str]:
    """Problems between the sidecar's recorded file sizes and the files on disk."""
    problems = []
    for key, sizes in sidecar.get("files", {}).items():
        for ext, size in sizes.items():
            path = Path(f"{sft_prefix(prefix, key)}.{ext}")
            if not path.exists():
                problems.append(f"{path} is missing")
            elif path.stat().st_size != size:
                problems.append(f"{path} has {path.stat().st_size} bytes, sidecar says {size}")
    return problems


def row_segments(prefix: str | Path, row: int) -> list[tuple[int, int, int]]:
    """(sample index, start, length) of each piece of ``row``, from the plan file."""
    from packft.pack import PackPlan

    plan = PackPlan.load(plan_path(prefix))
    if not 0 <= row < plan.num_rows:
        raise UsageError(f"--row {row} is out of range: the dataset has {plan.num_rows} rows")
    items, starts, lengths = plan.row(row)
    return [(int(i), int(s), int(n)) for i, s, n in zip(items, starts, lengths, strict=True)]


def decode_row(prefix: str | Path, row: int, tokenizer: Any) -> list[dict[str, Any]]:
    """Row ``row`` as decoded segments: text, trained text, sample index, token count."""
    data = open_sft_dataset(prefix)
    if not 0 <= row < len(data["input_ids"]):
        rows = len(data["input_ids"])
        raise UsageError(f"--row {row} is out of range: the dataset has {rows} rows")
    ids = np.asarray(data["input_ids"][row], np.int64)
    labels = np.asarray(data["labels"][row], np.int64)
    out, at = [], 0
    for sample, start, n in row_segments(prefix, row):
        seg_ids, seg_labels = ids[at : at + n], labels[at : at + n]
        trained = seg_ids[seg_labels != IGNORE_INDEX]
        out.append(
            {
                "sample": sample,
                "start": start,
                "tokens": n,
                "text": tokenizer.decode(seg_ids.tolist()),
                "trained_text": tokenizer.decode(trained.tolist()),
            }
        )
        at += n
    out.append({"sample": None, "tokens": len(ids) - at, "text": "<padding>"})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="the --output-prefix of `packft preprocess`")
    parser.add_argument("--row", type=int, default=None, help="decode this row")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer for --row (default: the one in the sidecar)"
    )
    parser.add_argument("--json", action="store_true", help="print the sidecar as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from packft.stats import stats_table

    console = Console()
    sidecar = load_sidecar(args.prefix)  # errors: one line via packft.cli (exit 1; 2 for usage)
    if args.json:
        print(json.dumps(sidecar, indent=1))
    else:
        console.print(stats_table(sidecar.get("stats", {}), f"{args.prefix}"))
        for key in ("packft_version", "template", "tokenizer", "algorithm", "seed", "mix"):
            console.print(f"{key}: {sidecar.get(key)}")
    problems = check_files(args.prefix, sidecar)
    for problem in problems:
        console.print(f"[red]inconsistent:[/red] {problem}")
    if args.row is not None:
        from packft.templates import load_tokenizer

        row_segments(args.prefix, args.row)  # an out-of-range row fails before the tokenizer loads

        tokenizer = load_tokenizer(args.tokenizer or sidecar["tokenizer"], sidecar["template"])
        segments = decode_row(args.prefix, args.row, tokenizer)
        for seg in segments:
            console.rule(f"sample {seg['sample']} ({seg['tokens']} tokens)")
            console.print(seg["text"], markup=False, highlight=False)
    return 1 if problems else 0
