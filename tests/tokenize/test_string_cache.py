"""The cross-batch string cache (packft.tokenize.string_cache) changes no id, stores what repeats,
nothing of all-distinct data, and never more than its byte budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packft.ingest.records import Conversation, Message
from packft.tokenize import TokenizeOptions
from packft.tokenize.batch import encode_conversations
from packft.tokenize.encode import _pipelined
from packft.tokenize.string_cache import StringCache, encode_strings, max_bytes_from_env
from packft.tokenize.templates import get_template, load_tokenizer

SYSTEM = "You are a careful assistant. Answer briefly and cite the input when there is one."


def alpaca_convs(path, n: int, system: str = "") -> list[Conversation]:
    rows = json.loads(path.read_text())[:n]
    return [
        Conversation([Message("user", r["instruction"] + ("\n" + r["input"] if r["input"] else "")),
                      Message("assistant", r["output"])], system=system, row=i)
        for i, r in enumerate(rows)
    ]  # fmt: skip


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("ids", "labels", "offsets", "source_rows"))  # fmt: skip


@pytest.mark.parametrize("template", ["llama2", "qwen"])
def test_cache_changes_no_id(template, alpaca_en_path, llama2_tokenizer_dir, qwen_tokenizer_dir):
    """Records repeated across batches of 16 (three passes over 60 records, a system prompt),
    some cut at 128 tokens: every batch equals its encode without a cache, and the cache hit."""
    directory = llama2_tokenizer_dir if template == "llama2" else qwen_tokenizer_dir
    tokenizer = load_tokenizer(str(directory), template)
    tpl = get_template(template)
    convs = alpaca_convs(alpaca_en_path, 60, SYSTEM) * 3
    batches = [convs[i : i + 16] for i in range(0, len(convs), 16)]
    options = TokenizeOptions(seq_length=128, append_eod=True)
    cache = StringCache()
    for batch in batches:
        got = encode_conversations(batch, tpl, tokenizer, options, cache)
        assert same(got, encode_conversations(batch, tpl, tokenizer, options))
    assert cache.hits > 0 and len(cache.ids) > 0 and cache.bytes <= cache.max_bytes


def test_the_key_is_exactly_the_encoded_text(llama2_tokenizer_dir) -> None:
    """SentencePiece encodes a piece by where it starts ("ok" vs " ok"), special-token text
    inside a string becomes its id: a cached string gives what encoding it alone gives."""
    tokenizer = load_tokenizer(str(llama2_tokenizer_dir), "llama2")
    tricky = ["ok", " ok", "ok ", "\nok", "[INST] ok [/INST]", "ok</s>", "<s>ok", "\u00e9t\u00e9",
              "  ", "\n"]  # fmt: skip
    alone = [encode_strings(tokenizer, [s])[0] for s in tricky]
    # a piece's ids are not a function of its parts: the cache must key the whole piece
    ok_ok = encode_strings(tokenizer, ["okok"])[0].tolist()
    assert ok_ok != alone[0].tolist() * 2 and alone[2].tolist() != alone[0].tolist()
    cache = StringCache()
    for _ in range(3):  # first pass: seen once; second: stored; third: every one a hit
        flat, lens = cache.encode(tokenizer, tricky)
        ends = np.cumsum(lens)
        pieces = [flat[e - n : e].tolist() for e, n in zip(ends, lens, strict=True)]
        assert pieces == [a.tolist() for a in alone]
    assert set(cache.ids) == set(tricky) and cache.hits == len(tricky)
    # mixed: some cached, some new, order kept
    mixed = ["new one", "ok", "another", " ok"]
    flat, lens = cache.encode(tokenizer, mixed)
    want_flat, want_lens = encode_strings(tokenizer, mixed)
    assert np.array_equal(flat, want_flat) and np.array_equal(lens, want_lens)
    assert flat.dtype == np.int32


def test_all_distinct_data_stores_nothing_and_the_budget_holds(llama2_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(llama2_tokenizer_dir), "llama2")
    cache = StringCache()
    for b in range(5):
        cache.encode(tokenizer, [f"record {b}-{i} says hello" for i in range(200)])
    assert cache.ids == {} and cache.bytes == 0 and cache.hits == 0
    small = StringCache(max_bytes=2000)
    texts = [f"repeated text number {i} " * 3 for i in range(50)]
    for _ in range(3):
        flat, lens = small.encode(tokenizer, texts)
        assert np.array_equal(flat, encode_strings(tokenizer, texts)[0])
    assert 0 < len(small.ids) < len(texts) and small.bytes <= 2000


def test_pipeline_uses_the_cache_and_env_turns_it_off(
    alpaca_en_path, qwen_tokenizer_dir, monkeypatch, caplog
) -> None:
    tokenizer = load_tokenizer(str(qwen_tokenizer_dir), "qwen")
    tpl = get_template("qwen")
    convs = alpaca_convs(alpaca_en_path, 50, SYSTEM) * 2
    batches = [convs[i : i + 20] for i in range(0, len(convs), 20)]
    options = TokenizeOptions(seq_length=256, append_eod=True)
    results = {}
    for setting in ("0", "64"):
        monkeypatch.setenv("PACKFT_STRING_CACHE_MB", setting)
        caplog.clear()
        with caplog.at_level("INFO", logger="packft.tokenize.encode"):
            results[setting] = list(_pipelined(iter(batches), tpl, tokenizer, options))
        line = next(r.message for r in caplog.records if r.message.startswith("string cache:"))
        hits = int(line.split()[2])
        assert (hits == 0) if setting == "0" else (hits > 0), line
    assert all(same(a, b) for a, b in zip(results["0"], results["64"], strict=True))
    monkeypatch.setenv("PACKFT_STRING_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="PACKFT_STRING_CACHE_MB='lots'"):
        max_bytes_from_env()
