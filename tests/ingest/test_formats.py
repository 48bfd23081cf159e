"""Formats: real public files normalise as MindSpeed would; every reject has a stable reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from packft.ingest.formats import iter_conversations, to_conversation, validate_file
from packft.ingest.keymap import HANDLER_FORMATS, normalize_format, resolve_map_keys
from packft.ingest.readers import iter_record_batches
from packft.ingest.records import Message
from packft.ingest.rejects import InvalidRecord, InvalidRecordError, RejectLog, ValidationSummary


def conversations(path: Path, fmt: str, map_keys=None, batch_size: int = 64):
    with RejectLog(None) as log:
        out = [
            c
            for batch in iter_conversations(
                iter_record_batches(path, batch_size), fmt, map_keys, log
            )
            for c in batch
        ]
    return out, log.summary()


# ---------------------------------------------------------------------------- real assets


def test_alpaca_en_all_valid_with_mindspeed_user_turn(alpaca_en_path: Path) -> None:
    raw = json.loads(alpaca_en_path.read_text(encoding="utf-8"))
    convs, summary = conversations(alpaca_en_path, "AlpacaStyleInstructionHandler")
    assert summary == ValidationSummary(total=999, valid=999, rejected={})
    for row, conv in enumerate(convs):
        record = raw[row]
        assert (conv.source, conv.row) == (str(alpaca_en_path), row)
        user = record["instruction"] + ("\n" + record["input"] if record["input"] else "")
        assert conv.messages == [Message("user", user), Message("assistant", record["output"])]
        assert conv.system == "" and conv.tools == ""
    assert sum(1 for r in raw if r["input"]) > 100  # both branches of the rule were exercised


def test_alpaca_zh_all_valid(alpaca_zh_path: Path) -> None:
    convs, summary = conversations(alpaca_zh_path, "alpaca")
    assert (summary.total, summary.valid) == (1000, 1000)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in convs[0].messages[0].content)


def test_glaive_toolcall_has_function_turns_and_tools(sharegpt_toolcall_path: Path) -> None:
    convs, summary = conversations(sharegpt_toolcall_path, "SharegptStyleInstructionHandler")
    assert (summary.total, summary.valid) == (300, 300)
    roles = {m.role for c in convs for m in c.messages}
    assert roles == {"user", "assistant", "function", "observation"}
    assert sum(m.role == "function" for c in convs for m in c.messages) == 211
    for conv in convs:
        assert isinstance(json.loads(conv.tools), list)
        for prompt, answer in conv.pairs():
            if answer.role == "function":
                assert "name" in json.loads(answer.content)
            assert prompt.role in {"user", "observation"}


def test_fastchat_system_prompts(sharegpt_system_path: Path) -> None:
    raw = json.loads(sharegpt_system_path.read_text())
    convs, summary = conversations(sharegpt_system_path, "sharegpt")
    assert (summary.total, summary.valid) == (500, 500)
    with_system = [c.row for c in convs if c.system]
    assert with_system == [i for i, r in enumerate(raw) if r.get("system")]
    assert len(with_system) == 6
    assert convs[0].system.startswith("A chat between a curious user")
    # MindSpeed reads a system column only when mapped; null reproduces that.
    plain, _ = conversations(sharegpt_system_path, "sharegpt", {"system": None})
    assert not any(c.system for c in plain)


def test_openai_cookbook_messages(openai_messages_path: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    summary = validate_file(openai_messages_path, "OpenAIInstructionHandler", None, rejects)
    assert summary == ValidationSummary(total=5, valid=4, rejected={"roles_not_alternating": 1})
    [line] = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert (line["row"], line["reason"]) == (3, "roles_not_alternating")  # system + assistant only
    convs, _ = conversations(openai_messages_path, "openai")
    assert convs[1].system.startswith("You are a happy assistant")
    assert len(convs[1].messages) == 8


# ---------------------------------------------------------------------------- alpaca rules


def test_alpaca_history_system_and_optional_input() -> None:
    row = {
        "instruction": "Now?",
        "output": "Yes.",
        "system": "Be brief.",
        "history": [["Hi", "Hello"], ["How are you?", "Fine"]],
    }
    conv = to_conversation(row, "alpaca")
    assert [m.content for m in conv.messages] == [
        "Hi",
        "Hello",
        "How are you?",
        "Fine",
        "Now?",
        "Yes.",
    ]
    assert [m.role for m in conv.messages] == ["user", "assistant"] * 3
    assert conv.system == "Be brief."
    assert to_conversation({"instruction": "", "input": "q", "output": "a"}, "alpaca").messages[
        0
    ] == Message("user", "q")
    assert to_conversation({"instruction": "i", "output": "a"}, "alpaca").messages[0].content == "i"


def test_alpaca_map_keys_rename_and_disable() -> None:
    keys = '{"prompt": "question", "query": null, "response": "answer", "history": "turns"}'
    row = {"question": "Q", "input": "ignored", "answer": "A", "turns": '[["a", "b"]]'}
    conv = to_conversation(row, "alpaca", keys)
    assert [m.content for m in conv.messages] == ["a", "b", "Q", "A"]


# ---------------------------------------------------------------------------- sharegpt / openai


def test_sharegpt_leading_system_message_wins() -> None:
    row = {
        "system": "column",
        "conversations": [
            {"from": "system", "value": "message"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ],
    }
    assert to_conversation(row, "sharegpt").system == "message"


@pytest.mark.parametrize(
    "map_keys",
    [
        {"messages": "msgs", "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "u"}},
        {"messages": "msgs", "role_tag": "role", "content_tag": "text", "user_tag": "u"},
    ],
    ids=["nested-tags", "flat-tags"],
)
def test_sharegpt_custom_tags(map_keys: dict) -> None:
    row = {"msgs": [{"role": "u", "text": "q"}, {"role": "gpt", "text": "a"}]}
    conv = to_conversation(row, "sharegpt", map_keys)
    assert conv.messages == [Message("user", "q"), Message("assistant", "a")]


def test_openai_tool_calls_become_function_turns() -> None:
    row = {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "x"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": '{"c": 1}'}},
                    {"type": "function", "function": {"name": "g", "arguments": "not json"}},
                ],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
    }
    conv = to_conversation(row, "openai")
    assert [m.role for m in conv.messages] == ["user", "function", "observation", "assistant"]
    assert conv.messages[0].content == "weather x"
    assert json.loads(conv.messages[1].content) == [
        {"name": "f", "arguments": {"c": 1}},
        {"name": "g", "arguments": "not json"},
    ]
    assert json.loads(conv.tools)[0]["function"]["name"] == "f"
    legacy = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "content": "result"},
            {"role": "assistant", "content": "done"},
        ]
    }
    legacy_conv = to_conversation(legacy, "openai")
    assert [m.role for m in legacy_conv.messages] == [
        "user",
        "function",
        "observation",
        "assistant",
    ]
    assert json.loads(legacy_conv.messages[1].content) == {"name": "f", "arguments": {}}


# ---------------------------------------------------------------------------- reason codes


def sg(*turns: tuple[str, object], **extra: object) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **extra}


INVALID = [
    ("alpaca", ["not", "a", "dict"], "not_a_dict"),
    ("alpaca", {"instruction": "q"}, "missing_field"),
    ("alpaca", {"output": "a"}, "missing_field"),
    ("alpaca", {"instruction": "q", "output": 7}, "wrong_type"),
    ("alpaca", {"instruction": "q", "output": ["a", "b"]}, "wrong_type"),
    ("alpaca", {"instruction": "q", "output": "  \n"}, "empty_answer"),
    ("alpaca", {"instruction": "", "input": "", "output": "a"}, "empty_prompt"),
    ("alpaca", {"instruction": "q\udcff", "output": "a"}, "invalid_text"),
    ("alpaca", {"instruction": b"\xff", "output": "a"}, "invalid_text"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}, "bad_history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": "[[oops"}, "wrong_type"),
    ("alpaca", {"instruction": "q", "output": "a", "system": 3}, "wrong_type"),
    ("sharegpt", {"id": 1}, "missing_field"),
    ("sharegpt", {"conversations": {"from": "human"}}, "wrong_type"),
    ("sharegpt", {"conversations": ["hi"]}, "wrong_type"),
    ("sharegpt", sg(), "empty_conversation"),
    ("sharegpt", sg(("system", "s")), "empty_conversation"),
    ("sharegpt", sg(("human", "q"), ("gpt", "")), "empty_answer"),
    ("sharegpt", sg(("human", "q"), ("human", "q"), ("gpt", "a")), "roles_not_alternating"),
    ("sharegpt", sg(("gpt", "a"), ("human", "q")), "roles_not_alternating"),
    ("sharegpt", sg(("human", "q"), ("gpt", "a"), ("human", "q")), "wrong_last_role"),
    ("sharegpt", sg(("human", "q"), ("bot", "a")), "unknown_role"),
    ("sharegpt", sg(("human", "q"), ("system", "s"), ("gpt", "a")), "misplaced_system"),
    ("sharegpt", sg(("human", "q"), ("gpt", None)), "missing_field"),
    ("sharegpt", sg(("human", "q"), ("gpt", 5)), "wrong_type"),
    ("sharegpt", sg(("human", "q\ud800"), ("gpt", "a")), "invalid_text"),
    ("sharegpt", sg(("human", "q"), ("gpt", "a"), tools=5), "wrong_type"),
    ("openai", {"messages": [{"role": "user", "content": "q"}]}, "wrong_last_role"),
    (
        "openai",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "unsupported_message",
    ),
    (
        "openai",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "hm", "tool_calls": [{"function": {"name": "f"}}]},
            ]
        },
        "unsupported_message",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": "q"}, {"role": "critic", "content": "a"}]},
        "unknown_role",
    ),
]


@pytest.mark.parametrize(("fmt", "row", "reason"), INVALID)
def test_invalid_records_have_stable_reasons(fmt: str, row: object, reason: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        to_conversation(row, fmt)
    assert info.value.reason == reason
    assert info.value.detail


# ---------------------------------------------------------------------------- map keys and names


@pytest.mark.parametrize(
    ("fmt", "map_keys", "match"),
    [
        ("alpaca", {"promt": "x"}, "unknown key 'promt'.*Allowed keys: history, prompt"),
        ("alpaca", {"response": None}, "'response' cannot be null"),
        ("alpaca", {"chosen": "c"}, "pairwise"),
        ("alpaca", {"tags": {"role_tag": "r"}}, "'tags'"),
        ("sharegpt", {"tags": {"user_tag": 1}, "messages": 2}, "user_tag.*messages"),
        ("sharegpt", "{not json", "not valid JSON"),
        ("openai", [1], "JSON object"),
    ],
)
def test_bad_map_keys_report_every_problem(fmt: str, map_keys: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_map_keys(fmt, map_keys)


def test_handler_names() -> None:
    assert {normalize_format(h) for h in HANDLER_FORMATS} == {"alpaca", "sharegpt", "openai"}
    with pytest.raises(ValueError, match="GeneralPretrainHandler.*silently"):
        normalize_format("GeneralPretrainHandler")


# ---------------------------------------------------------------------------- rejects file


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


ROWS = [
    {"instruction": "ok", "output": "fine"},
    {"instruction": "q", "output": ""},
    {"instruction": "ok2", "output": "fine2"},
    {"instruction": "q"},
    {"instruction": "ok3", "output": "fine3"},
]


def test_rejects_file_lists_each_record_with_source_and_row(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    rejects = tmp_path / "out" / "rejects.jsonl"
    summary = validate_file(data, "alpaca", None, rejects, batch_size=2)
    assert summary == ValidationSummary(
        total=5, valid=3, rejected={"empty_answer": 1, "missing_field": 1}
    )
    assert str(summary) == "5 records: 3 valid, 2 rejected (empty_answer=1, missing_field=1)"
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(x["row"], x["reason"]) for x in lines] == [(1, "empty_answer"), (3, "missing_field")]
    assert lines[0]["source"] == str(data)
    assert lines[0]["record"] == ROWS[1]
    assert lines[0]["message"] == f"{data}:2: empty_answer: the assistant turn is empty"
    assert [p.name for p in rejects.parent.iterdir()] == ["rejects.jsonl"]  # no temp files left


def test_fail_mode_raises_the_same_message(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    rejects = tmp_path / "rejects.jsonl"
    with pytest.raises(InvalidRecordError) as info:
        validate_file(data, "alpaca", None, rejects, on_invalid="fail")
    [line] = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert str(info.value) == line["message"]
    assert (info.value.row, info.value.reason) == (1, "empty_answer")


def test_no_rejects_means_no_file_and_stale_one_removed(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "d.jsonl", [ROWS[0], ROWS[2]])
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_text("stale\n")
    assert validate_file(data, "alpaca", None, rejects) == ValidationSummary(
        total=2, valid=2, rejected={}
    )
    assert not rejects.exists()


def test_crash_discards_partial_rejects(tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    with pytest.raises(RuntimeError), RejectLog(rejects) as log:
        log.add("f", 0, InvalidRecord("empty_answer", "x"), {})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_undecodable_bytes_are_one_reject_not_a_crash(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(
        b'{"instruction": "ok", "output": "a"}\n'
        b'{"instruction": "bad \xff\xfe", "output": "a"}\n'
        b'{"instruction": "ok", "output": "b"}\n'
    )
    rejects = tmp_path / "rejects.jsonl"
    summary = validate_file(data, "alpaca", None, rejects)
    assert summary == ValidationSummary(total=3, valid=2, rejected={"invalid_text": 1})
    line = json.loads(rejects.read_text(encoding="utf-8"))  # the rejects file stays valid UTF-8
    assert line["row"] == 1 and line["record"]["instruction"] == "bad \udcff\udcfe"


def test_broken_json_line_is_rejected_with_its_row(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "ok", "output": "a"}\n{"instruction": \n')
    summary = validate_file(data, "alpaca", None, tmp_path / "r.jsonl")
    assert summary == ValidationSummary(total=2, valid=1, rejected={"invalid_json": 1})


def test_csv_sharegpt_with_json_text_conversations(tmp_path: Path) -> None:
    rows = [{"conversations": json.dumps(sg(("human", "q"), ("gpt", "a"))["conversations"])}]
    pcsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "d.csv")
    convs, summary = conversations(tmp_path / "d.csv", "sharegpt")
    assert summary.valid == 1 and convs[0].messages[1] == Message("assistant", "a")


def test_iter_conversations_keeps_row_numbers_across_batches(tmp_path: Path) -> None:
    rows = [{"instruction": f"q{i}", "output": "" if i % 5 == 0 else f"a{i}"} for i in range(23)]
    data = write_rows(tmp_path / "d.jsonl", rows)
    with RejectLog(None) as log:
        batches = list(iter_conversations(iter_record_batches(data, 7), "alpaca", None, log))
    assert [len(b) for b in batches] == [5, 6, 5, 2]
    kept = [c.row for b in batches for c in b]
    assert kept == [i for i in range(23) if i % 5]
    assert all(c.messages[0].content == f"q{c.row}" for b in batches for c in b)
    assert log.summary() == ValidationSummary(total=23, valid=18, rejected={"empty_answer": 5})


def test_wrong_handler_or_mistyped_key_fails_before_rejecting_everything(
    tmp_path: Path, sharegpt_system_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'instruction' \(prompt\).*'output' \(response\)"):
        validate_file(sharegpt_system_path, "alpaca", None, tmp_path / "r.jsonl")
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"'inptu' \(query\).*--map-keys"):
        validate_file(data, "alpaca", {"query": "inptu"}, tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()
    (tmp_path / "t.txt").write_text("just text\n")
    with pytest.raises(ValueError, match=r"the rows have \['text'\]"):
        validate_file(tmp_path / "t.txt", "sharegpt", None, tmp_path / "r.jsonl")


# ---------------------------------------------------------------------------- hostile records


def test_oversized_and_deep_records_are_counted_and_kept_as_previews(tmp_path: Path) -> None:
    from packft.ingest.limits import RecordLimits

    deep = "[" * 4000 + "]" * 4000  # under the size limit, over Python's recursion limit
    lines = [
        json.dumps({"instruction": "Add", "input": "1+1", "output": "2"}),
        '{"instruction": "' + "z" * 50_000 + '", "output": "x"}',
        '{"instruction": "hi", "output": "x", "extra": ' + deep + "}",
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = validate_file(path, "alpaca", rejects_path=rejects,
                            limits=RecordLimits(max_bytes=10_000))  # fmt: skip
    assert summary.to_dict() == {"total": 3, "valid": 1,
                                 "rejected": {"too_deep": 1, "too_large": 1}, "repaired": {}}  # fmt: skip
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in kept] == [(1, "too_large"), (2, "too_deep")]
    assert all(len(r["record"]) <= 200 for r in kept)  # a preview, not the 50 kB record
    assert "over --max-record-bytes 10,000" in kept[0]["message"]
    with pytest.raises(InvalidRecordError, match=r"h\.jsonl:2: too_large"):
        validate_file(path, "alpaca", on_invalid="fail", limits=RecordLimits(max_bytes=10_000))


def test_json_text_in_a_column_nested_too_deep_is_rejected(tmp_path: Path) -> None:
    history = "[" * 50_000 + "]" * 50_000  # CSV/parquet exports keep lists as JSON text
    table = pa.table({"instruction": ["a", "b"], "output": ["x", "y"], "history": [history, "[]"]})
    pcsv.write_csv(table, tmp_path / "t.csv")
    convs, summary = conversations(tmp_path / "t.csv", "alpaca")
    assert summary.rejected == {"too_deep": 1} and [c.row for c in convs] == [1]
