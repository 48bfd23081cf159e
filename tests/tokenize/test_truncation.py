"""Truncation of long prompts: markers kept (``--overlong truncate``) or counted when lost (drop).

Real Llama-2 and Qwen2.5 tokenizers from tests/assets. MindSpeed's own cut stays byte-identical
(``test_tokenize.py``/``test_preprocess.py``); here: where the markers are and what is trained.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packft.ingest.records import Conversation, Message
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.steps import preprocess
from packft.tokenize.batch import encode_conversations
from packft.tokenize.options import TokenizeOptions
from packft.tokenize.shards import ShardReader
from packft.tokenize.templates import get_template, load_tokenizer
from packft.tokenize.truncation import cut_keeping_markers, prompt_marker_lost
from tests.helpers.mindspeed_reference import mindspeed_tokenize

X = -100
ASSETS = Path(__file__).resolve().parents[1] / "assets"
LLAMA2_OPEN = [1, 518, 25580, 29962]  # <s> ▁[ INST ]
LLAMA2_CLOSE = [518, 29914, 25580, 29962]  # ▁[ / INST ]
LONG = " ".join(f"word{i}" for i in range(300))  # ~1200 tokens of user text


@cache
def _tok(template: str):
    name = "llama2-tokenizer" if template == "llama2" else "qwen2.5-tokenizer"
    return load_tokenizer(ASSETS / name, template)


def _enc(template: str, convs: list[Conversation], budget: int, keep: bool, eod: bool = False):
    opts = TokenizeOptions(seq_length=budget, keep_markers=keep, append_eod=eod)
    return encode_conversations(convs, get_template(template), _tok(template), opts)


def _conv(*turns: str, system: str = "") -> Conversation:
    return Conversation([Message(("user", "assistant")[i % 2], t) for i, t in enumerate(turns)],
                        system=system)  # fmt: skip


def _ids(text: str, template: str) -> list[int]:
    return _tok(template).encode(text, add_special_tokens=False)


def test_llama2_long_prompt_keeps_inst_markers_and_trains_the_answer() -> None:
    conv = _conv(LONG, "Short answer.")
    b = _enc("llama2", [conv], 100, keep=True, eod=True)
    ids, labels = b.ids.tolist(), b.labels.tolist()
    answer = _ids("Short answer.", "llama2")
    assert len(ids) == 101  # the budget, then the eod
    assert ids[:4] == LLAMA2_OPEN
    src_end = next(i for i, x in enumerate(labels) if x != X)
    assert ids[src_end - 4 : src_end] == LLAMA2_CLOSE  # [/INST] right before the answer
    # the answer gets MindSpeed's share of the text budget (1 token here), then its eos + eod
    assert ids[src_end:] == answer[:1] + [2, 2] and labels[src_end:] == ids[src_end:]
    assert labels[:src_end] == [X] * src_end
    text = _tok("llama2").decode(ids[4 : src_end - 4])
    assert LONG.startswith(text.strip()) and len(text) > 200  # a prefix of the user's text
    assert (b.truncated, b.marker_lost) == (1, 0)
    # MindSpeed's cut of the same sample: the prompt is cut through [/INST], and counted
    ms = _enc("llama2", [conv], 100, keep=False, eod=True)
    assert (ms.truncated, ms.marker_lost) == (1, 1)
    ref_ids, ref_labels = mindspeed_tokenize(
        conv, get_template("llama2"), _tok("llama2"), 100, True
    )
    assert ms.ids.tolist() == ref_ids and ms.labels.tolist() == ref_labels
    assert LLAMA2_CLOSE[1:] not in [ref_ids[i : i + 3] for i in range(len(ref_ids))]


def test_qwen_long_prompt_keeps_chatml_markers() -> None:
    conv = _conv(LONG, "The answer is four.")
    b = _enc("qwen", [conv], 80, keep=True)
    tok = _tok("qwen")
    ids, labels = b.ids.tolist(), b.labels.tolist()
    head = _ids("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "qwen")
    head += _ids("<|im_start|>user\n", "qwen")
    close = _ids("<|im_end|>\n<|im_start|>assistant\n", "qwen")
    answer = _ids("The answer is four.", "qwen") + [tok.eos_token_id]
    assert tok.eos_token_id == 151645 and len(ids) == 80
    assert ids[: len(head)] == head
    # MindSpeed's share of a 5-token answer in 80: int(text budget * 5 / (text + 5)) -> cut too
    kept_answer = labels[labels.index(next(x for x in labels if x != X)) :]
    assert kept_answer[-1] == 151645 and kept_answer[:-1] == answer[: len(kept_answer) - 1]
    src_end = len(ids) - len(kept_answer)
    assert ids[src_end - len(close) : src_end] == close
    assert labels[:src_end] == [X] * src_end
    assert LONG.startswith(tok.decode(ids[len(head) : src_end - len(close)]))
    assert (b.truncated, b.marker_lost) == (1, 0)
    ms = _enc("qwen", [conv], 80, keep=False)
    assert ms.marker_lost == 1 and close[-2] not in ms.ids.tolist()[len(head) :]


def test_later_turns_keep_markers_or_go_whole() -> None:
    conv = _conv("Hi", "Hello!", LONG, "Sure.", "Thanks", "Bye.")
    b = _enc("llama2", [conv], 60, keep=True)
    ids = b.ids.tolist()
    turn1 = LLAMA2_OPEN + _ids("Hi", "llama2") + LLAMA2_CLOSE + _ids("Hello!", "llama2") + [2]
    assert ids[: len(turn1)] == turn1
    rest = ids[len(turn1) :]
    assert rest[:4] == LLAMA2_OPEN and rest[-1] == 2 and len(ids) == 60
    assert [rest[i : i + 4] for i in range(len(rest))].count(LLAMA2_CLOSE) == 1  # turn 3: gone
    assert b.marker_lost == 0
    # cut exactly at a turn boundary: truncated, yet no marker lost, in either mode
    for keep in (True, False):
        at_boundary = _enc("llama2", [_conv("Hi", "Hello!", "More?", "No.")], len(turn1), keep)
        assert at_boundary.ids.tolist() == turn1
        assert (at_boundary.truncated, at_boundary.marker_lost) == (1, 0)


def test_system_prompt_over_budget_falls_back_to_mindspeed_and_counts() -> None:
    conv = _conv("q", "a", system=LONG)
    keep = _enc("llama2", [conv], 64, keep=True)
    ms = _enc("llama2", [conv], 64, keep=False)
    assert keep.ids.tolist() == ms.ids.tolist() and keep.labels.tolist() == ms.labels.tolist()
    assert (keep.truncated, keep.marker_lost) == (1, 1)


def test_rules_on_flags_by_hand() -> None:
    # one turn: prompt = 3 markers + 6 text, answer = 2 text + 1 marker; budget 8
    src = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0], bool)
    tgt = np.array([1, 1, 0], bool)
    masks = cut_keeping_markers([src, tgt], 8)
    # markers 4, text budget 4: max_t = max(int(4 * 2/8), 1) = 1, max_s = 3
    assert masks[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 1]
    assert masks[1].tolist() == [1, 0, 1]
    assert cut_keeping_markers([src, tgt], 4) is None  # markers alone are 4: no text fits
    assert prompt_marker_lost([src, tgt], [8, 1])  # the last prompt token is a marker
    assert not prompt_marker_lost([src, tgt], [9, 1])
    assert not prompt_marker_lost([src, tgt, src, tgt], [9, 3, 0, 0])  # a dropped turn


WORDS = st.sampled_from(["hi", "ok", "the cat", "数据", " x", "\n", "2+2=4.", "[INST]", "éé"])
TEXT = st.lists(WORDS, min_size=1, max_size=40).map(" ".join)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=st.lists(TEXT, min_size=2, max_size=6).filter(lambda t: len(t) % 2 == 0),
       system=st.sampled_from(["", "Sys"]), budget=st.integers(24, 160))  # fmt: skip
def test_llama2_every_kept_turn_is_well_formed(turns, system, budget) -> None:
    """Property: each kept turn is <s>[INST] text-prefix [/INST] answer-prefix </s>, the sample
    fits the budget, labels are the answers and their eos, and nothing that fits is changed."""
    conv = _conv(*turns, system=system)
    full = _enc("llama2", [conv], 100_000, keep=True)
    b = _enc("llama2", [conv], budget, keep=True)
    ids, labels = b.ids.tolist(), b.labels.tolist()
    if len(full.ids) <= budget:
        assert ids == full.ids.tolist() and b.truncated == 0
        return
    assert b.truncated == 1 and len(ids) <= budget
    if b.marker_lost:  # only when the first turn's markers alone exceed the budget
        ms = _enc("llama2", [conv], budget, keep=False)
        assert ids == ms.ids.tolist() and labels == ms.labels.tolist()
        smallest = _enc("llama2", [_conv("x", "y", system=system)], 100_000, keep=True)
        assert len(smallest.ids) > budget  # markers + 1-character texts do not fit
        return
    starts = [i for i, t in enumerate(ids) if t == 1]
    assert starts[0] == 0
    for n, (a, z) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=True)):
        turn, lab = ids[a:z], labels[a:z]
        assert turn[:4] == LLAMA2_OPEN and turn[-1] == 2
        close = max(i for i in range(len(turn)) if turn[i : i + 4] == LLAMA2_CLOSE) + 4
        assert lab[:close] == [X] * close and lab[close:] == turn[close:]
        answer = _ids(turns[2 * n + 1], "llama2")
        assert turn[close:-1] == answer[: len(turn) - close - 1]


def test_preprocess_counts_marker_loss_only_in_mindspeed_mode(tmp_path: Path) -> None:
    """The FastChat ShareGPT asset at seq 64: MindSpeed-identical mode counts the samples whose
    prompt lost [/INST] (checked against a transcription of MindSpeed's rule); truncate mode
    keeps [/INST] in every turn and counts none."""
    data = ASSETS / "sharegpt" / "fastchat_dummy_conversation_with_system.json"
    base = dict(input=str(data), tokenizer_name_or_path=str(ASSETS / "llama2-tokenizer"),
                prompt_type="llama2", handler_name="SharegptStyleInstructionHandler", pack=True,
                append_eod=True, seq_length=64, cache_dir=str(tmp_path / "c"),
                map_keys={"system": None})  # fmt: skip
    drop = preprocess(PreprocessConfig(**base, output_prefix=str(tmp_path / "d"),
                                       overlong="drop", pack_algorithm="knapsack"))  # fmt: skip
    tok, tpl = _tok("llama2"), get_template("llama2")
    from packft.ingest.formats import to_conversation

    lost = 0
    for record in json.loads(data.read_text()):
        conv = to_conversation(record, "sharegpt", {"system": None})
        total, cut = 0, False
        for turn in tpl.render(conv, tok):
            s, t = (sum(1 if isinstance(p, int) else len(tok.encode(p, add_special_tokens=False))
                        for p in side) for side in turn)  # fmt: skip
            if total >= 64:
                break
            max_t = max(int((64 - total) * t / (s + t)), 1)
            kept_s = min(s, 64 - total - min(max_t, t))
            cut |= kept_s < s  # every llama2 prompt ends with "[/INST]"
            total += kept_s + min(t, max_t)
        lost += cut
    assert drop.stats.truncated_marker_lost == lost > 0
    trunc = preprocess(PreprocessConfig(**base, output_prefix=str(tmp_path / "t")))
    assert trunc.stats.truncated > 0 and trunc.stats.truncated_marker_lost == 0
    for shard in trunc.shards:
        reader = ShardReader(shard)
        for i in range(reader.num_samples):
            ids = reader.sample(i)[0].tolist()
            windows = [ids[j : j + 4] for j in range(len(ids))]
            assert ids.count(1) == windows.count(LLAMA2_CLOSE), i  # each <s>[INST] is closed
    side = json.loads(Path(f"{tmp_path / 't'}.packft.json").read_text())
    assert side["stats"]["truncated_marker_lost"] == 0


@pytest.mark.parametrize("template", ["llama2", "qwen"])
def test_fitting_samples_are_identical_in_both_modes(template: str) -> None:
    convs = [_conv("What is 2+2?", "4", "And 3+3?", "6", system="Be brief."), _conv("hi", "ok")]
    a, b = _enc(template, convs, 4096, keep=True), _enc(template, convs, 4096, keep=False)
    assert a.ids.tolist() == b.ids.tolist() and a.labels.tolist() == b.labels.tolist()
    assert a.truncated == b.truncated == 0


def test_workers_give_identical_shards_with_markers_kept_and_repairs(tmp_path: Path) -> None:
    """Spawned workers rebuild the tokenizer from its backend: spans, offsets and repairs there
    must give the bytes and counts of one process."""
    from packft.tokenize.encode import tokenize_file
    from packft.tokenize.shards import read_stats

    src = ASSETS / "sharegpt" / "fastchat_dummy_conversation_with_system.json"
    rows = json.loads(src.read_text())[:200]
    rows[7] = {"conversations": [{"from": "gpt", "value": "tail"}, *rows[7]["conversations"]]}
    data = tmp_path / "chat.json"
    data.write_text(json.dumps(rows))
    shards, stats = {}, {}
    for workers in (1, 2):
        shards[workers] = tmp_path / f"w{workers}.arrow"
        opts = TokenizeOptions(seq_length=48, append_eod=True, batch_size=32, workers=workers,
                               keep_markers=True)  # fmt: skip
        stats[workers] = tokenize_file(data, shards[workers], fmt="sharegpt",
                                       tokenizer_path=ASSETS / "llama2-tokenizer",
                                       template="llama2", options=opts,
                                       map_keys={"system": None},  # short first-turn markers
                                       repair=["leading-assistant"])  # fmt: skip
    assert shards[1].read_bytes() == shards[2].read_bytes()
    one = read_stats(shards[1])
    assert one == read_stats(shards[2])
    assert one["repaired"] == {"leading_assistant": 1} and one["valid"] == 200
    assert one["truncated"] > 50 and one["truncated_marker_lost"] == 0
    assert one["options"]["keep_markers"] is True and one["options"]["repair"] == [
        "leading-assistant"]  # fmt: skip
