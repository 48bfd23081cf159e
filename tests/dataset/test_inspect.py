"""`packft inspect`: stats, consistency check against the sidecar, decoded rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packft.cli import main
from packft.core.errors import UsageError
from packft.dataset.inspect import TRAINED_MARKS, decode_row, load_sidecar
from packft.pack.plan import PackPlan


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
    segments = decode_row(dataset, 2, _tokenizer(dataset))
    padding = segments[-1]
    assert f"--- padding: {padding['tokens']} tokens (pad id " in out
    for seg in segments[:-1]:  # piped: each sample's text on its own lines, never re-wrapped
        assert (
            f"--- sample {seg['sample']}: {seg['tokens']} tokens, {seg['trained']} trained" in out
        )
        marked = "".join(f"{TRAINED_MARKS[0]}{t}{TRAINED_MARKS[1]}" if trained else t
                         for t, trained in seg["spans"])  # fmt: skip
        assert marked in out
    assert max(len(line) for line in out.splitlines()) > 120  # rich would have cut at 80


def _tokenizer(prefix: Path):
    from packft.tokenize.templates import load_tokenizer

    side = load_sidecar(prefix)
    return load_tokenizer(side["tokenizer"], side["template"])


def test_labels_columns_show_every_token(dataset: Path, capsys) -> None:
    import numpy as np

    from packft.dataset.indexed import open_sft_dataset

    assert main(["inspect", str(dataset), "--row", "1", "--labels"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("pos\tsample\tid\tlabel\ttoken\n") :].splitlines()[1:]
    data = open_sft_dataset(dataset)
    ids, labels = np.asarray(data["input_ids"][1]), np.asarray(data["labels"][1])
    assert len(table) == 1024 == len(ids)
    cols = [line.split("\t") for line in table]
    assert [int(c[2]) for c in cols] == ids.tolist()
    assert [c[3] == "-" for c in cols] == (labels == -100).tolist()
    assert all(int(c[3]) == int(c[2]) for c in cols if c[3] != "-")  # a label is the token
    assert cols[-1][1] == "pad" and cols[-1][3] == "-"  # padding is named and never trained


def test_decode_row_segments_and_trained_text(dataset: Path, llama2_tokenizer_dir) -> None:
    from packft.tokenize.templates import load_tokenizer

    tok = load_tokenizer(llama2_tokenizer_dir, "llama2")
    segs = decode_row(dataset, 0, tok)
    assert segs[-1]["padding"] and segs[-1]["tokens"] >= 1 and segs[-1]["trained"] == 0
    assert sum(s["tokens"] for s in segs) == 1024
    for seg in segs[:-1]:
        assert seg["text"].startswith("<s>") and "[/INST]" in seg["text"]
        assert "[INST]" not in seg["trained_text"]  # prompts are masked
        trained = [text for text, is_trained in seg["spans"] if is_trained]
        assert trained and not any("[INST]" in t or "[/INST]" in t for t in trained)
        assert seg["spans"][0] == (seg["spans"][0][0], False)  # a sample opens with its prompt
    with pytest.raises(UsageError, match="out of range"):
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
