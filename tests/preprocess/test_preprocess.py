"""`packft preprocess` end to end on the shared Alpaca/ShareGPT files, Llama-2 tokenizer, llama2."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packft.cli import main
from packft.dataset.stats import DatasetStats
from packft.pack.plan import PackPlan
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.inputs import validate_input
from packft.preprocess.steps import fetch_inputs, plan, preprocess, tokenize_input
from packft.tokenize.shards import ShardReader
from tests.helpers.mindspeed_reference import mindspeed_pack_files, mindspeed_tokenize, read_sft

SEQ = 4096


def seed_args(input_path: Path, prefix: Path, cache: Path, handler: str = "Alpaca") -> list[str]:
    """The seed's command line (MindSpeed's llama2 pack recipe), unchanged."""
    return [
        "preprocess", "--input", str(input_path),
        "--tokenizer-name-or-path", str(LLAMA2), "--output-prefix", str(prefix),
        "--workers", "1", "--log-interval", "1000", "--tokenizer-type", "PretrainedFromHF",
        "--overwrite-cache", f"--handler-name={handler}StyleInstructionHandler",
        "--prompt-type", "llama2", "--pack", "--append-eod", "--seq-length", str(SEQ),
        "--map-keys", '{"prompt":"instruction","query":"input","response":"output"}'
        if handler == "Alpaca" else "{}",
        "--cache-dir", str(cache),
    ]  # fmt: skip


LLAMA2 = (
    Path(__file__).resolve().parents[1] / "assets" / "llama2-tokenizer"
)  # the same directory as the llama2 fixture


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tokenizer(llama2_tokenizer_dir: Path):
    from packft.tokenize.templates import load_tokenizer

    return load_tokenizer(llama2_tokenizer_dir, "llama2")


@pytest.fixture(scope="session")
def alpaca_neat(tmp_path_factory, alpaca_en_path: Path, cache: Path) -> Path:
    prefix = tmp_path_factory.mktemp("alpaca") / "alpaca"
    args = seed_args(alpaca_en_path, prefix, cache) + ["--neat-pack", "--pack-seed", "0"]
    assert main(args) == 0
    return prefix


@pytest.fixture(scope="session")
def sharegpt_neat(tmp_path_factory, sharegpt_system_path, sharegpt_toolcall_path, cache) -> Path:
    data = tmp_path_factory.mktemp("sharegpt_in")
    for path in (sharegpt_system_path, sharegpt_toolcall_path):
        (data / path.name).symlink_to(path)
    prefix = tmp_path_factory.mktemp("sharegpt") / "sg"
    assert main(seed_args(data, prefix, cache, "Sharegpt") + ["--neat-pack"]) == 0
    return prefix


def samples_of(prefix: Path) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """(ids, labels, source_row) of every tokenized sample, from the shards the sidecar names."""
    side = json.loads(Path(f"{prefix}.packft.json").read_text())
    cache = Path(side["config"]["cache_dir"]) / "shards"
    out = []
    for name in side["shards"]:
        reader = ShardReader(cache / name)
        for i in range(reader.num_samples):
            ids, labels = reader.sample(i)
            out.append((tuple(ids.tolist()), tuple(labels.tolist()), int(reader.source_rows[i])))
    return out


def segments(ids: np.ndarray, mask: np.ndarray, labels: np.ndarray):
    """Split a neat-packed row by its segment ids (independently of the plan file)."""
    out = []
    for seg in range(1, int(mask.max()) + 1):
        where = np.flatnonzero(mask == seg)
        assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
        out.append((ids[where], labels[where]))
    assert np.all(mask[mask.astype(bool).sum() :] == 0)  # padding only at the end
    return out


def test_sidecar_stats_are_the_typed_stats(alpaca_neat: Path) -> None:
    """One field list: the sidecar's ``stats`` are :class:`DatasetStats`, keys in field order."""
    stats = json.loads(Path(f"{alpaca_neat}.packft.json").read_text())["stats"]
    assert list(stats) == list(DatasetStats.model_fields)
    typed = DatasetStats.model_validate(stats)
    assert typed.model_dump() == stats and typed.valid == stats["valid"] > 0


@pytest.mark.parametrize("which", ["alpaca_neat", "sharegpt_neat"])
def test_every_sample_intact_in_exactly_one_row(request, which: str) -> None:
    prefix = request.getfixturevalue(which)
    data = read_sft(prefix)
    samples = samples_of(prefix)
    side = json.loads(Path(f"{prefix}.packft.json").read_text())
    stats = side["stats"]
    assert stats["efficiency"] >= 0.99
    assert stats["rows"] == len(data["input_ids"]) == stats["lower_bound_rows"]
    found: Counter = Counter()
    for ids, mask, labels in zip(data["input_ids"], data["attention_mask"], data["labels"],
                                 strict=True):  # fmt: skip
        assert len(ids) == SEQ
        n_real = int(np.count_nonzero(mask))
        assert np.all(labels[n_real:] == -100) and np.all(ids[n_real:] == side["pad_id"])
        for seg_ids, seg_labels in segments(ids, mask, labels):
            assert seg_labels[0] == -100  # first token of every packed sample
            found[tuple(seg_ids.tolist()), tuple(seg_labels[1:].tolist())] += 1
    want = Counter((s[0], s[1][1:]) for s in samples)
    assert found == want
    assert stats["valid"] == len(samples) == sum(found.values())
    assert stats["total_tokens"] == sum(len(s[0]) for s in samples)


def test_decoded_row_equals_templated_records(alpaca_neat: Path, alpaca_en_path: Path,
                                              tokenizer) -> None:  # fmt: skip
    records = json.loads(alpaca_en_path.read_text())
    the_plan = PackPlan.load(f"{alpaca_neat}.packft.plan.npz")
    samples = samples_of(alpaca_neat)
    data = read_sft(alpaca_neat)
    for row in (0, the_plan.num_rows - 1):
        ids = data["input_ids"][row]
        at = 0
        for i, _, n in zip(*the_plan.row(row), strict=True):
            rec = records[samples[int(i)][2]]
            user = rec["instruction"] + ("\n" + rec["input"] if rec["input"] else "")
            expected = f"<s>[INST] {user} [/INST] {rec['output']}</s></s>"
            text = tokenizer.decode(ids[at : at + int(n)].tolist())
            assert " ".join(text.split()) == " ".join(expected.split()).replace(
                "<s>[INST]", "<s> [INST]"
            )
            at += int(n)


def test_no_pack_is_byte_identical_to_mindspeed_reference(
    tmp_path: Path, alpaca_en_path: Path, reference_dir: Path, cache: Path
) -> None:
    prefix = tmp_path / "alpaca"
    args = [a for a in seed_args(alpaca_en_path, prefix, cache) if a != "--pack"]
    assert main([*args, "--pack-algorithm", "knapsack", "--overlong", "drop"]) == 0
    ref = reference_dir / "mindspeed_alpaca_llama2_nopack4096"
    for key in ("input_ids", "attention_mask", "labels"):
        for ext in ("bin", "idx"):
            name = f"alpaca_packed_{key}_document.{ext}"
            assert (tmp_path / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.parametrize("neat", [False, True])
def test_knapsack_pack_matches_mindspeed_packer(tmp_path, alpaca_en_path, cache, neat) -> None:
    """Tokenization is byte-identical (test above); packing is MindSpeed's packer, simulated."""
    prefix = tmp_path / "ks"
    args = seed_args(alpaca_en_path, prefix, cache) + ["--pack-algorithm", "knapsack"]
    assert main([*args, "--overlong", "drop", *(["--neat-pack"] if neat else [])]) == 0
    samples = [(list(s[0]), list(s[1])) for s in samples_of(prefix)]
    for key, (bin_bytes, idx_bytes) in mindspeed_pack_files(samples, SEQ, neat, 2).items():
        assert Path(f"{prefix}_packed_{key}_document.idx").read_bytes() == idx_bytes
        assert Path(f"{prefix}_packed_{key}_document.bin").read_bytes() == bin_bytes


def test_sidecar_records_provenance(alpaca_neat: Path, alpaca_en_path: Path) -> None:
    side = json.loads(Path(f"{alpaca_neat}.packft.json").read_text())
    import hashlib

    digest = hashlib.sha256(alpaca_en_path.read_bytes()).hexdigest()
    assert side["inputs"] == {str(alpaca_en_path): digest}
    assert len(side["tokenizer_sha256"]) == 64 and side["template"] == "llama2"
    assert side["algorithm"] == "bfd" and side["seed"] == 0 and side["config"]["neat_pack"]
    for key in ("samples_in", "valid", "rejected", "truncated", "dropped", "split",
                "total_tokens", "supervised_tokens", "rows", "lower_bound_rows", "efficiency",
                "pad_fraction", "samples_per_row_mean", "samples_per_row_min",
                "samples_per_row_max", "samples_per_row_histogram", "sum_squared_lengths",
                "efficiency_padded_alone"):  # fmt: skip
        assert key in side["stats"], key
    assert side["stats"]["samples_in"] == 999
    assert side["stats"]["efficiency_padded_alone"] < 0.1 < side["stats"]["efficiency"]


def test_overlong_policies_counted(tmp_path: Path, alpaca_en_path: Path, cache: Path) -> None:
    counts = {}
    for policy in ("truncate", "drop", "split"):
        cfg = PreprocessConfig(
            input=str(alpaca_en_path), tokenizer_name_or_path=str(LLAMA2),
            output_prefix=str(tmp_path / policy), prompt_type="llama2", pack=True,
            append_eod=True, seq_length=256, overlong=policy, cache_dir=str(cache),
            dtype="optimal",
        )  # fmt: skip
        result = preprocess(cfg)
        counts[policy] = result.stats
        lengths = [len(x) for x in read_sft(tmp_path / policy)["input_ids"]]
        assert set(lengths) == {256}
    unsplit = counts["split"].total_tokens
    assert counts["drop"].dropped > 0 and counts["drop"].valid == 999
    assert counts["split"].split == counts["drop"].dropped - counts["split"].dropped
    assert counts["truncate"].truncated > 0 and counts["truncate"].dropped == 0
    assert counts["truncate"].total_tokens < unsplit and counts["split"].dropped == 0
    idx = (tmp_path / "split_packed_input_ids_document.idx").read_bytes()
    assert struct.unpack("<B", idx[17:18])[0] == 8  # --dtype optimal: uint16 for a 32000 vocab


def test_plan_is_independent_of_workers_and_cache(tmp_path, alpaca_en_path, cache) -> None:
    base = dict(input=str(alpaca_en_path), tokenizer_name_or_path=str(LLAMA2),
                prompt_type="llama2", pack=True, append_eod=True, seq_length=1024,
                pack_seed=3, mix=300)  # fmt: skip
    one = PreprocessConfig(**base, output_prefix=str(tmp_path / "a"), cache_dir=str(cache))
    two = PreprocessConfig(**base, output_prefix=str(tmp_path / "b"), workers=2,
                           cache_dir=str(tmp_path / "c2"))  # fmt: skip
    shard_one = tokenize_input(fetch_inputs(one)[0], one)
    mtime = shard_one.stat().st_mtime_ns
    assert tokenize_input(fetch_inputs(one)[0], one) == shard_one  # cached, not rewritten
    assert shard_one.stat().st_mtime_ns == mtime
    shard_two = tokenize_input(fetch_inputs(two)[0], two)
    assert shard_two.read_bytes() == shard_one.read_bytes()
    a, b = PackPlan.load(plan(one, [shard_one])), PackPlan.load(plan(two, [shard_two]))
    assert np.array_equal(a.items, b.items) and np.array_equal(a.row_offsets, b.row_offsets)


def test_config_errors_list_valid_choices(tmp_path: Path, capsys) -> None:
    args = ["preprocess", "--input", "x.json", "--tokenizer-name-or-path", str(LLAMA2),
            "--output-prefix", str(tmp_path / "o"), "--handler-name", "Nope",
            "--prompt-type", "llama9", "--neat-pack"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "AlpacaStyleInstructionHandler" in err and "SharegptStyleInstructionHandler" in err
    assert "llama2" in err and "--neat-pack needs --pack" in err


def test_invalid_records_are_counted_and_kept(tmp_path: Path, cache: Path) -> None:
    rows = [{"instruction": "Say hi", "input": "", "output": "Hi"},
            {"instruction": "No answer", "input": ""},
            {"instruction": "Add", "input": "1+1", "output": "2"}]  # fmt: skip
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    cfg = PreprocessConfig(input=str(data), tokenizer_name_or_path=str(LLAMA2),
                           output_prefix=str(tmp_path / "o"), prompt_type="llama2", pack=True,
                           seq_length=64, cache_dir=str(cache))  # fmt: skip
    summary = validate_input(data, cfg)
    assert (summary.total, summary.valid) == (3, 2)
    result = preprocess(cfg)
    assert result.stats.samples_in == 3 and result.stats.valid == 2
    assert result.stats.rejected_total == 1
    rejects = (tmp_path / "o.rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and json.loads(rejects[0])["row"] == 1
    assert read_sft(tmp_path / "o")["input_ids"][0].shape == (64,)
    strict = cfg.model_copy(update={"on_invalid": "fail", "overwrite_cache": True})
    with pytest.raises(ValueError, match="d.json:2"):
        preprocess(strict)


def test_quality_gate_fails_before_writing_and_keeps_the_previous_dataset(
    tmp_path: Path, cache: Path
) -> None:
    from packft.ingest.quality import QualityGateError

    good = [{"instruction": f"Q{i}", "input": "", "output": f"A{i}"} for i in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in good))
    cfg = PreprocessConfig(input=str(data), tokenizer_name_or_path=str(LLAMA2),
                           output_prefix=str(tmp_path / "o"), prompt_type="llama2", pack=True,
                           seq_length=64, cache_dir=str(cache))  # fmt: skip
    preprocess(cfg)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o")}
    bad = {"instruction": "Q", "input": "", "output": " "}
    data.write_text("".join(json.dumps(r) + "\n" for r in [good[0], bad, bad, bad]))
    with pytest.raises(
        QualityGateError,
        match=r"only 1 of 4 records are valid \(25\.0% < "
        r"--min-valid-fraction 0\.5\); rejected: empty_answer 3; e\.g\. "
        r".*d\.jsonl:2: empty_answer",
    ):  # fmt: skip  (record 2: the 1-based number of the first bad line)
        preprocess(cfg)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o")}
    assert after == before  # nothing written: the previous dataset, sidecar and rejects stay
    assert main(seed_args(data, tmp_path / "o", cache)) == 1  # the CLI: exit 1
    lenient = preprocess(cfg.model_copy(update={"min_valid_fraction": 0.25}))
    assert lenient.stats.valid == 1 and lenient.stats.rejected == {"empty_answer": 3}


def test_overlong_flag_mapping(tmp_path: Path) -> None:
    def cfg(**kw: Any) -> PreprocessConfig:
        return PreprocessConfig(input="x", tokenizer_name_or_path="t", prompt_type="llama2",
                                output_prefix=str(tmp_path / "o"), pack=True, seq_length=4096,
                                append_eod=True, **kw)  # fmt: skip

    # truncate: the tokenizer's template-aware cut leaves room for the eod in a row
    assert cfg().tokenize_budget() == 4094 and cfg().pack_overlong() == "truncate"
    # drop: MindSpeed's tokenization (budget seq_length), then drop what exceeds seq_length - 1
    assert cfg(overlong="drop").tokenize_budget() == 4096
    assert cfg(overlong="drop").pack_overlong() == "drop"
    # ... except MindSpeed's neat-pack packer, which cuts to seq_length - 1
    neat = cfg(overlong="drop", neat_pack=True, pack_algorithm="knapsack")
    assert neat.pack_overlong() == "truncate"
    assert cfg(overlong="drop", neat_pack=True).pack_overlong() == "drop"  # bfd: as asked
    assert cfg(overlong="split").tokenize_budget() is None


def test_neat_knapsack_drop_matches_mindspeed_on_overlong_multiturn(
    tmp_path: Path, sharegpt_system_path: Path, cache: Path, tokenizer
) -> None:
    """MindSpeed's --neat-pack: _make_pairs to seq, infer_seqlen(s, t, seq - 1) on each pair
    alone, eod, then its packer cuts what is still >= seq to seq - 1 and knapsacks."""
    from packft.ingest.formats import to_conversation
    from packft.ingest.rejects import InvalidRecord
    from packft.tokenize.templates import get_template

    seq = 48
    prefix = tmp_path / "sg"
    args = [a if a != str(SEQ) else str(seq) for a in seed_args(sharegpt_system_path, prefix,
                                                                   cache, "Sharegpt")]  # fmt: skip
    extra = ["--neat-pack", "--pack-algorithm", "knapsack", "--overlong", "drop"]
    assert main([*args, *extra]) == 0
    side = json.loads(Path(f"{prefix}.packft.json").read_text())
    assert side["stats"]["rejected_total"] == 0 and side["stats"]["dropped"] == 0
    convs = []
    for row, record in enumerate(json.loads(sharegpt_system_path.read_text())):
        try:
            convs.append(to_conversation(record, "sharegpt", {}))
        except InvalidRecord as error:  # pragma: no cover - the file is valid (checked above)
            raise AssertionError(f"row {row}: {error}") from error
    tpl = get_template("llama2")
    samples = [mindspeed_tokenize(c, tpl, tokenizer, seq, True, seq - 1) for c in convs]
    plain = [mindspeed_tokenize(c, tpl, tokenizer, seq, True) for c in convs]
    # the case this test is about: multi-turn samples the per-pair cut changes, some of which
    # are still longer than a row afterwards (the packer's tail cut then applies)
    cut = [i for i, (a, b) in enumerate(zip(samples, plain, strict=True)) if a != b]
    assert any(len(convs[i].messages) > 2 for i in cut)
    assert any(len(samples[i][0]) >= seq and len(convs[i].messages) > 2 for i in cut)
    for key, (bin_bytes, idx_bytes) in mindspeed_pack_files(samples, seq, True, 2).items():
        assert Path(f"{prefix}_packed_{key}_document.idx").read_bytes() == idx_bytes, key
        assert Path(f"{prefix}_packed_{key}_document.bin").read_bytes() == bin_bytes, key


def test_write_takes_tokenizer_ids_from_shards(tmp_path: Path, alpaca_en_path: Path,
                                               cache: Path) -> None:  # fmt: skip
    from packft.preprocess.steps import write
    from packft.tokenize.shards import TokenShards, read_header, write_shard

    cfg = PreprocessConfig(input=str(alpaca_en_path), tokenizer_name_or_path=str(LLAMA2),
                           output_prefix=str(tmp_path / "a"), prompt_type="llama2", pack=True,
                           append_eod=True, seq_length=512, dtype="optimal",
                           cache_dir=str(cache))  # fmt: skip
    shard = tokenize_input(fetch_inputs(cfg)[0], cfg)
    header = read_header(shard)
    assert (header["pad_id"], header["eos_id"], header["vocab_size"]) == (2, 2, 32000)
    # no tokenizer at write time: the shard header is enough
    gone = cfg.model_copy(update={"tokenizer_name_or_path": str(tmp_path / "no-such-tokenizer")})
    stats = write(gone, [shard], plan(cfg, [shard]))
    data = read_sft(tmp_path / "a")
    assert data["input_ids"][0].dtype == np.dtype("<u2") and data["input_ids"][0][-1] == 2
    assert stats.rows == len(data["input_ids"])
    # a shard from before the header held the ids: write loads the tokenizer (and needs it)
    old = tmp_path / "old.arrow"
    with TokenShards([shard]) as shards:
        from packft.tokenize.shards import record_batch

        ids, labels = shards.read(0)
        batch = record_batch(ids, labels, np.array([0, len(ids)]), np.array([0]))
    legacy = {k: v for k, v in header.items() if k not in ("pad_id", "eos_id", "vocab_size")}
    write_shard(old, legacy, [batch], lambda: {"samples_in": 1, "valid": 1})
    old_cfg = cfg.model_copy(update={"output_prefix": str(tmp_path / "o")})
    write(old_cfg, [old], plan(old_cfg, [old]))
    assert read_sft(tmp_path / "o")["input_ids"][0][-1] == 2
    with pytest.raises(OSError):
        write(gone.model_copy(update={"output_prefix": str(tmp_path / "x")}), [old],
              plan(old_cfg, [old]))  # fmt: skip


def test_shard_cache_key_has_format_version(tmp_path: Path, alpaca_en_path: Path,
                                            monkeypatch) -> None:  # fmt: skip
    from packft.preprocess import steps as pre

    cfg = PreprocessConfig(input=str(alpaca_en_path), tokenizer_name_or_path=str(LLAMA2),
                           output_prefix=str(tmp_path / "a"), prompt_type="llama2")  # fmt: skip
    now = pre._shard_key(alpaca_en_path, cfg)
    monkeypatch.setattr(pre, "SHARD_FORMAT", 1)
    assert pre._shard_key(alpaca_en_path, cfg) != now  # old cached shards are not reused
    neat = cfg.model_copy(update={"pack": True, "seq_length": 64, "neat_pack": True,
                                  "overlong": "drop", "pack_algorithm": "knapsack"})  # fmt: skip
    assert neat.pair_cutoff() == 63
    assert pre._options(neat).pair_cutoff == 63
    assert pre._options(neat.model_copy(update={"pack_algorithm": "bfd"})).pair_cutoff is None


def test_fetch_inputs_refresh_downloads_again(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    (served / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/d.jsonl"
        cfg = PreprocessConfig(input=url, tokenizer_name_or_path=str(LLAMA2),
                               output_prefix=str(tmp_path / "o"), prompt_type="llama2",
                               cache_dir=str(tmp_path / "cache"))  # fmt: skip
        first = fetch_inputs(cfg)[0].read_text()
        (served / "d.jsonl").write_text('{"instruction": "changed", "output": "b"}\n')
        assert fetch_inputs(cfg)[0].read_text() == first  # cached copy
        assert "changed" in fetch_inputs(cfg, refresh=True)[0].read_text()
        # --input-sha256: the right digest passes, a wrong one is a clear error
        good = hashlib.sha256((served / "d.jsonl").read_bytes()).hexdigest()
        fresh = cfg.model_copy(update={"input_sha256": good, "cache_dir": str(tmp_path / "c2")})
        assert "changed" in fetch_inputs(fresh)[0].read_text()
        bad = cfg.model_copy(update={"input_sha256": "0" * 64, "cache_dir": str(tmp_path / "c3")})
        with pytest.raises(Exception, match="(?i)sha256|checksum"):
            fetch_inputs(bad)
    finally:
        server.shutdown()
        server.server_close()


def test_failed_write_keeps_previous_rejects_with_its_sidecar(tmp_path: Path, cache: Path) -> None:
    from packft.preprocess.steps import write

    def data(name: str, bad: int) -> Path:
        rows = [{"instruction": "Say hi", "input": "", "output": "Hi"},
                {"instruction": "Add", "input": "1+1", "output": "2"}]  # fmt: skip
        rows += [{"instruction": f"no answer {i}"} for i in range(bad)]
        (tmp_path / name).write_text(json.dumps(rows))
        return tmp_path / name

    base = dict(tokenizer_name_or_path=str(LLAMA2), output_prefix=str(tmp_path / "o"),
                prompt_type="llama2", pack=True, seq_length=64, cache_dir=str(cache))  # fmt: skip
    first = PreprocessConfig(input=str(data("a.json", 1)), **base)
    preprocess(first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o")}
    assert len((tmp_path / "o.rejects.jsonl").read_text().splitlines()) == 1
    # a new run over other data whose write fails mid-way (its plan names a missing sample)
    second = PreprocessConfig(input=str(data("b.json", 3)), **base)
    shard = tokenize_input(fetch_inputs(second)[0], second)
    bigger = PackPlan.load(plan(first, [tokenize_input(fetch_inputs(first)[0], first)]))
    bigger.items[:] = 99
    broken = bigger.save(tmp_path / "broken.npz")
    with pytest.raises(IndexError):
        write(second, [shard], broken)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o")}
    assert after == before  # rejects, sidecar and data of the previous run, together
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
