"""Synthetic demo data and tokenizer: deterministic, varied, with exactly the documented rejects."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from packft.ingest.formats import iter_conversations, validate_file
from packft.ingest.readers import iter_record_batches
from packft.ingest.rejects import RejectLog
from packft.synthetic import expected_rejects, make_demo_data, train_demo_tokenizer


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, float]:
    """The default-size demo set and its tokenizer, built once (also times the whole build)."""
    root = tmp_path_factory.mktemp("demo")
    start = time.monotonic()
    paths = make_demo_data(root / "data")
    tokenizer_dir = train_demo_tokenizer(paths, root / "tokenizer")
    return paths, tokenizer_dir, time.monotonic() - start


def test_demo_build_is_fast(demo) -> None:
    assert demo[2] < 10, f"data + tokenizer took {demo[2]:.1f} s"


def test_demo_data_is_deterministic(tmp_path: Path, demo) -> None:
    paths, _, _ = demo
    again = make_demo_data(tmp_path / "again")
    assert [p.name for p in again] == ["alpaca.json", "sharegpt.jsonl"]
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    other = make_demo_data(tmp_path / "other", seed=1)
    assert other[0].read_bytes() != paths[0].read_bytes()


def test_demo_rejects_are_exactly_the_documented_ones(tmp_path: Path, demo) -> None:
    paths, _, _ = demo
    expected = expected_rejects()
    for path, fmt in zip(paths, ("alpaca", "sharegpt"), strict=True):
        rejects = tmp_path / f"{path.name}.rejects.jsonl"
        summary = validate_file(path, fmt, None, rejects)
        found = {x["row"]: x["reason"] for x in map(json.loads, rejects.read_text().splitlines())}
        assert found == expected[path.name]
        assert summary.total == (3000 if fmt == "alpaca" else 1000)
        assert summary.valid == summary.total - len(expected[path.name])


def test_demo_data_is_varied(demo) -> None:
    paths, tokenizer_dir, _ = demo
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths, turns, systems, tool_convs = [], [], 0, 0
    with RejectLog(None) as log:
        for path, fmt in zip(paths, ("alpaca", "sharegpt"), strict=True):
            for batch in iter_conversations(iter_record_batches(path), fmt, None, log):
                texts = [c.system + "".join(m.content for m in c.messages) for c in batch]
                lengths += [len(ids) for ids in tokenizer(texts)["input_ids"]]
                if fmt == "sharegpt":
                    turns += [len(c.messages) // 2 for c in batch]
                systems += sum(bool(c.system) for c in batch)
                tool_convs += sum(any(m.role == "function" for m in c.messages) for c in batch)
    lengths_arr = np.array(lengths)
    assert 60 < np.median(lengths_arr) < 200
    assert np.percentile(lengths_arr, 99) > 3 * np.median(lengths_arr)  # long tail
    assert 6 <= (lengths_arr > 512).sum() < 0.05 * len(lengths_arr)  # a few overlong at seq 512
    assert max(turns) >= 4 and np.mean(np.array(turns) > 1) > 0.3  # multi-turn ShareGPT
    assert systems > 300 and tool_convs > 20


def test_tokenizer_is_deterministic_and_loads_with_autotokenizer(tmp_path: Path, demo) -> None:
    paths, tokenizer_dir, _ = demo
    again = tmp_path / "tok"  # a fresh process: no shared hash seeds or caches
    code = (
        "import sys; from packft.synthetic import train_demo_tokenizer as train; "
        "train(sys.argv[1:3], sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, *map(str, paths), str(again)], check=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (again / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert (tokenizer.pad_token, tokenizer.unk_token) == ("<pad>", "<unk>")
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.pad_token_id == 3
    assert 1000 < len(tokenizer) <= 4096
    text = "Explain the water cycle.\n\nCafé 数据 résumé, 42 percent!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # byte-level: lossless, no unk
    assert tokenizer.unk_token_id not in ids


def test_tokenizer_chat_template_marks_assistant_tokens(demo) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo[1])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<s>system\nBe brief.</s>\n<s>user\nHi</s>\n<s>assistant\nHello there.</s>\n"
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Hello there.</s>"


def test_too_few_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 20"):
        make_demo_data(tmp_path, n_alpaca=5)
