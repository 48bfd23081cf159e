"""How many tokenize processes actually help: ``--workers`` is a ceiling, not an order.

Why: the Rust encoder already uses every core (its own rayon threads) for the ~2/3 of the work
that is encoding, and the in-process run overlaps the Python third (parse, render, assemble) with
it (:func:`packft.tokenize.encode.tokenize_batches`). An extra process then only helps once the
Python side of one process cannot keep the Rust threads busy, and every process it adds costs a
spawn, a tokenizer copy (~0.3 s, ~100+ MiB) and Rust threads fighting over the same cores. The
issue measured this on 2 cores: ``--workers 2`` 16.1 s / 899 MiB against 13.2 s / 648 MiB for 1.

Rule (per batch: Python work ``P`` on one core, Rust work ``R`` core-seconds spread over the
cores; for Alpaca under llama2 ``R`` is 2-4 ``P``: the issue's profile has 10.1 s of 2-thread
Rust encode against ~5 s of Python): ``w`` pipelined processes take
``max(P / w, (P + R) / cores)``, so more than ``ceil(cores * P / (P + R))``, i.e. ``cores / 3`` to
``cores / 5``, processes cannot help. Hence:

* the Rust encoder runs multi-threaded (the default): at most ``max(1, cores // 4)`` processes;
* it runs on one thread (``TOKENIZERS_PARALLELISM=false`` or ``RAYON_NUM_THREADS=1``), or the
  template renders in Python with transformers' ``apply_chat_template`` (``P`` dominates): at
  most ``cores`` processes.

Worked example: 2 cores, ``--workers 2``, llama2 -> 1 process (Rust: 2 threads); 16 cores,
``--workers 8`` -> 4; 16 cores with ``TOKENIZERS_PARALLELISM=false``, ``--workers 8`` -> 8.
The output never depends on the count (batches come back in order), only the time does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CORES_PER_PROCESS = 4
"""Cores one pipelined process keeps busy with a multi-threaded Rust encoder (see above)."""


@dataclass(frozen=True)
class WorkerChoice:
    """The process count used for tokenizing, and why."""

    requested: int
    used: int
    cores: int
    rust_threads: int
    python_templates: bool

    def describe(self) -> str:
        reason = f"{self.cores} core(s), Rust encoder on {self.rust_threads} thread(s)" + (
            ", Python-rendered chat template" if self.python_templates else ""
        )
        if self.used == self.requested:
            return f"{self.used} process(es) ({reason})"
        return (
            f"{self.used} process(es) of {self.requested} requested ({reason}: more would only "
            "compete for the same cores; see packft/tokenize/workers.py)"
        )


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def rust_threads(cores: int) -> int:
    """Threads the tokenizers' Rust backend will use in this process (its own env switches)."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "no", "off"):
        return 1
    raw = os.environ.get("RAYON_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return min(int(raw), cores)
    return cores


def choose_workers(
    requested: int, *, python_templates: bool = False, cores: int | None = None
) -> WorkerChoice:
    """The number of tokenize processes to run for ``--workers requested`` (see the module)."""
    if requested < 1:
        raise ValueError(f"workers must be >= 1, got {requested}")
    cores = available_cores() if cores is None else cores
    threads = rust_threads(cores)
    ceiling = cores if (threads <= 1 or python_templates) else max(1, cores // CORES_PER_PROCESS)
    return WorkerChoice(requested, min(requested, ceiling), cores, threads, python_templates)
