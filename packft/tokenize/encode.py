"""Tokenize conversations into input_ids/labels shards, batched, streaming, any worker count.

Each batch goes through :mod:`packft.tokenize.batch` (render, one Rust encode call, numpy
assembly, MindSpeed's truncation).

Parallelism: ``options.workers`` is a ceiling; :func:`packft.tokenize.workers.choose_workers`
picks the process count that helps from the cores and the Rust encoder's own threads (on 2 cores
with a table template: 1) and logs it. One process runs a pipeline (:func:`_pipelined`): a thread
makes the Rust call for batch k (the GIL is released, the Rust threads use every core) while the
main thread reads and renders batch k+1 and assembles batch k-1. More processes are ``spawn``
workers (never ``fork``: a live Rust thread pool does not survive a fork) that rebuild the main
process's fixed-up tokenizer from its serialized backend (no transformers import, ~0.3 s) and
give the Rust encoder ``cores // workers`` threads. The main process reads and validates; batches
go out through a window of ``2 * workers`` futures and come back in order, so memory is bounded
by a few batches and the output is byte-identical for any worker count
(``PACKFT_TOKENIZE_PROCESSES=N`` forces N processes, for tests). As with any ``spawn`` pool, a
script calling this with several processes needs an ``if __name__ == "__main__":`` guard.

Output: one shard per input file, one record batch per input batch, in the format of
:mod:`packft.tokenize.shards` (header: template, tokenizer fingerprint, input sha256, options,
version, and the tokenizer's pad/eos ids and size; stats in a trailing batch, read by
:func:`packft.tokenize.shards.read_stats`), written to a temporary name, fsynced and renamed.

Speed and memory: ``benchmarks/bench_tokenize.py`` and ``bench_preprocess.py`` (figures in the README).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from packft.core.constants import IGNORE_INDEX
from packft.ingest.limits import RecordLimits
from packft.ingest.records import Conversation
from packft.tokenize.batch import (
    EncodedBatch,
    RenderedBatch,
    TokenizeStats,
    assemble_batch,
    encode_conversations,
    encode_rendered,
    render_batch,
)
from packft.tokenize.options import TokenizeOptions, tokenizer_fingerprint
from packft.tokenize.shards import write_shard as write_shard_file
from packft.tokenize.string_cache import StringCache, max_bytes_from_env
from packft.tokenize.templates import ChatTemplate, Template, get_template, load_tokenizer
from packft.tokenize.workers import choose_workers

log = logging.getLogger(__name__)
# --- running: in-process or an ordered window over spawn workers --------------------------------

_WORKER: tuple[Template | ChatTemplate, Any, TokenizeOptions, StringCache] | None = None


@dataclass
class BackendTokenizer:
    """What table templates and the encoder need of a tokenizer, without transformers.

    Workers rebuild the main process's fixed-up tokenizer from its serialized Rust backend, so
    a worker starts in ~0.3 s instead of ~3 s (importing transformers pulls in torch).
    """

    _tokenizer: Any
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def spec(cls, tokenizer: Any) -> tuple[str, int | None, int | None, int | None]:
        ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        return (tokenizer._tokenizer.to_str(), *ids)

    @classmethod
    def from_spec(cls, spec: tuple[str, int | None, int | None, int | None]) -> BackendTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(spec[0]), *spec[1:])


def _init_worker(
    tokenizer_path: str, template_name: str, options: TokenizeOptions, spec: tuple | None
) -> None:
    # Share the cores among workers (set before `tokenizers` is first imported here): Rust
    # threads = cores // workers, and no Rust pool at all when that is 1 (see module docstring).
    threads = max(1, len(os.sched_getaffinity(0)) // options.workers)
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    global _WORKER
    template = get_template(template_name)
    if spec is not None:
        tokenizer = BackendTokenizer.from_spec(spec)
    else:  # hf templates need transformers' apply_chat_template
        tokenizer = load_tokenizer(tokenizer_path, template_name)
    _WORKER = (template, tokenizer, options, StringCache(max_bytes_from_env()))


def _encode_in_worker(convs: list[Conversation]) -> EncodedBatch:
    if _WORKER is None:  # pragma: no cover - the pool initializer always runs first
        raise RuntimeError("tokenize worker used before its initializer ran")
    template, tokenizer, options, cache = _WORKER
    return encode_conversations(convs, template, tokenizer, options, cache)


def tokenize_batches(
    batches: Iterable[list[Conversation]],
    tokenizer_path: str | Path,
    template: str,
    options: TokenizeOptions,
    tokenizer: Any = None,
) -> Iterator[EncodedBatch]:
    """Encode conversation batches in order; ``options.workers`` processes, same result for any.

    Args:
        batches: lists of valid conversations (empty lists are skipped).
        tokenizer_path: what workers load (with ``load_tokenizer``); in-process runs use
            ``tokenizer`` when given.
        template: ``--prompt-type`` name.
        options: see :class:`TokenizeOptions`.
        tokenizer: an already loaded tokenizer for ``workers == 1``.
    """
    nonempty = (b for b in batches if b)
    tpl = get_template(template)
    tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_path, template)
    choice = choose_workers(options.workers, python_templates=not isinstance(tpl, Template))
    forced = os.environ.get("PACKFT_TOKENIZE_PROCESSES", "").strip()
    workers = int(forced) if forced.isdigit() and int(forced) > 0 else choice.used
    if workers != options.workers:
        log.warning("tokenize workers: %s", choice.describe())
    else:
        log.info("tokenize workers: %s", choice.describe())
    if workers == 1:
        yield from _pipelined(nonempty, tpl, tok, options)
        return
    spec = BackendTokenizer.spec(tok) if isinstance(tpl, Template) else None
    pool = ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(tokenizer_path), template, replace(options, workers=workers), spec),
    )
    window: deque[Future[EncodedBatch]] = deque()
    try:
        for convs in nonempty:
            window.append(pool.submit(_encode_in_worker, convs))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pipelined(
    batches: Iterable[list[Conversation]],
    template: Template | ChatTemplate,
    tokenizer: Any,
    options: TokenizeOptions,
) -> Iterator[EncodedBatch]:
    """Encode batches in order, the Rust encode of batch k overlapping the Python work around it.

    One thread runs the backend call (which releases the GIL and fans out over the Rust threads)
    while this thread reads and renders batch k+1 and assembles batch k-1. At most two batches
    are in flight, so memory stays bounded by a few batches; the output is exactly
    :func:`encode_conversations` of each batch, in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    pending: deque[tuple[list[Conversation], RenderedBatch, Future]] = deque()
    cache = StringCache(max_bytes_from_env())  # used by the encode thread only
    with ThreadPoolExecutor(1, thread_name_prefix="packft-encode") as rust:
        try:
            for convs in batches:
                rendered = render_batch(convs, template, tokenizer)
                pending.append(
                    (convs, rendered, rust.submit(encode_rendered, tokenizer, rendered, cache))
                )
                if len(pending) >= 2:
                    convs, rendered, future = pending.popleft()
                    yield assemble_batch(
                        convs, template, tokenizer, options, rendered, future.result()
                    )
            while pending:
                convs, rendered, future = pending.popleft()
                yield assemble_batch(convs, template, tokenizer, options, rendered, future.result())
        finally:
            for *_, future in pending:
                future.cancel()
            log.info("string cache: %d hits, %d misses, %d strings kept (%.1f MiB)", cache.hits,
                     cache.misses, len(cache.ids), cache.bytes / (1 << 20))  # fmt: skip


def shard_header(stats: TokenizeStats, tokenizer: Any) -> dict[str, Any]:
    """What a shard records up front: its inputs, and the tokenizer ids the write step needs."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {
        "template": stats.template,
        "tokenizer_sha256": stats.tokenizer_sha256,
        "input_sha256": stats.input_sha256,
        "options": stats.options,
        "packft_version": stats.packft_version,
        "pad_id": None if pad is None else int(pad),
        "eos_id": None if eos is None else int(eos),
        "vocab_size": len(tokenizer),
    }


def tokenize_file(
    path: Path,
    out_path: Path,
    *,
    tokenizer_path: str | Path,
    options: TokenizeOptions = TokenizeOptions(),
    rejects_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
    input_sha256: str | None = None,
    tokenizer_sha256: str | None = None,
    fmt: str | None = None,
    map_keys: dict[str, Any] | None = None,
    template: str | None = None,
    on_invalid: Literal["skip", "fail"] | None = None,
    repair: Iterable[str] | None = None,
) -> TokenizeStats:
    """Read, validate, tokenize ``path`` into one Arrow shard at ``out_path`` (atomically).

    Args:
        path: one local data file (see :func:`packft.ingest.readers.iter_record_batches`).
        out_path: the shard to write; its directory is created.
        tokenizer_path: HF tokenizer dir or hub id.
        options: everything that decides the bytes (:class:`~packft.tokenize.options.
            TokenizeOptions`: template, format, key map, repairs, ``on_invalid``, budget ...).
        rejects_path: JSONL of rejected records (default ``<out_path>.rejects.jsonl``).
        progress: called with the number of samples of each finished batch.
        input_sha256: the input's digest when the caller already has it (else read here once).
        tokenizer_sha256: :func:`~packft.tokenize.options.tokenizer_fingerprint` of the
            tokenizer, when the caller already has it.
        fmt, map_keys, template, on_invalid, repair: when given, replace that field of
            ``options`` (a shorthand for direct calls; the pipeline passes whole options).

    Returns:
        The run's :class:`TokenizeStats` (also stored in the shard, see :func:`read_stats`).

    Raises:
        ValueError: unknown template or bad options (before any work);
            packft.ingest.rejects.InvalidRecordError with ``on_invalid="fail"``.
    """
    from packft.core.digest import file_sha256
    from packft.ingest.formats import iter_conversations
    from packft.ingest.readers import iter_record_batches
    from packft.ingest.rejects import RejectLog
    from packft.ingest.repairs import parse_repairs

    started = time.perf_counter()
    path, out_path = Path(path), Path(out_path)
    given = {"fmt": fmt, "map_keys": map_keys, "template": template, "on_invalid": on_invalid,
             "repair": repair}  # fmt: skip
    options = dataclasses.replace(options, **{k: v for k, v in given.items() if v is not None})
    template = options.template
    get_template(template)  # unknown names fail before any work
    repairs = parse_repairs(options.repair)
    tokenizer = load_tokenizer(tokenizer_path, template)
    stats = TokenizeStats(
        template=template,
        tokenizer_sha256=tokenizer_sha256 or tokenizer_fingerprint(tokenizer_path),
        input_sha256=input_sha256 or file_sha256(path),
        options=options.recorded(),
    )
    rejects_path = rejects_path or out_path.with_name(out_path.name + ".rejects.jsonl")

    def counted(batches: Iterable[Any]) -> Iterator[Any]:
        for batch in batches:
            stats.samples_in += len(batch.rows)
            yield batch

    with RejectLog(rejects_path, options.on_invalid) as rejects:
        limits = RecordLimits(max_bytes=options.max_record_bytes)
        records = counted(iter_record_batches(path, options.batch_size, limits))
        convs = iter_conversations(records, options.fmt, options.map_keys, rejects, repairs)
        encoded = tokenize_batches(convs, tokenizer_path, template, options, tokenizer)

        def finish(st: TokenizeStats) -> None:
            st.valid = rejects.valid
            st.rejected = dict(sorted(rejects.counts.items()))
            st.repaired = dict(sorted(rejects.repaired.items()))

        write_encoded(out_path, encoded, stats, shard_header(stats, tokenizer), finish, progress)
    stats.seconds = time.perf_counter() - started
    return stats


def write_encoded(
    out_path: Path,
    batches: Iterable[EncodedBatch],
    stats: TokenizeStats,
    header: dict[str, Any],
    finish: Callable[[TokenizeStats], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> TokenizeStats:
    """Stream encoded batches into a shard (:func:`packft.tokenize.shards.write_shard`), counting.

    ``stats`` accumulates the per-batch counts; ``finish`` completes it (e.g. reject counts)
    before it is stored in the shard.
    """

    def counted() -> Iterator[pa.RecordBatch]:
        for enc in batches:
            lengths = np.diff(enc.offsets)
            stats.written += len(lengths)
            stats.truncated += enc.truncated
            stats.truncated_marker_lost += enc.marker_lost
            stats.dropped += enc.dropped
            stats.tokens += int(lengths.sum())
            stats.supervised_tokens += int(np.count_nonzero(enc.labels != IGNORE_INDEX))
            stats.max_length = max(stats.max_length, int(lengths.max(initial=0)))
            if enc.original_lengths is not None:
                values, counts = np.unique(enc.original_lengths, return_counts=True)
                for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                    stats.length_counts[value] = stats.length_counts.get(value, 0) + count
            yield enc.to_record_batch()
            if progress is not None:
                progress(len(lengths) + enc.dropped)

    def final() -> dict[str, Any]:
        if finish is not None:
            finish(stats)
        return json.loads(stats.to_json())

    write_shard_file(out_path, header, counted(), final)
    return stats
