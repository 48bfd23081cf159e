"""`packft inspect`: stats, consistency check against the sidecar, decoded rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packft.cli import main
from packft.inspect import decode_row, load_sidecar
from packft.pack import PackPlan


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, alpaca_en_path: Path, llama2_tokenizer_dir: Path) -> Path:
    prefix = tmp_path_factory.mktemp("inspect") / "ds"
    args = ["preprocess", "--input", str(alpaca_en_path), "--tokenizer-name-or-path",
            str(llama2_tokenizer_dir), "--output-prefix", str(prefix), "--prompt-type", "llama2",
            "--pack", "--neat-pack", "--append-eod", "--seq-length", "1024", "--pack-seed", "1",
            "--cache-dir", str(prefix.parent / "cache")]  # fmt: skip
    assert main(args) == 0
    return prefix


def test_prints_stats_and_decodes_a_row(dataset: Path, alpaca_en_path: Path, capsys) -> None:
    assert main(["inspect", str(dataset), "--row", "2"]) == 0
    out = capsys.readouterr().out
    side = load_sidecar(dataset)
    assert str(side["stats"]["rows"]) in out and "efficiency" in out and "llama2" in out
    records = json.loads(alpaca_en_path.read_text())
    the_plan = PackPlan.load(f"{dataset}.packft.plan.npz")
    first = int(the_plan.row(2)[0][0])  # sample index == record index (no rejects here)
    assert records[first]["instruction"].split("\n")[0][:40] in out
    assert "<padding>" in out


def test_decode_row_segments_and_trained_text(dataset: Path, llama2_tokenizer_dir) -> None:
    from packft.templates import load_tokenizer

    tok = load_tokenizer(llama2_tokenizer_dir, "llama2")
    segs = decode_row(dataset, 0, tok)
    assert segs[-1]["text"] == "<padding>" and segs[-1]["tokens"] >= 1
    assert sum(s["tokens"] for s in segs) == 1024
    for seg in segs[:-1]:
        assert seg["text"].startswith("<s>") and "[/INST]" in seg["text"]
        assert "[INST]" not in seg["trained_text"]  # prompts are masked
    with pytest.raises(IndexError, match="out of range"):
        decode_row(dataset, 10_000, tok)


def test_reports_inconsistent_or_missing_files(dataset: Path, tmp_path: Path, capsys) -> None:
    for name in dataset.parent.iterdir():
        if name.is_file():
            (tmp_path / name.name).write_bytes(name.read_bytes())
    copy = tmp_path / dataset.name
    assert main(["inspect", str(copy), "--verify"]) == 0  # a copy elsewhere is the same set
    with open(f"{copy}_packed_labels_document.bin", "ab") as f:
        f.write(b"\0\0\0\0")
    assert main(["inspect", str(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ds_packed_labels_document.bin" in err
    assert "bytes, the sidecar records" in err
    Path(f"{copy}.packft.json").unlink()  # packft's plan without its sidecar: unfinished write
    assert main(["inspect", str(copy)]) == 1
    assert "ds.packft.plan.npz, ds.rejects.jsonl exist but ds.packft.json does not" in (
        capsys.readouterr().err
    )
    Path(f"{copy}.packft.plan.npz").unlink()
    Path(f"{copy}.rejects.jsonl").unlink()  # now like MindSpeed's own set: structure is checked
    assert main(["inspect", str(copy)]) == 1
    err = capsys.readouterr().err
    assert (
        "no packft sidecar" in err and "the index describes" in err and len(err.splitlines()) == 1
    )
