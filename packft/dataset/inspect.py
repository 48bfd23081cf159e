"""``packft inspect PREFIX [--row N] [--verify]``: a packed dataset's stats, integrity and rows.

First :func:`packft.dataset.integrity.open_verified` (``require_all``): a commit a killed writer
left decided is finished; every file the sidecar records (six data files, plan, rejects) must have
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

from packft.core.constants import IGNORE_INDEX
from packft.core.errors import UsageError
from packft.dataset.indexed import open_sft_dataset
from packft.dataset.integrity import open_verified, plan_path, sidecar_path


def load_sidecar(prefix: str | Path) -> dict[str, Any]:
    """The sidecar of a dataset checked by :func:`packft.dataset.integrity.open_verified`.

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
    from packft.pack.plan import PackPlan

    plan = PackPlan.load(plan_path(prefix))
    if not 0 <= row < plan.num_rows:
        raise UsageError(f"--row {row} is out of range: the dataset has {plan.num_rows} rows")
    items, starts, lengths = plan.row(row)
    return [(int(i), int(s), int(n)) for i, s, n in zip(items, starts, lengths, strict=True)]


TRAINED_MARKS = ("\u27e6", "\u27e7")
"""``⟦trained⟧`` around the tokens a sample trains on, in plain (piped) output."""


def labelled_spans(ids: np.ndarray, trained: np.ndarray, tokenizer: Any) -> list[tuple[str, bool]]:
    """``(text, trained)`` runs of a segment. Each run is the difference of two prefix decodes,
    so spaces and merges at a run boundary come out as in the whole segment's text."""
    cuts = [0, *(np.flatnonzero(np.diff(trained.astype(np.int8))) + 1).tolist(), len(ids)]
    spans, before = [], ""
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        upto = tokenizer.decode(ids[:end].tolist())
        piece = (
            upto[len(before) :]
            if upto.startswith(before)
            else tokenizer.decode(ids[start:end].tolist())
        )
        spans.append((piece, bool(trained[start])))
        before = upto
    return spans


def decode_row(prefix: str | Path, row: int, tokenizer: Any) -> list[dict[str, Any]]:
    """Row ``row`` as its samples and its padding.

    Each sample: ``sample`` (index), ``start``, ``tokens``, ``trained`` (tokens with a label),
    ``spans`` (``(text, trained)`` runs), ``text`` and ``trained_text``. The last entry is the
    padding: ``sample`` None, ``padding`` True, ``tokens``, ``pad_ids`` (distinct ids used).
    """
    data = open_sft_dataset(prefix)
    if not 0 <= row < len(data["input_ids"]):
        rows = len(data["input_ids"])
        raise UsageError(f"--row {row} is out of range: the dataset has {rows} rows")
    ids = np.asarray(data["input_ids"][row], np.int64)
    labels = np.asarray(data["labels"][row], np.int64)
    out, at = [], 0
    for sample, start, n in row_segments(prefix, row):
        seg_ids, trained = ids[at : at + n], labels[at : at + n] != IGNORE_INDEX
        spans = labelled_spans(seg_ids, trained, tokenizer) if n else []
        out.append(
            {
                "sample": sample,
                "start": start,
                "tokens": n,
                "trained": int(trained.sum()),
                "spans": spans,
                "text": "".join(text for text, _ in spans),
                "trained_text": tokenizer.decode(seg_ids[trained].tolist()),
            }
        )
        at += n
    pad = ids[at:]
    out.append({"sample": None, "padding": True, "tokens": len(pad),
                "trained": int((labels[at:] != IGNORE_INDEX).sum()),
                "pad_ids": sorted(set(pad.tolist()))})  # fmt: skip
    return out


def segment_title(seg: dict[str, Any]) -> str:
    if seg.get("padding"):
        ids = ", ".join(map(str, seg["pad_ids"])) or "-"
        return f"padding: {seg['tokens']} tokens (pad id {ids}), {seg['trained']} trained"
    return f"sample {seg['sample']}: {seg['tokens']} tokens, {seg['trained']} trained"


def print_row(segments: list[dict[str, Any]], out: Any = None) -> None:
    """The row, sample by sample. On a terminal trained text is green and the terminal wraps
    lines; otherwise (piped) the text is written as is, trained spans inside ``⟦ ⟧``."""
    out = out or sys.stdout
    if out.isatty():
        from rich.console import Console
        from rich.text import Text

        console = Console(file=out, soft_wrap=True, highlight=False)
        console.print(f"trained text is [bold green]green[/]; {TRAINED_MARKS[0]} {TRAINED_MARKS[1]} "
                      "mark it when piped")  # fmt: skip
        for seg in segments:
            console.rule(segment_title(seg))
            text = Text()
            for piece, trained in seg.get("spans", []):
                text.append(piece, style="bold green" if trained else "")
            if text:
                console.print(text)
        return
    for seg in segments:
        out.write(f"--- {segment_title(seg)} ---\n")
        pieces = [f"{TRAINED_MARKS[0]}{t}{TRAINED_MARKS[1]}" if trained else t
                  for t, trained in seg.get("spans", [])]  # fmt: skip
        if pieces:
            out.write("".join(pieces) + "\n")
    out.flush()


def print_labels(prefix: str | Path, row: int, tokenizer: Any, out: Any = None) -> None:
    """One line per token: position, sample (or ``pad``), id, label (``-`` = not trained), token."""
    out = out or sys.stdout
    data = open_sft_dataset(prefix)
    ids = np.asarray(data["input_ids"][row], np.int64)
    labels = np.asarray(data["labels"][row], np.int64)
    owner = np.full(len(ids), -1, np.int64)
    at = 0
    for sample, _, n in row_segments(prefix, row):
        owner[at : at + n] = sample
        at += n
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    out.write("pos\tsample\tid\tlabel\ttoken\n")
    for pos, (tid, label, who, token) in enumerate(zip(ids, labels, owner, tokens, strict=True)):
        shown = "-" if label == IGNORE_INDEX else str(int(label))
        out.write(f"{pos}\t{'pad' if who < 0 else who}\t{tid}\t{shown}\t{token!r}\n")
    out.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="the --output-prefix of `packft preprocess`")
    parser.add_argument("--row", type=int, default=None, help="decode this row")
    parser.add_argument(
        "--labels", action="store_true", help="with --row: one line per token with its label"
    )
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

    from packft.dataset.stats import stats_table

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
        from packft.tokenize.templates import load_tokenizer

        if sidecar is None and args.tokenizer is None:
            raise UsageError("--row needs --tokenizer for a dataset without a packft sidecar")
        row_segments(args.prefix, args.row)  # an out-of-range row fails before the tokenizer loads
        tokenizer = load_tokenizer(
            args.tokenizer or sidecar["tokenizer"], (sidecar or {}).get("template", "empty")
        )
        segments = decode_row(args.prefix, args.row, tokenizer)
        if args.labels:
            print_labels(args.prefix, args.row, tokenizer)
        else:
            print_row(segments)
    return 0
