"""Tokenize step: MindSpeed parity, truncation, streaming, workers, shard format."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packft.dataset.indexed import IndexedDataset, sft_prefix
from packft.ingest.records import Conversation, Message
from packft.ingest.rejects import InvalidRecordError
from packft.tokenize.batch import encode_conversations
from packft.tokenize.encode import tokenize_batches, tokenize_file
from packft.tokenize.options import TokenizeOptions
from packft.tokenize.shards import ShardError, ShardReader, read_header, read_lengths, read_stats
from packft.tokenize.templates import get_template, load_tokenizer
from packft.tokenize.truncation import infer_seqlen
from tests.helpers.mindspeed_reference import mindspeed_tokenize

X = -100


@cache
def _tok(path: str, template: str):
    return load_tokenizer(path, template)


def _conv(*turns: str, system: str = "", row: int = -1) -> Conversation:
    roles = ["user", "assistant"]
    msgs = [Message(roles[i % 2], t) for i, t in enumerate(turns)]
    return Conversation(msgs, system=system, row=row)


# --- THE acceptance check: MindSpeed-LLM's own output -------------------------------------------


def test_alpaca_llama2_matches_mindspeed_reference(
    tmp_path, alpaca_en_path, llama2_tokenizer_dir, reference_dir
):
    shard = tmp_path / "alpaca.arrow"
    stats = tokenize_file(
        alpaca_en_path,
        shard,
        fmt="alpaca",
        tokenizer_path=llama2_tokenizer_dir,
        template="llama2",
        options=TokenizeOptions(seq_length=4096, append_eod=True),
    )
    prefix = reference_dir / "mindspeed_alpaca_llama2_nopack4096" / "alpaca"
    ref = {k: IndexedDataset(sft_prefix(prefix, k)) for k in ("input_ids", "labels")}
    mask = IndexedDataset(sft_prefix(prefix, "attention_mask"))
    reader = ShardReader(shard)
    assert len(ref["input_ids"]) == reader.num_samples == stats.written == 999
    for i in range(999):
        ids, labels = reader.sample(i)
        np.testing.assert_array_equal(ids, ref["input_ids"][i], err_msg=f"input_ids {i}")
        np.testing.assert_array_equal(labels, ref["labels"][i], err_msg=f"labels {i}")
        np.testing.assert_array_equal(mask[i], np.ones(len(ids), np.int32))
    assert reader.source_rows.tolist() == list(range(999))
    assert stats.tokens == int(ref["input_ids"].lengths.sum())
    assert stats.supervised_tokens == sum(int((ref["labels"][i] != X).sum()) for i in range(999))


# --- truncation (MindSpeed's infer_max_len / _make_pairs), hand-computed ------------------------

# llama2: turn 1 = [1] + "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]" (31) and
# "4" + eos (3); turn 2 = [1] + "[INST] And 3+3? [/INST]" (14) and "6" + eos (3). Total 51.
TWO_TURNS = _conv("What is 2+2?", "4", "And 3+3?", "6", system="Be brief.")
T1_SRC = [1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3629, 11473, 29889, 13, 29966]
T1_SRC += [829, 14816, 29903, 6778, 13, 13, 5618, 338, 29871, 29906, 29974, 29906, 29973, 518]
T1_SRC += [29914, 25580, 29962]
T1_TGT = [29871, 29946, 2]


def _encode(convs, seq_length, **kw):
    tok = _tok(str(_encode.tok_dir), "llama2")
    opts = TokenizeOptions(seq_length=seq_length, **kw)
    return encode_conversations(convs, get_template("llama2"), tok, opts)


@pytest.fixture(autouse=True)
def _llama2_dir(llama2_tokenizer_dir):
    _encode.tok_dir = llama2_tokenizer_dir


def _sample(b, i):
    s, e = b.offsets[i], b.offsets[i + 1]
    return b.ids[s:e].tolist(), b.labels[s:e].tolist()


def test_truncation_cuts_second_turn_proportionally():
    # Budget 40: turn 1 fits (34). Turn 2 gets L'=6: max_t = max(int(6*3/17), 1) = 1, max_s = 5.
    b = _encode([TWO_TURNS], 40)
    ids, labels = _sample(b, 0)
    assert ids == T1_SRC + T1_TGT + [1, 518, 25580, 29962, 1126] + [29871]
    assert labels == [X] * 31 + T1_TGT + [X] * 5 + [29871]
    assert b.truncated == 1 and b.dropped == 0


def test_truncation_drops_turns_after_budget_and_cuts_first_turn():
    b = _encode([TWO_TURNS], 34)  # turn 1 uses all 34: turn 2 disappears
    assert _sample(b, 0)[0] == T1_SRC + T1_TGT
    # Budget 20: max_t = max(int(20*3/34), 1) = 1, max_s = 19; eod appended after the cut.
    b = _encode([TWO_TURNS], 20, append_eod=True)
    ids, labels = _sample(b, 0)
    assert ids == T1_SRC[:19] + [29871, 2]
    assert labels == [X] * 19 + [29871, 2]


def test_samples_that_fit_are_untouched_and_drop_mode_counts():
    short = _conv("hi", "ok", row=7)
    b = _encode([TWO_TURNS, short], 51)
    assert b.truncated == 0 and len(_sample(b, 0)[0]) == 51
    b = _encode([TWO_TURNS, short], 50, overlong="drop")
    assert (b.dropped, b.truncated, b.source_rows.tolist()) == (1, 0, [7])
    assert _sample(b, 0)[0] == [1, 518, 25580, 29962, 7251, 518, 29914, 25580, 29962, 3431, 2]
    # lengths before any cut: the dropped sample is counted too (the length plot shows it)
    assert b.original_lengths.tolist() == [51, 11]


def test_infer_seqlen_hand_computed():
    # short target (2*3 < 10): the target stays whole, the source gets the rest
    assert infer_seqlen(20, 3, 10) == (7, 3)
    # short source (2*4 < 10): the target gets the rest
    assert infer_seqlen(4, 20, 10) == (4, 6)
    # both long: the target keeps its share int(10 * 12/20) = 6, the source the rest
    assert infer_seqlen(8, 12, 10) == (4, 6)
    assert infer_seqlen(3, 4, 10) == (3, 4)  # fits: unchanged


def test_pair_cutoff_cuts_each_turn_alone():
    # TWO_TURNS: turn 1 is (31, 3), turn 2 (14, 3). Pair cutoff 20 cuts turn 1 to (17, 3) since
    # 2*3 < 20, and leaves turn 2 (17 tokens) whole: the sample is 37 > 20 tokens.
    b = _encode([TWO_TURNS], 4096, pair_cutoff=20)
    ids, labels = _sample(b, 0)
    turn2 = [1, 518, 25580, 29962, 1126, 29871, 29941, 29974, 29941, 29973, 518, 29914, 25580]
    turn2 += [29962]
    assert ids == T1_SRC[:17] + T1_TGT + turn2 + [29871, 29953, 2]
    assert labels == [X] * 17 + T1_TGT + [X] * 14 + [29871, 29953, 2]
    assert b.truncated == 1


WORDS = st.sampled_from(["hi", "ok", "the cat", "数据", " x", "\n", "2+2=4.", "why?", "éé"])
TEXT = st.lists(WORDS, min_size=1, max_size=12).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    convs=st.lists(
        st.tuples(st.lists(TEXT, min_size=2, max_size=8), st.sampled_from(["", "Sys"])),
        min_size=1,
        max_size=5,
    ),
    template=st.sampled_from(["llama2", "qwen", "alpaca"]),
    cutoff=st.integers(2, 80),
    append_eod=st.booleans(),
    pair_cutoff=st.one_of(st.none(), st.integers(1, 40)),
)
def test_batch_assembly_equals_per_sample_reference(
    convs, template, cutoff, append_eod, pair_cutoff, llama2_tokenizer_dir, qwen_tokenizer_dir
):
    tok_dir = qwen_tokenizer_dir if template == "qwen" else llama2_tokenizer_dir
    tok = _tok(str(tok_dir), template)
    tpl = get_template(template)
    batch = [
        _conv(*texts[: len(texts) // 2 * 2], system=system, row=i)
        for i, (texts, system) in enumerate(convs)
    ]
    opts = TokenizeOptions(seq_length=cutoff, append_eod=append_eod, pair_cutoff=pair_cutoff)
    b = encode_conversations(batch, tpl, tok, opts)
    changed = 0
    for i, conv in enumerate(batch):
        want = mindspeed_tokenize(conv, tpl, tok, cutoff, append_eod, pair_cutoff)
        assert _sample(b, i) == want
        changed += want != mindspeed_tokenize(conv, tpl, tok, 10**9, append_eod)
    assert b.truncated == changed


# --- files, workers, streaming, shard format ----------------------------------------------------


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_workers_give_byte_identical_shards_and_counts(tmp_path, sharegpt_system_path):
    # qwen on the Llama-2 tokenizer: workers must rebuild the added <|im_end|> eos too.
    rows = json.loads(sharegpt_system_path.read_text())[:300]
    rows[5] = {"conversations": [{"from": "human", "value": "only a question"}]}
    rows[77] = {
        "conversations": [{"from": "gpt", "value": "no question"}, {"from": "human", "value": "?"}]
    }
    data = _write_jsonl(tmp_path / "chat.jsonl", rows)
    out = {}
    for workers in (1, 2):
        opts = TokenizeOptions(seq_length=128, append_eod=True, batch_size=64, workers=workers)
        out[workers] = tmp_path / f"w{workers}" / "chat.arrow"
        stats = tokenize_file(
            data,
            out[workers],
            fmt="sharegpt",
            tokenizer_path=_encode.tok_dir,
            template="qwen",
            options=opts,
        )
        assert (stats.samples_in, stats.valid, sum(stats.rejected.values())) == (300, 298, 2)
        assert stats.written == 298 and stats.truncated > 0
    assert out[1].read_bytes() == out[2].read_bytes()
    reader = ShardReader(out[1])
    assert 5 not in reader.source_rows and 77 not in reader.source_rows
    ids, labels = reader.sample(0)
    assert ids[-1] == labels[-1] == 32000  # the eod is the replaced eos, <|im_end|>
    rejects = (tmp_path / "w1" / "chat.arrow.rejects.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["row"] for line in rejects) == [5, 77]
    assert read_stats(out[1])["rejected"] == stats.rejected


@pytest.mark.slow
def test_hf_template_workers_byte_identical(tmp_path, sharegpt_toolcall_path, qwen_tokenizer_dir):
    out = {}
    for workers in (1, 2):
        out[workers] = tmp_path / f"tc{workers}.arrow"
        tokenize_file(
            sharegpt_toolcall_path,
            out[workers],
            fmt="sharegpt",
            tokenizer_path=qwen_tokenizer_dir,
            template="hf",
            options=TokenizeOptions(seq_length=4096, batch_size=100, workers=workers),
        )
    assert out[1].read_bytes() == out[2].read_bytes()
    assert ShardReader(out[1]).num_samples == 300


def test_shard_reader_samples_header_and_stats(tmp_path, alpaca_zh_path, llama2_tokenizer_dir):
    shard = tmp_path / "zh.arrow"
    stats = tokenize_file(
        alpaca_zh_path,
        shard,
        fmt="alpaca",
        tokenizer_path=llama2_tokenizer_dir,
        template="llama2",
        options=TokenizeOptions(seq_length=300, batch_size=128),
    )
    r = ShardReader(shard)
    assert r.lengths.dtype == np.int32 and r.lengths.max() <= 300
    assert np.array_equal(read_lengths(shard), r.lengths)
    table = pa.ipc.open_file(shard).read_all()
    ids0, labels0 = r.sample(3)
    assert ids0.tolist() == table["input_ids"][3].as_py()
    assert labels0.tolist() == table["labels"][3].as_py()
    assert r.source_rows.tolist() == table["source_row"].to_pylist()
    saved = read_stats(shard)
    assert saved["tokens"] == int(r.lengths.sum()) == stats.tokens
    assert saved["supervised_tokens"] == int(
        np.count_nonzero(table.column("labels").combine_chunks().flatten().to_numpy() != X)
    )
    assert saved["truncated"] == stats.truncated > 0  # some zh samples exceed 300 tokens
    before = {int(k): v for k, v in saved["length_counts"].items()}  # pre-truncation lengths
    assert sum(before.values()) == saved["valid"] == len(r.lengths)
    assert sum(n for length, n in before.items() if length > 300) == saved["truncated"]
    assert sum(k * n for k, n in before.items()) > saved["tokens"]  # the cut tokens
    assert stats.length_counts == before
    assert r.header["template"] == "llama2" and r.header["options"]["seq_length"] == 300
    # the write step pads and sizes input_ids from these, without loading the tokenizer
    tok = _tok(str(llama2_tokenizer_dir), "llama2")
    assert (r.header["pad_id"], r.header["eos_id"], r.header["vocab_size"]) == (2, 2, len(tok))
    assert read_header(shard) == r.header


def test_streaming_reads_ahead_at_most_one_batch(llama2_tokenizer_dir):
    consumed = []

    def source():
        for i in range(10):
            consumed.append(i)
            yield [_conv("hi", "ok", row=i)]

    tok = _tok(str(llama2_tokenizer_dir), "llama2")
    it = tokenize_batches(source(), llama2_tokenizer_dir, "llama2", TokenizeOptions(), tok)
    first = next(it)
    # the pipeline reads and renders batch k+1 while Rust encodes batch k: one batch ahead
    assert consumed == [0, 1] and first.source_rows.tolist() == [0]
    assert sum(len(b.source_rows) for b in it) == 9


def test_fail_mode_leaves_no_output(tmp_path, llama2_tokenizer_dir):
    data = _write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}, {"x": 1}])
    out = tmp_path / "out" / "a.arrow"
    with pytest.raises(InvalidRecordError, match=r"a\.jsonl:2: missing_field"):
        tokenize_file(
            data,
            out,
            fmt="alpaca",
            tokenizer_path=llama2_tokenizer_dir,
            template="llama2",
            on_invalid="fail",
        )
    # No shard and no temporary file; only the rejects log naming the bad record.
    assert [p.name for p in out.parent.iterdir()] == ["a.arrow.rejects.jsonl"]


def test_bad_options_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        TokenizeOptions(seq_length=1, overlong="split", workers=0)
    assert all(w in str(err.value) for w in ("seq_length", "overlong", "workers"))
    with pytest.raises(FileNotFoundError, match="packft preprocess"):
        ShardReader(tmp_path / "missing.arrow")
    other = tmp_path / "other.arrow"
    with pa.ipc.new_file(str(other), pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": [1]}))
    with pytest.raises(ShardError, match="not a packft tokenize shard"):
        ShardReader(other)
