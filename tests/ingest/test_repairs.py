"""ShareGPT_V3-like data: default rejects, ``--repair`` kinds, role-tag lists, cache keys, table.

The fixture is generated here (no file committed). It imitates the records of
ShareGPT_V3_unfiltered_cleaned_split.json: ``{"id": "<hash>_<chunk>", "conversations": [{"from",
"value"}]}``, where chunks after the first (``_1``) start with a ``gpt`` turn because the "split"
version cuts long chats, chunks may end on a ``human`` turn, some chats have consecutive turns of
one side, a ``bing`` role, empty turns or no turns at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from packft.cli import main
from packft.ingest.formats import iter_conversations, to_conversation
from packft.ingest.readers import iter_record_batches
from packft.ingest.records import Conversation, Message
from packft.ingest.rejects import InvalidRecord, RejectLog
from packft.ingest.repairs import MERGE_SEPARATOR, parse_repairs
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.steps import _shard_key
from packft.tokenize.batch import encode_conversations
from packft.tokenize.encode import tokenize_file
from packft.tokenize.options import TokenizeOptions
from packft.tokenize.shards import ShardReader
from packft.tokenize.templates import get_template, load_tokenizer

ALL = "leading-assistant,trailing-user,merge-consecutive"
BING = {"assistant_tag": ["gpt", "bing"]}
X = -100


def _c(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": who, "value": text} for who, text in turns]


# (id, conversations, reason without --repair, reason with ALL + BING, repairs with ALL)
CASES = [
    ("QWJhYvA_0", _c(("human", "What is RoPE?"), ("gpt", "Rotary embeddings."),
                     ("human", "Why?"), ("gpt", "Relative positions.")), None, None, []),
    ("QWJhYvA_1", _c(("gpt", "...and so the loss drops."), ("human", "Show code"),
                     ("gpt", "def f(): pass")), "roles_not_alternating", None, ["leading"]),
    ("b5Ed8_1", _c(("gpt", "continued"), ("human", "q"), ("gpt", "a"), ("human", "next?")),
     "roles_not_alternating", None, ["leading", "trailing"]),
    ("c0Kx2_0", _c(("human", "Hi"), ("gpt", "Hello!"), ("human", "Tell me more")),
     "wrong_last_role", None, ["trailing"]),
    ("d9Lmq_0", _c(("human", "part 1"), ("human", "part 2"), ("gpt", "Got both parts.")),
     "roles_not_alternating", None, ["merge"]),
    ("e3Pw7_0", _c(("human", "Poem please"), ("gpt", "Roses are red,"), ("gpt", "violets blue.")),
     "roles_not_alternating", None, ["merge"]),
    ("f1Bing_0", _c(("human", "Search the news"), ("bing", "Here are the headlines.")),
     "unknown_role", None, []),
    ("g7Empty_0", [], "empty_conversation", "empty_conversation", []),
    ("h2Zz_0", _c(("human", ""), ("gpt", "Anything else?")), "empty_prompt", "empty_prompt", []),
    ("i4Qq_1", _c(("gpt", ""), ("human", "q"), ("gpt", "a")), "empty_answer", None, ["leading"]),
    ("j8Rr_1", _c(("gpt", "tail 1"), ("gpt", "tail 2"), ("human", "q"), ("gpt", "a")),
     "roles_not_alternating", None, ["merge", "leading"]),
    ("k6Ss_1", _c(("gpt", "only an answer")), "roles_not_alternating", "empty_conversation", []),
    ("l5Tt_0", _c(("human", "q"), ("gpt", "   ")), "empty_answer", "empty_answer", []),
    ("m3Uu_0", _c(("human", "q"), ("gpt", "a"), ("human", "")), "empty_prompt", None,
     ["trailing"]),
    ("n1Vv_1", _c(("system", "Be terse."), ("gpt", "hello"), ("human", "q"), ("gpt", "a")),
     "roles_not_alternating", None, ["leading"]),
    ("o9Ww_0", _c(("human", ""), ("human", "q"), ("gpt", "a")), "empty_prompt", None, ["merge"]),
]  # fmt: skip
NAMES = {"leading": "leading_assistant", "trailing": "trailing_user", "merge": "merge_consecutive"}


def _records() -> list[dict]:
    return [{"id": rid, "conversations": conv} for rid, conv, *_ in CASES]


def _counts(column: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for case in CASES:
        if case[column] is not None:
            out[case[column]] = out.get(case[column], 0) + 1
    return dict(sorted(out.items()))


def _repaired() -> dict[str, int]:
    out: dict[str, int] = {}
    for *_, kinds in CASES:
        for kind in kinds:
            out[NAMES[kind]] = out.get(NAMES[kind], 0) + 1
    return dict(sorted(out.items()))


@pytest.fixture
def sharegpt_v3(tmp_path: Path) -> Path:
    path = tmp_path / "sg_v3.json"
    path.write_text(json.dumps(_records(), indent=1))
    return path


def _validate(path: Path, map_keys=None, repair=None, rejects: Path | None = None):
    with RejectLog(rejects) as log:
        batches = iter_record_batches(path, 4)
        convs = [
            c for b in iter_conversations(batches, "sharegpt", map_keys, log, repair) for c in b
        ]
    return convs, log.summary()


def test_expected_counts_are_what_the_fixture_says() -> None:
    # the table above, in numbers: 15 of 16 rejected by default, 4 with every repair
    assert _counts(2) == {"empty_answer": 2, "empty_conversation": 1, "empty_prompt": 3,
                          "roles_not_alternating": 7, "unknown_role": 1,
                          "wrong_last_role": 1}  # fmt: skip
    assert _counts(3) == {"empty_answer": 1, "empty_conversation": 2, "empty_prompt": 1}
    assert _repaired() == {"leading_assistant": 5, "merge_consecutive": 4, "trailing_user": 3}


def test_without_repair_every_reason_is_todays(sharegpt_v3: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.jsonl"
    convs, summary = _validate(sharegpt_v3, rejects=rejects)
    assert (summary.total, summary.valid) == (16, 1)
    assert summary.rejected == _counts(2) and summary.repaired == {}
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    want = [(i, c[2]) for i, c in enumerate(CASES) if c[2] is not None]
    assert [(x["row"], x["reason"]) for x in lines] == want
    # messages name the 1-based record number; details name the 0-based index in the list
    by_row = {x["row"]: x for x in lines}
    assert by_row[1]["message"].startswith(f"{sharegpt_v3}:2: roles_not_alternating: ")
    assert "conversations[0] is 'gpt'" in by_row[1]["detail"]
    assert "conversations[1] is 'gpt'" in by_row[14]["detail"]  # after the system message
    assert "--repair leading-assistant" in by_row[1]["detail"]
    assert "--repair trailing-user" in by_row[3]["detail"]
    assert "conversations[1] is 'human'" in by_row[4]["detail"]
    assert "--repair merge-consecutive" in by_row[4]["detail"]
    assert "assistant_tag" in by_row[6]["detail"] and "bing" in by_row[6]["detail"]
    assert by_row[7]["message"].startswith(f"{sharegpt_v3}:8: empty_conversation")
    assert [c.row for c in convs] == [0]


def test_every_repair_with_bing_mapped(sharegpt_v3: Path) -> None:
    convs, summary = _validate(sharegpt_v3, BING, ALL)
    assert (summary.total, summary.valid) == (16, 12)
    assert summary.rejected == _counts(3)
    assert summary.repaired == _repaired()
    assert "repaired: leading_assistant=5, merge_consecutive=4, trailing_user=3" in str(summary)
    by_id = {CASES[c.row][0]: c for c in convs}
    assert by_id["QWJhYvA_1"].messages == [Message("user", "Show code"),
                                           Message("assistant", "def f(): pass")]  # fmt: skip
    assert [m.role for m in by_id["b5Ed8_1"].messages] == ["user", "assistant"]
    assert by_id["d9Lmq_0"].messages[0].content == "part 1" + MERGE_SEPARATOR + "part 2"
    assert by_id["e3Pw7_0"].messages[1].content == "Roses are red,\n\nviolets blue."
    assert by_id["f1Bing_0"].messages[1] == Message("assistant", "Here are the headlines.")
    assert by_id["j8Rr_1"].messages == [Message("user", "q"), Message("assistant", "a")]
    assert by_id["n1Vv_1"].system == "Be terse." and len(by_id["n1Vv_1"].messages) == 2
    assert by_id["o9Ww_0"].messages[0] == Message("user", "q")  # blank texts are not joined
    assert by_id["m3Uu_0"].meta["repaired"] == ["trailing_user"]


def test_one_repair_alone_still_rejects_what_it_does_not_fix(sharegpt_v3: Path) -> None:
    convs, summary = _validate(sharegpt_v3, None, ["leading_assistant"])
    assert summary.repaired == {"leading_assistant": 3}
    assert sorted(c.row for c in convs) == [0, 1, 9, 14]
    assert summary.rejected == {"empty_answer": 1, "empty_conversation": 2, "empty_prompt": 3,
                                "roles_not_alternating": 3, "unknown_role": 1,
                                "wrong_last_role": 2}  # fmt: skip


def test_openai_messages_get_the_same_repairs() -> None:
    row = {"messages": [{"role": "assistant", "content": "earlier"},
                        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "c"}, {"role": "user", "content": "?"}]}  # fmt: skip
    with pytest.raises(InvalidRecord, match="roles_not_alternating"):
        to_conversation(row, "openai")
    conv = to_conversation(row, "openai", None, ALL)
    assert conv.messages == [Message("user", "a\n\nb"), Message("assistant", "c")]
    assert conv.meta["repaired"] == ["merge_consecutive", "leading_assistant", "trailing_user"]
    # alpaca rows are alternating by construction: the option changes nothing
    alpaca = to_conversation({"instruction": "q", "output": "a"}, "alpaca", None, ALL)
    assert alpaca.messages == [Message("user", "q"), Message("assistant", "a")]
    assert alpaca.meta == {}


def test_repair_and_tag_list_options_are_checked() -> None:
    assert parse_repairs("trailing-user, leading_assistant") == ["leading-assistant",
                                                                  "trailing-user"]  # fmt: skip
    assert parse_repairs(["merge-consecutive", "trailing-user,leading-assistant"]) == [
        "merge-consecutive", "leading-assistant", "trailing-user"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown --repair 'lead'.*leading-assistant"):
        parse_repairs("lead")
    with pytest.raises(ValueError, match="'bing' is both user_tag and assistant_tag"):
        to_conversation({"conversations": []}, "sharegpt",
                        {"assistant_tag": ["gpt", "bing"], "user_tag": ["human", "bing"]})  # fmt: skip
    with pytest.raises(ValueError, match="'role_tag' must be a string"):
        to_conversation({"conversations": []}, "sharegpt", {"role_tag": ["from"]})


# --- ids and labels of repaired records --------------------------------------------------------


def test_repaired_records_tokenize_like_the_clean_conversation(
    sharegpt_v3: Path, tmp_path: Path, llama2_tokenizer_dir: Path
) -> None:
    shard = tmp_path / "sg.arrow"
    stats = tokenize_file(sharegpt_v3, shard, fmt="sharegpt", map_keys=BING,
                          tokenizer_path=llama2_tokenizer_dir, template="llama2",
                          options=TokenizeOptions(seq_length=4096, append_eod=True),
                          repair=parse_repairs(ALL))  # fmt: skip
    assert (stats.samples_in, stats.valid, stats.written) == (16, 12, 12)
    assert stats.rejected == _counts(3) and stats.repaired == _repaired()
    reader = ShardReader(shard)
    rows = reader.source_rows.tolist()
    tok = load_tokenizer(llama2_tokenizer_dir, "llama2")
    clean = Conversation([Message("user", "Show code"), Message("assistant", "def f(): pass")])
    want = encode_conversations([clean], get_template("llama2"), tok,
                                TokenizeOptions(seq_length=4096, append_eod=True))  # fmt: skip
    ids, labels = reader.sample(rows.index(1))  # QWJhYvA_1: the leading gpt turn is gone
    assert ids.tolist() == want.ids.tolist() and labels.tolist() == want.labels.tolist()
    assert "and so the loss drops" not in tok.decode(ids.tolist())
    answer = tok.encode("def f(): pass", add_special_tokens=False)
    trained = labels[labels != X].tolist()
    assert trained == answer + [2, 2]  # the answer, its eos and the eod: nothing else
    assert ids[0] == 1 and np.all(labels[: len(ids) - len(trained)] == X)
    # without --repair the same file gives today's shard: one sample, fifteen rejects
    plain = tokenize_file(sharegpt_v3, tmp_path / "plain.arrow", fmt="sharegpt",
                          tokenizer_path=llama2_tokenizer_dir, template="llama2",
                          options=TokenizeOptions(seq_length=4096, append_eod=True))  # fmt: skip
    assert (plain.written, plain.rejected, plain.repaired) == (1, _counts(2), {})


# --- the command: sidecar, end-of-run table, cache keys ----------------------------------------


def test_preprocess_counts_repairs_and_shows_top_rejects(
    sharegpt_v3: Path, tmp_path: Path, llama2_tokenizer_dir: Path, capsys
) -> None:
    prefix = tmp_path / "out" / "sg"
    prefix.parent.mkdir()
    args = ["preprocess", "--input", str(sharegpt_v3), "--tokenizer-name-or-path",
            str(llama2_tokenizer_dir), "--output-prefix", str(prefix), "--handler-name",
            "SharegptStyleInstructionHandler", "--prompt-type", "llama2", "--pack",
            "--seq-length", "256", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    # 1 of 16 valid without repairs: the quality gate stops the run and writes nothing ...
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "quality gate: only 1 of 16 records are valid" in err
    assert not Path(f"{prefix}.packft.json").exists()
    # ... unless the user accepts it explicitly
    assert main([*args, "--min-valid-fraction", "0"]) == 0
    err = capsys.readouterr().err
    side = json.loads(Path(f"{prefix}.packft.json").read_text())["stats"]
    assert (side["valid"], side["rejected"], side["repaired"]) == (1, _counts(2), {})
    # top 5 reasons by count (ties by name), then the rest in one line; and the rejects file
    assert "rejected: roles_not_alternating" in err and "(+1 more reasons)" in err
    assert "rejected: wrong_last_role" not in err  # sixth of six (1, tied, last by name)
    assert f"rejects: 15 record(s) in {prefix}.rejects.jsonl" in err
    assert len(Path(f"{prefix}.rejects.jsonl").read_text().splitlines()) == 15

    assert main([*args, "--repair", ALL, "--map-keys", json.dumps(BING)]) == 0
    err = capsys.readouterr().err
    side = json.loads(Path(f"{prefix}.packft.json").read_text())
    assert side["config"]["repair"] == parse_repairs(ALL)
    stats = side["stats"]
    assert (stats["valid"], stats["rejected"], stats["repaired"]) == (12, _counts(3), _repaired())
    assert "repaired: leading_assistant" in err and "repaired: trailing_user" in err
    assert "(+" not in err  # three reasons only


def test_repair_decides_cache_reuse(tmp_path: Path, llama2_tokenizer_dir: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps(_records()))
    base = dict(input=str(data), tokenizer_name_or_path=str(llama2_tokenizer_dir),
                output_prefix=str(tmp_path / "o"), prompt_type="llama2",
                handler_name="SharegptStyleInstructionHandler")  # fmt: skip
    plain = PreprocessConfig(**base)
    one = PreprocessConfig(**base, repair="leading-assistant")
    same = PreprocessConfig(**base, repair=["leading_assistant"])
    assert _shard_key(data, plain) != _shard_key(data, one) == _shard_key(data, same)
    key = [c.tokenize_options().cache_key() for c in (plain, one, same)]
    assert key[0] != key[1] == key[2]  # what the flow's tokenize task keys on
    assert plain.validate_options().cache_key() != one.validate_options().cache_key()
    # the CLI takes comma-separated or several values; unknown kinds are a usage error
    out = tmp_path / "o"
    cli = ["preprocess", "--input", str(data), "--tokenizer-name-or-path",
           str(llama2_tokenizer_dir), "--output-prefix", str(out), "--prompt-type", "llama2",
           "--handler-name", "SharegptStyleInstructionHandler", "--cache-dir",
           str(tmp_path / "c"), "--min-valid-fraction", "0.4"]  # fmt: skip
    assert main([*cli, "--repair", "trailing-user", "leading-assistant"]) == 0
    assert json.loads(Path(f"{out}.packft.json").read_text())["config"]["repair"] == [
        "leading-assistant", "trailing-user"]  # fmt: skip
    assert main([*cli, "--repair", "leading-gpt"]) == 2


def test_flow_logs_repairs_and_marker_loss_to_mlflow(
    sharegpt_v3: Path, tmp_path: Path, llama2_tokenizer_dir: Path
) -> None:
    """What the pack-dataset flow logs for its validate and tokenize stages, from the typed
    results its tasks return (``ValidationResult``, ``TokenizeResult``), into MLflow."""
    from mlflow import MlflowClient

    from flows.reporting import log_tokenize, log_validation
    from packft.preprocess import InputFile, TokenizerPin, tokenize_to_shard, validate_source
    from packft.track.tracking import make_tracker

    cfg = PreprocessConfig(input=str(sharegpt_v3), output_prefix=str(tmp_path / "o"),
                           tokenizer_name_or_path=str(llama2_tokenizer_dir), prompt_type="llama2",
                           handler_name="SharegptStyleInstructionHandler", map_keys=BING,
                           repair=ALL, seq_length=24, overlong="drop",
                           cache_dir=str(tmp_path / "c"))  # fmt: skip
    source = InputFile.pin(sharegpt_v3)
    check = validate_source(source, cfg.validate_options(), tmp_path / "v.jsonl")
    shard = tokenize_to_shard(source, TokenizerPin.pin(cfg.tokenizer_name_or_path),
                              cfg.tokenize_options(), cfg.cache_path / "shards")  # fmt: skip
    stats = {"truncated_marker_lost": shard.truncated_marker_lost, "truncated": shard.truncated,
             "valid": shard.counts.valid}  # fmt: skip
    assert 0 < stats["truncated_marker_lost"] <= stats["truncated"] < stats["valid"] == 12
    assert sum(shard.length_counts.values()) == 12  # the histogram, counted while tokenizing
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = make_tracker(store, "unit-repairs", "flow")
    assert log_validation(tracker, [check]).repaired == _repaired()
    assert log_tokenize(tracker, [shard]).repaired == _repaired()
    tracker.close()
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([tracker.experiment_id],
                              f"tags.mlflow.parentRunId = '{tracker.run_id}'")  # fmt: skip
    assert len(runs) == 2
    for run in runs:  # counts per kind/reason are params (packft.track.metric_names.stats_params)
        params = run.data.params
        assert params["stats.repaired.leading_assistant"] == "5"
        assert params["stats.repaired.merge_consecutive"] == "4"
        assert params["stats.repaired.trailing_user"] == "3"
        assert params["stats.rejected.empty_conversation"] == "2"
        assert run.data.metrics["data/samples_rejected"] == 4.0
    tokenize_run = next(r for r in runs if "stats.truncated_marker_lost" in r.data.params)
    lost = tokenize_run.data.params["stats.truncated_marker_lost"]
    assert int(lost) == stats["truncated_marker_lost"]
