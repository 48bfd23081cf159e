"""``packft preprocess`` on the command line: flags from :class:`PreprocessConfig`, the job, a
stats table and the rejects/timings lines on stderr, then what was written (or that the output
was already up to date, :mod:`packft.preprocess.reuse`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from packft.preprocess.config import PreprocessConfig
from packft.preprocess.steps import preprocess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from packft.core.config import add_model_arguments

    add_model_arguments(parser, PreprocessConfig)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from packft.core.config import model_from_args
    from packft.dataset.stats import stats_table

    console = Console(stderr=True)
    cfg = model_from_args(PreprocessConfig, args)  # errors: one line via packft.cli
    result = preprocess(cfg, show_progress=True)
    rejects = Path(f"{result.prefix}.rejects.jsonl")
    title = f"{result.prefix} ({result.seconds:.1f} s)"
    console.print(stats_table(result.stats.model_dump(), title, rejects_file=rejects))
    print(f"rejects: {result.stats.rejected_total} record(s) in {rejects}", file=sys.stderr)
    print(f"timings: {json.dumps(result.step_seconds)}", file=sys.stderr)
    if result.reused:
        print(f"output up to date: {result.prefix} (dataset {(result.dataset_key or '')[:12]}), "
              "nothing written", file=sys.stderr)  # fmt: skip
    else:
        print(f"wrote {result.prefix}_packed_{{input_ids,attention_mask,labels}}_document"
              ".{bin,idx}", file=sys.stderr)  # fmt: skip
    return 0
