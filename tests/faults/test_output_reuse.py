"""A re-run reuses the set at --output-prefix only when it is exactly this run's (packft.preprocess.reuse).

Every damaged, mixed, foreign or unfinished set is written again, never reused: a truncated file,
another run's file of the same size, a sidecar edited to claim this run's dataset key (with
another plan, or other write options), other write options, a pending journal, an edited input,
``--overwrite-cache``. 200 Alpaca records (three invalid), Llama-2, seq 512, neat-pack; all runs
share one shard cache, so a rewrite costs only the write step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from packft.cli import main
from packft.core.journal import JOURNAL_SUFFIX
from packft.dataset.integrity import open_verified
from packft.ingest.quality import QualityGateError
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.results import InputFile, PreprocessResult, TokenizerPin
from packft.preprocess.reuse import expected_key
from packft.preprocess.steps import preprocess
from tests.faults.test_dataset_integrity import ALPACA, LLAMA2, run_packft, set_files

DATA_FILES = [f"ds_packed_{k}_document.{e}" for k in ("input_ids", "attention_mask", "labels")
              for e in ("bin", "idx")] + ["ds.packft.plan.npz", "ds.rejects.jsonl"]  # fmt: skip


def cfg(data: Path, prefix: Path, cache: Path, **changes) -> PreprocessConfig:
    fields = dict(input=str(data), tokenizer_name_or_path=str(LLAMA2), output_prefix=str(prefix),
                  prompt_type="llama2", pack=True, neat_pack=True, seq_length=512, pack_seed=1,
                  cache_dir=str(cache))  # fmt: skip
    return PreprocessConfig(**{**fields, **changes})


def cli_args(config: PreprocessConfig) -> list[str]:
    args = ["preprocess", "--input", config.input, "--tokenizer-name-or-path",
            config.tokenizer_name_or_path, "--output-prefix", config.output_prefix,
            "--prompt-type", "llama2", "--pack", "--neat-pack", "--seq-length", "512",
            "--pack-seed", str(config.pack_seed), "--cache-dir", config.cache_dir]  # fmt: skip
    return args


def stamps(prefix: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every file of the set and the sidecar: any rewrite changes them."""
    names = [*DATA_FILES, "ds.packft.json"]
    return {n: (os.stat(prefix.parent / n).st_ino, os.stat(prefix.parent / n).st_mtime_ns)
            for n in names}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reuse")
    data = root / "a200.json"
    records = json.loads(ALPACA.read_text())[:200]
    for at in (50, 120, 199):  # three invalid records: the rejects file is part of the set
        records[at] = {"instruction": f"no answer {at}"}
    data.write_text(json.dumps(records))
    return {"root": root, "data": data, "cache": root / "cache"}


@pytest.fixture
def written(world: dict[str, Path], tmp_path: Path) -> tuple[PreprocessConfig, PreprocessResult]:
    """A freshly written set at ``tmp_path/out/ds`` (seed 1, neat-pack)."""
    (tmp_path / "out").mkdir()
    config = cfg(world["data"], tmp_path / "out" / "ds", world["cache"])
    result = preprocess(config)
    assert not result.reused
    return config, result


def test_rerun_writes_nothing_and_reports_the_same_stats(written, capsys) -> None:
    config, first = written
    before, files = stamps(config.prefix), set_files(config.prefix)
    second = preprocess(config)
    assert second.reused and second.dataset_key == first.dataset_key
    assert stamps(config.prefix) == before and set_files(config.prefix) == files
    assert second.stats.model_dump() == json.loads(json.dumps(first.stats.model_dump()))
    assert set(second.step_seconds) == {"fetch", "check"}
    sidecar = json.loads(Path(f"{config.prefix}.packft.json").read_text())
    assert sidecar["dataset_key"] == first.dataset_key
    # the command says so in one line and prints the stats table
    capsys.readouterr()
    assert main(cli_args(config)) == 0
    err = capsys.readouterr().err
    assert f"output up to date: {config.prefix} (dataset {first.dataset_key[:12]}), nothing " \
           "written" in err  # fmt: skip
    assert "samples_in" in err and "197" in err and "wrote " not in err
    assert stamps(config.prefix) == before


def test_key_is_the_one_the_write_recorded(written) -> None:
    config, first = written
    pinned = [InputFile.pin(Path(config.input))]
    keys = expected_key(config, pinned, TokenizerPin.pin(config.tokenizer_name_or_path))
    assert keys.dataset_key == first.dataset_key
    assert expected_key(config.model_copy(update={"pack_seed": 2}), pinned,
                        TokenizerPin.pin(config.tokenizer_name_or_path)) != keys  # fmt: skip


@pytest.mark.parametrize("name", ["ds_packed_labels_document.bin", "ds_packed_input_ids_document.idx",
                                  "ds.packft.plan.npz", "ds.rejects.jsonl"])  # fmt: skip
def test_truncated_or_missing_file_is_rewritten(written, name: str) -> None:
    config, _ = written
    files = set_files(config.prefix)
    path = config.prefix.parent / name
    if path.stat().st_size:
        os.truncate(path, path.stat().st_size - 1)
    else:
        path.unlink()  # the empty rejects file: missing
    again = preprocess(config)
    assert not again.reused
    assert set_files(config.prefix) == files and open_verified(config.prefix, full=True)


def test_same_size_file_of_another_run_is_rewritten(written, world, tmp_path: Path) -> None:
    config, _ = written
    (tmp_path / "other").mkdir()
    other = cfg(world["data"], tmp_path / "other" / "ds", world["cache"], pack_seed=2)
    preprocess(other)
    name = "ds_packed_labels_document.bin"
    mine, theirs = config.prefix.parent / name, other.prefix.parent / name
    assert mine.stat().st_size == theirs.stat().st_size and mine.read_bytes() != theirs.read_bytes()
    files = set_files(config.prefix)
    shutil.copy2(theirs, mine)
    again = preprocess(config)
    assert not again.reused and set_files(config.prefix) == files


@pytest.mark.parametrize("change", [{"pack_seed": 2}, {"neat_pack": False}, {"dtype": "optimal"}])
def test_sidecar_edited_to_claim_this_runs_key_is_rewritten(written, change) -> None:
    """The set of other options (another plan, or the same plan written otherwise) with a
    sidecar edited to claim the key of this run: written again, and then it is this run's."""
    config, _ = written
    wanted = config.model_copy(update=change)
    pinned = [InputFile.pin(Path(config.input))]
    key = expected_key(wanted, pinned, TokenizerPin.pin(config.tokenizer_name_or_path)).dataset_key
    sidecar_file = Path(f"{config.prefix}.packft.json")
    sidecar = json.loads(sidecar_file.read_text())
    assert sidecar["dataset_key"] != key
    sidecar_file.write_text(json.dumps({**sidecar, "dataset_key": key}))
    again = preprocess(wanted)
    assert not again.reused and again.dataset_key == key
    recorded = open_verified(config.prefix, full=True).sidecar
    assert all(recorded["config"][k] == v for k, v in change.items())
    assert preprocess(wanted).reused  # the rewritten set is this run's: the next run reuses it


def test_other_write_options_are_written_not_reused(written) -> None:
    config, first = written
    optimal = preprocess(config.model_copy(update={"dtype": "optimal"}))
    assert not optimal.reused and optimal.dataset_key != first.dataset_key
    sidecar = open_verified(config.prefix).sidecar
    assert sidecar["input_ids_dtype"] == "uint16"


def test_overwrite_cache_and_an_edited_input_are_written(written, tmp_path: Path) -> None:
    config, first = written
    before = stamps(config.prefix)
    assert not preprocess(config.model_copy(update={"overwrite_cache": True})).reused
    assert stamps(config.prefix) != before
    data = tmp_path / "edited.json"
    records = json.loads(Path(config.input).read_text())
    records[0]["output"] += " (edited)"
    data.write_text(json.dumps(records))
    edited = preprocess(config.model_copy(update={"input": str(data)}))
    assert not edited.reused and edited.dataset_key != first.dataset_key


def test_a_pending_journal_is_finished_and_written_again(written, world) -> None:
    config, _ = written
    files = set_files(config.prefix)
    # a rerun killed after its commit was decided (overwrite_cache makes it write)
    killed = run_packft([*cli_args(config), "--overwrite-cache"], "dataset.renamed@2=kill")
    assert killed.returncode == -9, killed.stderr
    assert (config.prefix.parent / f".ds{JOURNAL_SUFFIX}").exists()
    time.sleep(0.1)  # the killed run's files are older than this by more than a clock tick
    started = time.time_ns()
    again = preprocess(config)
    assert not again.reused and "write" in again.step_seconds
    assert set_files(config.prefix) == files
    # every file of the set was written by this run (renamed files keep their older mtime)
    assert all(os.stat(config.prefix.parent / n).st_mtime_ns >= started for n in DATA_FILES)


def test_a_stricter_quality_gate_refuses_instead_of_reusing(written) -> None:
    config, _ = written
    with pytest.raises(QualityGateError, match="197 of 200 records are valid"):
        preprocess(config.model_copy(update={"min_valid_fraction": 0.99}))
    assert preprocess(config).reused  # the set is unchanged
