"""Tokenize conversations into input_ids/labels shards, batched, streaming, any worker count.

Algorithm, per batch of conversations (``--batch-size``, default 2048):

1. Render every conversation with its template into (source, target) pieces per turn
   (:mod:`packft.tokenize.templates`); collect the batch's distinct strings (template constants such
   as ``"\\n"`` or a default system block are encoded once) and token-id pieces.
2. Encode all distinct strings in ONE call to the Rust backend
   (``encode_batch_fast(strings, add_special_tokens=False)``): the only per-token work in Python
   is flattening the returned id lists (``np.fromiter`` over ``itertools.chain``).
3. Assemble with numpy: each piece occurrence is a (start, length) into the flat piece table;
   MindSpeed's truncation becomes a per-occurrence length clip; one ``np.repeat`` gather builds
   the batch's ids and a repeated trained-flag builds labels (-100 on source tokens).

Worked example (``llama2``, one sample user "hi" / assistant "ok", ``--append-eod``)::

    pieces    [1, "[INST] hi [/INST]"] -> source     ["ok", 2] -> target
    table     strings ["[INST] hi [/INST]", "ok"] -> [518 25580 29962 7251 518 29914 25580 29962],
              [3431]; ints [1, 2] -> [1], [2]
    input_ids 1 518 25580 29962 7251 518 29914 25580 29962 3431 2 2      (last 2: the eod)
    labels    -100 (x9)                                    3431 2 2

Truncation (``overlong="truncate"``, default) is MindSpeed's ``Template._make_pairs``: with
budget ``L = seq_length`` (100000 when unset), turn by turn, ``max_t = max(int(L'*t/(s+t)), 1)``
and ``max_s = L' - min(max_t, t)`` against the remaining budget ``L'``; turns after the budget is
spent are dropped. With ``keep_markers`` (packft's ``--overlong truncate``) the same shares
apply to the user/assistant text only and every template marker of the kept turns stays
(:mod:`packft.tokenize.truncation`); without it, samples whose cut prompt lost a marker are counted
(``truncated_marker_lost``). It changes a sample iff its templated length exceeds
``seq_length``, and ``overlong="drop"`` drops exactly those samples instead; both are counted.
The tokens each message keeps are a prefix (MindSpeed) or a mask (markers kept) over the
message's tokens; one boolean index over the batch's token stream applies either. ``--append-eod`` then
appends the eos id to input_ids and labels (trained), so a truncated sample can be
``seq_length + 1`` long, as in MindSpeed; the pack step owns its row capacity.

``pair_cutoff`` (set by preprocess for MindSpeed's ``--neat-pack``) then cuts each turn's
(source, target) pair *on its own* to ``pair_cutoff`` tokens with LLaMA-Factory's
``infer_seqlen`` (:func:`infer_seqlen`): a side under half the cutoff stays whole, else the
target keeps its share. MindSpeed applies it per pair, not to the sum, so a multi-turn sample
can still exceed ``seq_length - 1``; its packer then tail-cuts it. Samples changed by either
cut are counted as truncated.

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

Measured (benchmarks/bench_tokenize.py, 200k samples, Llama-2 tokenizer and template,
``--append-eod --seq-length 4096``, 2 shared cores at load ~1.5): Alpaca en+zh, 49.6M tokens:
18.9 s with 1 worker and 18.8 s with 2 (10.6k samples/s, 2.6M tokens/s), equal to the floor of
one ``tokenizer(texts)`` call over the same texts (18.9 s); ShareGPT, 50.9M tokens: 16.7 s /
17.7 s against a 24.0 s floor (identical system/tool pieces are encoded once per batch). Peak
RSS ~680 MiB for 1 worker (~310 MiB of it is transformers + torch), ~500 MiB per worker, flat
in the number of records.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from packft import __version__
from packft.core.constants import IGNORE_INDEX
from packft.ingest.limits import RecordLimits
from packft.ingest.records import Conversation
from packft.tokenize.options import TokenizeOptions, tokenizer_fingerprint
from packft.tokenize.shards import record_batch
from packft.tokenize.shards import write_shard as write_shard_file
from packft.tokenize.templates import ChatTemplate, Template, get_template, load_tokenizer
from packft.tokenize.truncation import (
    check_flags,
    count_marker_lost,
    cut_keeping_markers,
    flags_over_budget,
    infer_seqlen,
    truncate_turns,
)
from packft.tokenize.workers import choose_workers

log = logging.getLogger(__name__)
DEFAULT_CUTOFF = 100_000  # MindSpeed's cutoff_len when --seq-length is not given


@dataclass
class EncodedBatch:
    """One batch's samples as flat arrays: sample i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int32
    labels: np.ndarray  # int32
    offsets: np.ndarray  # int64, n + 1
    source_rows: np.ndarray  # int64
    truncated: int = 0
    dropped: int = 0
    marker_lost: int = 0  # truncated samples whose prompt lost a template marker
    original_lengths: np.ndarray | None = None  # every valid sample's length before any cut

    def to_record_batch(self) -> pa.RecordBatch:
        return record_batch(self.ids, self.labels, self.offsets, self.source_rows)


@dataclass
class TokenizeStats:
    """Counts of one tokenize run (also stored in the shard; ``seconds`` is not)."""

    samples_in: int = 0
    valid: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    truncated_marker_lost: int = 0
    dropped: int = 0
    written: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_length: int = 0
    length_counts: dict[int, int] = field(default_factory=dict)
    """Samples per length before truncation (eod included), dropped samples too: the
    length plot shows what the data was, not what the cut left (absent in older shards)."""
    template: str = ""
    tokenizer_sha256: str = ""
    input_sha256: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    packft_version: str = __version__
    seconds: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("seconds")
        return json.dumps(data, sort_keys=True)


# --- batch encoding ----------------------------------------------------------------------------


def _encode_strings(tokenizer: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and per-string lengths of ``strings``, in one backend call."""
    encodings = tokenizer._tokenizer.encode_batch_fast(strings, add_special_tokens=False)
    lists = [e.ids for e in encodings]
    lens = np.fromiter(map(len, lists), np.int64, len(lists))
    flat = np.fromiter(chain.from_iterable(lists), np.int32, int(lens.sum()))
    return flat, lens


@dataclass
class RenderedBatch:
    """A batch rendered into its distinct pieces (the Python half of the encode, before Rust)."""

    strings: list[str]
    ints: list[int]
    occ_code: list[int]  # >= 0: index into strings; < 0: -(index into ints) - 1
    occ_msg: list[int]
    msg_sample: list[int]
    msg_trained: list[bool]
    turns_per_sample: list[int]


def render_batch(
    convs: list[Conversation], template: Template | ChatTemplate, tokenizer: Any
) -> RenderedBatch:
    """Step 1 of the module docstring: every piece occurrence, distinct strings collected once."""
    table: dict[str | int, int] = {}
    out = RenderedBatch([], [], [], [], [], [], [])
    strings, ints, occ_code, occ_msg = out.strings, out.ints, out.occ_code, out.occ_msg
    msg_sample, msg_trained = out.msg_sample, out.msg_trained
    for s, conv in enumerate(convs):
        turns = template.render(conv, tokenizer)
        out.turns_per_sample.append(len(turns))
        for turn in turns:
            for trained, pieces in ((False, turn.source), (True, turn.target)):
                m = len(msg_sample)
                for piece in pieces:
                    code = table.get(piece)
                    if code is None:
                        if isinstance(piece, str):
                            code = len(strings)
                            strings.append(piece)
                        else:
                            code = -len(ints) - 1
                            ints.append(piece)
                        table[piece] = code
                    occ_code.append(code)
                    occ_msg.append(m)
                msg_sample.append(s)
                msg_trained.append(trained)
    return out


def encode_rendered(tokenizer: Any, rendered: RenderedBatch) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: the batch's distinct strings through the Rust backend (releases the GIL)."""
    if not rendered.strings:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return _encode_strings(tokenizer, rendered.strings)


def encode_conversations(
    convs: list[Conversation],
    template: Template | ChatTemplate,
    tokenizer: Any,
    options: TokenizeOptions,
) -> EncodedBatch:
    """Render, encode (one backend call) and assemble a batch; see the module docstring."""
    rendered = render_batch(convs, template, tokenizer)
    encoded = encode_rendered(tokenizer, rendered)
    return assemble_batch(convs, template, tokenizer, options, rendered, encoded)


def assemble_batch(
    convs: list[Conversation],
    template: Template | ChatTemplate,
    tokenizer: Any,
    options: TokenizeOptions,
    rendered: RenderedBatch,
    encoded: tuple[np.ndarray, np.ndarray],
) -> EncodedBatch:
    """Step 3: cut and assemble the batch's ids and labels from the encoded piece table."""
    strings, ints, occ_code, occ_msg = (
        rendered.strings, rendered.ints, rendered.occ_code, rendered.occ_msg
    )  # fmt: skip
    msg_sample, msg_trained = rendered.msg_sample, rendered.msg_trained
    turns_per_sample = rendered.turns_per_sample
    flat, str_lens = encoded
    values = np.concatenate([flat, np.asarray(ints, np.int32)])
    piece_lens = np.concatenate([str_lens, np.ones(len(ints), np.int64)])
    piece_starts = np.zeros(len(piece_lens), np.int64)
    np.cumsum(piece_lens[:-1], out=piece_starts[1:])

    codes = np.asarray(occ_code, np.int64)
    idx = np.where(codes >= 0, codes, len(strings) - codes - 1)
    occ_len = piece_lens[idx]
    occ_start = piece_starts[idx]
    occ_m = np.asarray(occ_msg, np.int64)
    n_msg, n = len(msg_sample), len(convs)
    m_sample = np.asarray(msg_sample, np.int64)
    msg_len = np.bincount(occ_m, weights=occ_len, minlength=n_msg).astype(np.int64)
    sample_len = np.bincount(m_sample, weights=msg_len, minlength=n).astype(np.int64)

    cutoff = options.seq_length or DEFAULT_CUTOFF
    over = np.flatnonzero(sample_len > cutoff).tolist()
    keep_sample = np.ones(n, bool)
    keep_msg = msg_len.copy()
    msg_first = np.searchsorted(m_sample, np.arange(n))
    masks: dict[int, np.ndarray] = {}  # message -> tokens kept, where a cut is not a prefix
    token_counts = functools.cache(lambda: dict(zip(strings, str_lens.tolist(), strict=True)))
    flags = flags_over_budget(
        [convs[s] for s in over], template, tokenizer, options.overlong == "drop", token_counts
    )
    for s, sample_flags in zip(over, flags, strict=True):
        first, k = int(msg_first[s]), 2 * turns_per_sample[s]
        if options.overlong == "drop":
            keep_sample[s] = False
            keep_msg[first : first + k] = 0
            continue
        check_flags(sample_flags, msg_len[first : first + k], convs[s])
        cut = cut_keeping_markers(sample_flags, cutoff) if options.keep_markers else None
        if cut is not None:
            masks.update(zip(range(first, first + k), cut, strict=True))
            keep_msg[first : first + k] = [int(mask.sum()) for mask in cut]
            continue
        lens = msg_len[first : first + k].tolist()
        kept = truncate_turns(list(zip(lens[0::2], lens[1::2], strict=True)), cutoff)
        keep_msg[first : first + k] = [x for pair in kept for x in pair]
    if options.pair_cutoff is not None and n_msg:
        pairs = keep_msg.reshape(-1, 2)  # messages alternate source, target: one row per turn
        for p in np.flatnonzero(pairs.sum(axis=1) > options.pair_cutoff).tolist():
            pairs[p] = infer_seqlen(int(pairs[p, 0]), int(pairs[p, 1]), options.pair_cutoff)
    changed = np.bincount(m_sample, weights=keep_msg != msg_len, minlength=n) > 0
    marker_lost = count_marker_lost(
        convs, template, tokenizer, changed & keep_sample, dict(zip(over, flags, strict=True)),
        masks, msg_first, turns_per_sample, keep_msg, token_counts,
    )  # fmt: skip

    # Every token of the batch in order, then the ones each message keeps: a prefix of the
    # message (MindSpeed's cut) or the marker-keeping mask.
    total_full = int(occ_len.sum())
    starts_excl = np.cumsum(occ_len) - occ_len
    gather = np.repeat(occ_start - starts_excl, occ_len) + np.arange(total_full, dtype=np.int64)
    if changed.any():
        msg_base = np.cumsum(msg_len) - msg_len
        position = np.arange(total_full, dtype=np.int64) - np.repeat(msg_base, msg_len)
        keep = position < np.repeat(keep_msg, msg_len)
        for m, mask in masks.items():
            keep[msg_base[m] : msg_base[m] + msg_len[m]] = mask
        gather = gather[keep]
    ids = values[gather]
    trained = np.repeat(np.asarray(msg_trained, bool), keep_msg)  # kept tokens, message by message
    labels = np.where(trained, ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    out_len = np.bincount(m_sample, weights=keep_msg, minlength=n).astype(np.int64)[keep_sample]

    if options.append_eod:
        eos = np.int32(tokenizer.eos_token_id)
        ends = np.cumsum(out_len)
        ids = np.insert(ids, ends, eos)
        labels = np.insert(labels, ends, eos)
        out_len = out_len + 1
    offsets = np.zeros(len(out_len) + 1, np.int64)
    np.cumsum(out_len, out=offsets[1:])
    rows = np.fromiter((c.row for c in convs), np.int64, n)[keep_sample]
    truncated = int(np.count_nonzero(changed & keep_sample))
    dropped = n - int(keep_sample.sum())
    original = sample_len + (1 if options.append_eod else 0)
    return EncodedBatch(ids, labels, offsets, rows, truncated, dropped, marker_lost, original)


# --- running: in-process or an ordered window over spawn workers --------------------------------

_WORKER: tuple[Template | ChatTemplate, Any, TokenizeOptions] | None = None


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
    _WORKER = (template, tokenizer, options)


def _encode_in_worker(convs: list[Conversation]) -> EncodedBatch:
    if _WORKER is None:  # pragma: no cover - the pool initializer always runs first
        raise RuntimeError("tokenize worker used before its initializer ran")
    template, tokenizer, options = _WORKER
    return encode_conversations(convs, template, tokenizer, options)


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
    with ThreadPoolExecutor(1, thread_name_prefix="packft-encode") as rust:
        try:
            for convs in batches:
                rendered = render_batch(convs, template, tokenizer)
                pending.append((convs, rendered, rust.submit(encode_rendered, tokenizer, rendered)))
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
