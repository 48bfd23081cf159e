"""Tokenize process count: ``--workers`` is a ceiling chosen from cores and Rust threads, and
neither the choice nor the in-process pipeline changes a byte of the output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from packft.cli import main
from packft.ingest.records import Conversation, Message
from packft.tokenize import TokenizeOptions
from packft.tokenize.batch import encode_conversations
from packft.tokenize.encode import _pipelined
from packft.tokenize.templates import get_template, load_tokenizer
from packft.tokenize.workers import available_cores, choose_workers

ALPACA_KEYS = '{"prompt":"instruction","query":"input","response":"output"}'


def test_more_processes_than_help_are_not_started(monkeypatch) -> None:
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    # the Rust encoder already fills the cores: one pipelined process per 4 cores
    assert choose_workers(2, cores=2).used == 1
    assert choose_workers(8, cores=16).used == 4
    assert choose_workers(1, cores=64).used == 1  # never more than asked
    # a Python-rendered (transformers) chat template is Python-bound: up to one per core
    assert choose_workers(8, cores=4, python_templates=True).used == 4
    # a single-threaded Rust encoder: processes are the only parallelism
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert choose_workers(8, cores=16).used == 8
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")
    assert choose_workers(3, cores=2).used == 2
    described = choose_workers(3, cores=2).describe()
    assert "2 process(es) of 3 requested" in described and "1 thread(s)" in described
    with pytest.raises(ValueError, match="workers must be >= 1"):
        choose_workers(0)


def _preprocess(tmp: Path, name: str, data: Path, tokenizer: Path, workers: int) -> dict[str, str]:
    prefix = tmp / name / "out"
    prefix.parent.mkdir()
    args = ["preprocess", "--input", str(data), "--tokenizer-name-or-path", str(tokenizer),
            "--output-prefix", str(prefix), "--handler-name", "AlpacaStyleInstructionHandler",
            "--prompt-type", "llama2", "--append-eod", "--seq-length", "512", "--pack",
            "--map-keys", ALPACA_KEYS, "--workers", str(workers),
            "--cache-dir", str(tmp / name / "cache")]  # fmt: skip
    assert main(args) == 0
    return {
        p.name[len("out") :]: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(prefix.parent.glob("out_packed_*"))
    }


def test_workers_choice_is_said_and_changes_no_byte(
    tmp_path, alpaca_en_path, llama2_tokenizer_dir, monkeypatch, caplog
) -> None:
    monkeypatch.delenv("PACKFT_TOKENIZE_PROCESSES", raising=False)
    one = _preprocess(tmp_path, "one", alpaca_en_path, llama2_tokenizer_dir, 1)
    assert len(one) == 6
    caplog.clear()
    many = _preprocess(tmp_path, "asked4", alpaca_en_path, llama2_tokenizer_dir, 4)
    choice = choose_workers(4)
    if choice.used != 4:  # a reduced count is said (a warning: the CLI's stderr)
        assert f"tokenize workers: {choice.describe()}" in caplog.text
    monkeypatch.setenv("PACKFT_TOKENIZE_PROCESSES", "2")  # really spawn two processes
    forced = _preprocess(tmp_path, "forced2", alpaca_en_path, llama2_tokenizer_dir, 2)
    assert one == many == forced
    assert available_cores() >= 1


def test_pipeline_equals_batch_by_batch_encode(alpaca_en_path, llama2_tokenizer_dir) -> None:
    """Several batches in flight (batches of 37 over 999 records, some cut at 96 tokens)."""
    rows = json.loads(alpaca_en_path.read_text())
    convs = [
        Conversation([Message("user", r["instruction"] + ("\n" + r["input"] if r["input"] else "")),
                      Message("assistant", r["output"])], row=i)
        for i, r in enumerate(rows)
    ]  # fmt: skip
    batches = [convs[i : i + 37] for i in range(0, len(convs), 37)]
    template = get_template("llama2")
    tokenizer = load_tokenizer(str(llama2_tokenizer_dir), "llama2")
    options = TokenizeOptions(seq_length=96, append_eod=True)
    piped = list(_pipelined(iter(batches), template, tokenizer, options))
    assert len(piped) == len(batches)
    truncated = 0
    for got, batch in zip(piped, batches, strict=True):
        want = encode_conversations(batch, template, tokenizer, options)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.labels, want.labels)
        assert np.array_equal(got.offsets, want.offsets)
        assert np.array_equal(got.source_rows, want.source_rows)
        truncated += got.truncated
    assert truncated > 0
    assert sum(len(b.source_rows) for b in piped) == len(convs)
