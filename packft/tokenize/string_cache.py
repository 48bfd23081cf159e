"""Token ids of repeated strings across batches: a system prompt or a template block is encoded
once per run, not once per batch.

Every string piece of a rendered conversation is encoded on its own, always with
``encode_batch_fast(strings, add_special_tokens=False)`` (:mod:`packft.tokenize.batch`), so the
ids of a string do not depend on what else is in its batch: the cache key is exactly the text that
is encoded, and special tokens (BOS, EOS, role ids) are never part of it (they are int pieces,
not strings). The output is byte-identical with the cache on or off
(tests/tokenize/test_string_cache.py, incl. Llama-2's SentencePiece, whose encoding of a piece
depends on where the piece starts, and Qwen2.5's byte-level BPE).

Policy (bounded, no churn on all-distinct data):

* **admission on the second sighting**: a string missing from the cache is remembered by its
  ``hash()`` in a *doorkeeper* set (at most :data:`DOORKEEPER_ENTRIES`, cleared when full, ~5 MiB);
  seen again in a later batch, its ids are stored. All-distinct data therefore stores nothing and
  pays one dict lookup and one set insert per distinct string of a batch (within a batch, strings
  are already deduplicated before encoding);
* **keep-first, by bytes**: entries are added while their total (text + ids + per-entry overhead)
  stays under ``max_bytes`` (``PACKFT_STRING_CACHE_MB``, default 64; 0 turns the cache off); once
  full, nothing is evicted or added. Strings repeated across a run are usually repeated from its
  start (system prompts, template blocks, a file of repeated records), so the first ones are kept.

One cache per tokenize run and per worker process; only the thread that runs the encode uses it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_MAX_MB = 64
DOORKEEPER_ENTRIES = 1 << 16
"""Hashes of strings seen once, before the set is cleared (~80 bytes each)."""
ENTRY_OVERHEAD = 200
"""Bytes per entry besides the text and the ids (dict slot, array header)."""
ENV = "PACKFT_STRING_CACHE_MB"


def max_bytes_from_env() -> int:
    """``PACKFT_STRING_CACHE_MB`` in bytes (default 64 MiB; 0: no cache).

    Raises:
        ValueError: not a non-negative number.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MB << 20
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{ENV}={raw!r}: expected a number of MiB >= 0 (0 turns the cache off)")
    return int(value * (1 << 20))


def encode_strings(tokenizer: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 ids and per-string lengths of ``strings``, in one backend call."""
    from itertools import chain

    encodings = tokenizer._tokenizer.encode_batch_fast(strings, add_special_tokens=False)
    lists = [e.ids for e in encodings]
    lens = np.fromiter(map(len, lists), np.int64, len(lists))
    flat = np.fromiter(chain.from_iterable(lists), np.int32, int(lens.sum()))
    return flat, lens


@dataclass
class StringCache:
    """Text -> int32 ids, bounded by ``max_bytes`` (see the module doc for the policy)."""

    max_bytes: int = DEFAULT_MAX_MB << 20
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    bytes: int = 0
    hits: int = 0
    misses: int = 0

    def encode(self, tokenizer: Any, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`encode_strings` of ``strings``; cached ones are not sent to the backend."""
        if self.max_bytes <= 0:
            return encode_strings(tokenizer, strings)
        found = [self.ids.get(s) for s in strings] if self.ids else [None] * len(strings)
        missing = [i for i, ids in enumerate(found) if ids is None]
        self.hits += len(strings) - len(missing)
        self.misses += len(missing)
        if len(missing) == len(strings):
            flat, lens = encode_strings(tokenizer, strings)
            self._admit(strings, flat, lens)
            return flat, lens
        if missing:
            new = [strings[i] for i in missing]
            flat, lens = encode_strings(tokenizer, new)
            self._admit(new, flat, lens)
            ends = np.cumsum(lens).tolist()
            for i, start, end in zip(missing, [0, *ends[:-1]], ends, strict=True):
                found[i] = flat[start:end]
        lens = np.fromiter(map(len, found), np.int64, len(found))
        return np.concatenate(found).astype(np.int32, copy=False), lens

    def _admit(self, strings: list[str], flat: np.ndarray, lens: np.ndarray) -> None:
        """Store the strings seen before (doorkeeper), while the byte budget allows."""
        if self.max_bytes - self.bytes < ENTRY_OVERHEAD:  # full: keep what is there
            return
        seen, start = self.seen, 0
        for text, length in zip(strings, lens.tolist(), strict=True):
            key = hash(text)
            if key not in seen:
                if len(seen) >= DOORKEEPER_ENTRIES:
                    seen.clear()
                seen.add(key)
            else:
                size = sys.getsizeof(text) + 4 * length + ENTRY_OVERHEAD
                if self.bytes + size <= self.max_bytes:
                    self.ids[text] = flat[start : start + length].copy()
                    self.bytes += size
            start += length
