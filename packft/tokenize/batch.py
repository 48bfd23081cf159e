"""One batch of conversations to token ids and labels: render, one Rust encode, numpy assembly.

Algorithm, per batch of conversations (``--batch-size``, default 2048):

1. Render every conversation with its template into (source, target) pieces per turn
   (:mod:`packft.tokenize.templates`); collect the batch's distinct strings (template constants such
   as ``"\\n"`` or a default system block are encoded once) and token-id pieces.
2. Encode all distinct strings in ONE call to the Rust backend
   (``encode_batch_fast(strings, add_special_tokens=False)``): the only per-token work in Python
   is flattening the returned id lists (``np.fromiter`` over ``itertools.chain``). Strings an
   earlier batch saw repeated come from the run's :class:`~packft.tokenize.string_cache.StringCache`
   instead (same ids).
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
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ConfigDict, Field

from packft import __version__
from packft.core.constants import IGNORE_INDEX
from packft.ingest.records import Conversation
from packft.tokenize.counts import TokenCounts
from packft.tokenize.options import TokenizeOptions
from packft.tokenize.shards import record_batch
from packft.tokenize.string_cache import StringCache, encode_strings
from packft.tokenize.templates import ChatTemplate, Template
from packft.tokenize.truncation import (
    check_flags,
    count_marker_lost,
    cut_keeping_markers,
    flags_over_budget,
    infer_seqlen,
    truncate_turns,
)

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


class TokenizeStats(TokenCounts):
    """Counts of one tokenize run, filled as it goes (also stored in the shard; ``seconds`` is
    not)."""

    model_config = ConfigDict(frozen=False)

    samples_in: int = 0
    valid: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    repaired: dict[str, int] = Field(default_factory=dict)
    template: str = ""
    tokenizer_sha256: str = ""
    input_sha256: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    packft_version: str = __version__
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude={"seconds"}), sort_keys=True)


# --- batch encoding ----------------------------------------------------------------------------


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


def encode_rendered(
    tokenizer: Any, rendered: RenderedBatch, cache: StringCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: the batch's distinct strings through the Rust backend (releases the GIL); with a
    ``cache`` (:mod:`packft.tokenize.string_cache`) the strings of earlier batches it kept are
    not encoded again (same ids)."""
    if not rendered.strings:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    if cache is None:
        return encode_strings(tokenizer, rendered.strings)
    return cache.encode(tokenizer, rendered.strings)


def encode_conversations(
    convs: list[Conversation],
    template: Template | ChatTemplate,
    tokenizer: Any,
    options: TokenizeOptions,
    cache: StringCache | None = None,
) -> EncodedBatch:
    """Render, encode (one backend call) and assemble a batch; see the module docstring."""
    rendered = render_batch(convs, template, tokenizer)
    encoded = encode_rendered(tokenizer, rendered, cache)
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
