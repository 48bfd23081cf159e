"""``packft inspect PREFIX [--row N] [--verify]``: a packed dataset's stats, integrity and rows.

First :func:`packft.integrity.open_verified` (``require_all``): a commit a killed writer left
decided is finished; every file the sidecar records (six data files, plan, rejects) must have
its size and fingerprint; headers, equal row counts across the three fields and the recorded
row count are checked. ``--verify`` also hashes every byte (sha256) and checks every input id and
label against the vocabulary size in the sidecar. Any failure is one line and exit 1. A dataset
without a sidecar (MindSpeed's own) gets the structural checks and a warning. ``--row N``
decodes row N segment by segment (segments from the plan file), showing which tokens are trained
(labels != -100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from packft.errors import UsageError
from packft.indexed import open_sft_dataset
from packft.integrity import open_verified
from packft.rows import IGNORE_INDEX, plan_path, sidecar_path


def load_sidecar(prefix: str | Path) -> dict[str, Any]:
    """The sidecar of a dataset checked by :func:`packft.integrity.open_verified`.

    Raises:
        FileNotFoundError: no sidecar (MindSpeed's own sets have none).
        IntegrityError: the set is partial, mixed or corrupt.
    """
    sidecar = open_verified(prefix, require_all=True).sidecar
    if sidecar is None:
        raise FileNotFoundError(
            f"{sidecar_path(prefix)} not found: the dataset was not written by packft (or its "
            "sidecar was deleted); `packft preprocess --output-prefix PREFIX ...` writes one"
        )
    return sidecar


def row_segments(prefix: str | Path, row: int) -> list[tuple[int, int, int]]:
    """(sample index, start, length) of each piece of ``row``, from the plan file."""
    from packft.pack import PackPlan

    plan = PackPlan.load(plan_path(prefix))
    if not 0 <= row < plan.num_rows:
        raise IndexError(f"row {row} out of range: the dataset has {plan.num_rows} rows")
    items, starts, lengths = plan.row(row)
    return [(int(i), int(s), int(n)) for i, s, n in zip(items, starts, lengths, strict=True)]


def decode_row(prefix: str | Path, row: int, tokenizer: Any) -> list[dict[str, Any]]:
    """Row ``row`` as decoded segments: text, trained text, sample index, token count."""
    data = open_sft_dataset(prefix)
    if not 0 <= row < len(data["input_ids"]):
        raise IndexError(f"row {row} out of range: the dataset has {len(data['input_ids'])} rows")
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
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also hash every byte against the sidecar and check every id < the vocabulary size",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from packft.stats import stats_table

    console = Console()
    verified = open_verified(args.prefix, full=args.verify, require_all=True)
    for warning in verified.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sidecar = verified.sidecar
    if args.json:
        print(json.dumps(sidecar, indent=1))
    elif sidecar is not None:
        console.print(stats_table(sidecar.get("stats", {}), f"{args.prefix}"))
        for key in ("packft_version", "template", "tokenizer", "algorithm", "seed", "mix"):
            console.print(f"{key}: {sidecar.get(key)}")
    else:
        ids = verified.datasets["input_ids"]
        console.print(f"rows: {len(ids)}  tokens: {ids.num_tokens}  dtype: {ids.dtype}")
    for line in verified.checked:
        console.print(f"verified: {line}")
    if args.row is not None:
        from packft.templates import load_tokenizer

        if sidecar is None and args.tokenizer is None:
            raise UsageError("--row needs --tokenizer for a dataset without a packft sidecar")
        tokenizer = load_tokenizer(
            args.tokenizer or sidecar["tokenizer"], (sidecar or {}).get("template", "empty")
        )
        for seg in decode_row(args.prefix, args.row, tokenizer):
            console.rule(f"sample {seg['sample']} ({seg['tokens']} tokens)")
            console.print(seg["text"], markup=False, highlight=False)
    return 0
