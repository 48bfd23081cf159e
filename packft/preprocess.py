"""``packft preprocess``: MindSpeed-LLM's ``preprocess_data.py`` for SFT data, as four steps.

The command line of MindSpeed's pack recipe works unchanged (``--input --tokenizer-name-or-path
--output-prefix --workers --log-interval --tokenizer-type PretrainedFromHF --overwrite-cache
--handler-name --prompt-type --pack --neat-pack --append-eod --seq-length --map-keys``), plus
``--pack-algorithm --pack-seed --mix --overlong --dtype --on-invalid --cache-dir``. Steps (the
Prefect tasks in ``tasks/`` wrap exactly these functions):

1. :func:`fetch_inputs`   resolve ``--input`` (file, directory, URL, hf://) to local files
   (:func:`validate_input` optionally checks a file's records without tokenizing).
2. :func:`tokenize_input` one input file -> one tokenized Arrow shard, cached under
   ``--cache-dir`` by (input sha256, tokenizer hash, template, options).
   :func:`check_input_quality` then refuses input with too few valid records
   (:mod:`packft.quality`, ``--min-valid-fraction``) before anything is written.
3. :func:`plan`           all shards' lengths -> one global plan file (``packft.pack``).
4. :func:`write`          rows -> the three ``{prefix}_packed_*_document`` datasets, plan, sidecar.

How ``--overlong`` reaches the tokenizer: ``truncate`` gives the template-aware (per-turn,
proportional) truncation a budget of ``seq_length - 1`` minus the eod, so samples fit a row with
their eod intact, and keeps every template marker of the kept turns, cutting inside the
user/assistant text (:mod:`packft.truncation`); ``drop`` tokenizes exactly like MindSpeed (budget
``seq_length``, MindSpeed's cut, whose lost prompt markers are only counted) and
then drops what exceeds ``seq_length - 1`` (MindSpeed's ``--pack`` and unpacked rule; with
``--pack-algorithm knapsack --neat-pack`` packft does what MindSpeed's ``--neat-pack`` does
instead: each turn's (source, target) pair is cut on its own to ``seq_length - 1`` at
tokenization, and a sample still longer than that is tail-cut at packing); ``split`` tokenizes
without a budget and cuts samples into row-sized pieces.

The write step takes the pad id and vocabulary size from the shard headers; it loads the
tokenizer only for shards written before the headers carried them.

Measured (benchmarks/bench_preprocess.py, the seed's command, 100k Alpaca records, this 2-core
box shared at load average 3-10, so each run is compared with a floor measured just before it:
one batched Rust encode of the same texts): the shared file repeated, 44 s (--workers 1) and
56 s (--workers 2) vs floors of 57 s and 61 s (the tokenizer encodes repeated strings once per
batch); every record made distinct, 75 s and 52 s vs 48 s and 42 s (1.57x, 1.24x). Tokenizing
is ~90% of it; plan ~1 s, write 1-3 s. Peak RSS over the process tree 0.77 GiB at 100k and
0.76 GiB at 400k records (--workers 2), main process ~0.55 GiB.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from packft import __version__
from packft.limits import DEFAULT_MAX_RECORD_BYTES
from packft.quality import DEFAULT_MIN_VALID_FRACTION

HANDLERS = (
    "AlpacaStyleInstructionHandler",
    "SharegptStyleInstructionHandler",
    "OpenAIInstructionHandler",
)
DEFAULT_CACHE = "~/.cache/packft"
log = logging.getLogger(__name__)
SHARD_FORMAT = 2
"""In the shard cache key: 2 = header with pad/eos ids and vocab size, neat-pack pair cut."""


class PreprocessConfig(BaseModel):
    """Options of ``packft preprocess``; field names are MindSpeed's flag names."""

    input: str = Field(description="data file, directory, http(s) URL or hf://datasets/OWNER/NAME")
    tokenizer_name_or_path: str = Field(description="HF tokenizer directory or hub id")
    output_prefix: str = Field(description="writes {prefix}_packed_{key}_document.{bin,idx}")
    handler_name: str = Field(
        "AlpacaStyleInstructionHandler", description="input format: " + " | ".join(HANDLERS)
    )
    prompt_type: str = Field(description="chat template (MindSpeed --prompt-type), e.g. llama2")
    tokenizer_type: Literal["PretrainedFromHF"] = Field(
        "PretrainedFromHF", description="only Hugging Face tokenizers are supported"
    )
    seq_length: int | None = Field(None, description="row length; required with --pack")
    pack: bool = Field(False, description="pack several samples per row of seq_length tokens")
    neat_pack: bool = Field(False, description="attention_mask = 1-based sample index per row")
    append_eod: bool = Field(False, description="append eos to every sample (trained)")
    map_keys: dict[str, Any] | None = Field(None, description="JSON map of column names")
    pack_algorithm: Literal["bfd", "ffd", "knapsack", "sequential"] = Field(
        "bfd", description="bfd | ffd | knapsack (MindSpeed's, byte-identical) | sequential"
    )
    pack_seed: int | None = Field(None, description="shuffle the row order with this seed")
    mix: int | None = Field(None, description="pack within random groups of this many samples")
    overlong: Literal["truncate", "drop", "split"] = Field(
        "truncate", description="samples longer than seq_length-1: truncate | drop | split"
    )
    dtype: Literal["int32", "optimal"] = Field(
        "int32", description="input_ids dtype; optimal = uint16 when the vocab is < 65500"
    )
    on_invalid: Literal["skip", "fail"] = Field(
        "skip", description="invalid records: skip (logged to {prefix}.rejects.jsonl) or fail"
    )
    repair: list[str] = Field(
        default_factory=list,
        description="ShareGPT/OpenAI repairs instead of rejects: leading-assistant, "
        "trailing-user, merge-consecutive (comma-separated or several values)",
    )
    workers: int = Field(1, description="tokenizer processes (output does not depend on it)")
    log_interval: int = Field(100, description="accepted for MindSpeed compatibility")
    overwrite_cache: bool = Field(False, description="re-tokenize even if a cached shard exists")
    cache_dir: str = Field(DEFAULT_CACHE, description="tokenized shards and downloads")
    input_sha256: str | None = Field(
        None, description="expected sha256 of a downloaded --input file (mismatch: clear error)"
    )
    min_valid_fraction: float = Field(
        DEFAULT_MIN_VALID_FRACTION,
        description="fail (exit 1, nothing written) when fewer records than this are valid; "
        "zero valid records always fail",
    )
    max_record_bytes: int = Field(
        DEFAULT_MAX_RECORD_BYTES,
        description="reject records larger than this (too_large) before tokenizing",
    )

    @field_validator("repair", mode="before")
    @classmethod
    def _repairs(cls, value: Any) -> list[str]:
        from packft.repairs import parse_repairs

        return parse_repairs(value)

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        from packft.templates import TEMPLATE_NAMES

        problems = []
        if self.handler_name not in HANDLERS:
            problems.append(
                f"unknown --handler-name {self.handler_name!r}; valid: {', '.join(HANDLERS)}"
            )
        if self.prompt_type.strip() not in TEMPLATE_NAMES:
            problems.append(
                f"unknown --prompt-type {self.prompt_type!r}; valid: {', '.join(TEMPLATE_NAMES)}"
            )
        if self.pack and self.seq_length is None:
            problems.append("--pack needs --seq-length")
        if self.neat_pack and not self.pack:
            problems.append("--neat-pack needs --pack")
        if self.seq_length is not None and self.seq_length < 2:
            problems.append(f"--seq-length must be >= 2, got {self.seq_length}")
        if self.mix is not None and self.mix < 1:
            problems.append(f"--mix must be >= 1, got {self.mix}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            problems.append(
                f"--min-valid-fraction must be in [0, 1], got {self.min_valid_fraction}"
            )
        if self.max_record_bytes < 1:
            problems.append(f"--max-record-bytes must be >= 1, got {self.max_record_bytes}")
        if self.handler_name in HANDLERS:
            problems += _map_keys_problems(self.handler_name, self.map_keys)
        if not Path(self.output_prefix).expanduser().resolve().parent.is_dir():
            problems.append(
                f"--output-prefix {self.output_prefix}: directory "
                f"{Path(self.output_prefix).expanduser().resolve().parent} does not exist"
            )
        if problems:
            raise ValueError(f"{len(problems)} problem(s):\n    - " + "\n    - ".join(problems))
        return self

    @property
    def prefix(self) -> Path:
        return Path(self.output_prefix).expanduser().resolve()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser().resolve()

    @property
    def capacity(self) -> int | None:
        return None if self.seq_length is None else self.seq_length - 1

    def mindspeed_neat(self) -> bool:
        """``--pack-algorithm knapsack --overlong drop --neat-pack``: MindSpeed's neat-pack cuts
        (per pair at tokenization, tail at packing) replace the drop, as in MindSpeed."""
        return self.overlong == "drop" and self.neat_pack and self.pack_algorithm == "knapsack"

    def pack_overlong(self) -> str:
        """The pack step's policy (MindSpeed's neat-pack cuts where plain --pack drops)."""
        return "truncate" if self.mindspeed_neat() else self.overlong

    def pair_cutoff(self) -> int | None:
        """MindSpeed's neat-pack per-pair cut ``seq_length - 1`` (see :func:`mindspeed_neat`)."""
        return self.seq_length - 1 if self.mindspeed_neat() and self.seq_length else None

    def tokenize_budget(self) -> int | None:
        """Truncation budget handed to the tokenizer (see the module docstring)."""
        if self.seq_length is None or self.overlong == "split":
            return None
        if self.overlong == "drop":
            return self.seq_length
        return max(2, self.seq_length - 1 - int(self.append_eod))


def _map_keys_problems(handler_name: str, map_keys: dict[str, Any] | None) -> list[str]:
    """--map-keys errors (unknown keys, wrong value types) as config problems, before any work."""
    from packft.formats import HANDLER_FORMATS
    from packft.keymap import get_key_map

    try:
        get_key_map(HANDLER_FORMATS[handler_name], map_keys)
    except ValueError as error:
        return [str(error)]
    return []


@dataclass
class PreprocessResult:
    """What a run produced."""

    prefix: Path
    files: list[Path]
    stats: dict[str, Any]
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0


# --- helpers ------------------------------------------------------------------------------------


def tokenizer_fingerprint(path: str) -> str:
    """sha256 over a local tokenizer directory's files (name + bytes); the id for hub names."""
    local = Path(path).expanduser()
    digest = hashlib.sha256()
    if local.is_dir():
        for file in sorted(p for p in local.iterdir() if p.is_file()):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    else:
        digest.update(str(path).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str, template: str) -> Any:
    from packft.templates import load_tokenizer

    return load_tokenizer(path, template)


def _fmt(cfg: PreprocessConfig) -> str:
    from packft.formats import HANDLER_FORMATS

    return HANDLER_FORMATS[cfg.handler_name]


def _options(cfg: PreprocessConfig):
    from packft.tokenize import TokenizeOptions

    return TokenizeOptions(
        seq_length=cfg.tokenize_budget(),
        append_eod=cfg.append_eod,
        overlong="truncate",
        keep_markers=cfg.overlong == "truncate",  # drop: MindSpeed's bytes; split: no cut
        pair_cutoff=cfg.pair_cutoff(),
        workers=cfg.workers,
        max_record_bytes=cfg.max_record_bytes,
    )


def _shard_key(path: Path, cfg: PreprocessConfig) -> str:
    from packft.sources import file_sha256

    key = {
        "input": file_sha256(path),
        "tokenizer": tokenizer_fingerprint(cfg.tokenizer_name_or_path),
        "template": cfg.prompt_type.strip(),
        "format": _fmt(cfg),
        "map_keys": cfg.map_keys,
        "repair": cfg.repair,
        "options": _options(cfg).recorded(),
        "on_invalid": cfg.on_invalid,  # a shard made with "skip" must not satisfy "fail"
        "version": __version__,
        "shard_format": SHARD_FORMAT,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# --- steps --------------------------------------------------------------------------------------


def rejects_path_for(shard: Path) -> Path:
    """Where :func:`tokenize_input` keeps a shard's rejected records (cached with the shard);
    :func:`write` concatenates them into ``{prefix}.rejects.jsonl``."""
    return Path(shard).with_suffix(".rejects.jsonl")


def fetch_inputs(cfg: PreprocessConfig, refresh: bool = False) -> list[Path]:
    """Local data files for ``--input`` (downloads land in ``--cache-dir``; ``refresh``
    downloads remote inputs again instead of reusing the cached copy)."""
    from packft.sources import resolve_input

    return resolve_input(
        cfg.input, cfg.cache_path / "downloads", sha256=cfg.input_sha256, refresh=refresh
    )


def validate_input(path: Path, cfg: PreprocessConfig, rejects_path: Path | None = None) -> Any:
    """Read and check every record of one input without tokenizing (a cheap pre-flight).

    Returns the :class:`packft.rejects.ValidationSummary` (total, valid, rejected per reason);
    with ``--on-invalid fail`` the first invalid record raises ``InvalidRecordError``.
    ``tokenize_input`` validates too, so this step is optional.
    """
    from packft.formats import validate_file
    from packft.limits import RecordLimits

    rejects = rejects_path or Path(f"{cfg.prefix}.{Path(path).name}.rejects.jsonl")
    limits = RecordLimits(max_bytes=cfg.max_record_bytes)
    return validate_file(
        Path(path), _fmt(cfg), cfg.map_keys, rejects, cfg.on_invalid, repair=cfg.repair,
        limits=limits,
    )  # fmt: skip


def check_input_quality(cfg: PreprocessConfig, shard_paths: list[Path], inputs: list[Path]) -> Any:
    """The quality gate (:func:`packft.quality.check_quality`) over tokenized shards' counts.

    Raises:
        packft.quality.QualityGateError: too few valid records; nothing has been written yet.
    """
    from packft.quality import InputCounts, check_quality
    from packft.shards import read_stats

    counts = []
    for shard, source in zip(shard_paths, inputs, strict=True):
        stats = read_stats(shard)
        rejects = rejects_path_for(shard)
        counts.append(InputCounts(str(source), int(stats.get("samples_in", 0)),
                                  int(stats.get("valid", 0)), dict(stats.get("rejected") or {}),
                                  str(rejects) if rejects.exists() else None))  # fmt: skip
    return check_quality(counts, cfg.min_valid_fraction)


def tokenize_input(
    path: Path,
    cfg: PreprocessConfig,
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Tokenize one input file into a shard; reuse the cached shard unless ``overwrite_cache``.

    The shard lives in ``out_dir`` (default ``{cache_dir}/shards``) under a name keyed by the
    input's sha256, the tokenizer files' hash, template, format, map keys and options, so any
    change re-tokenizes and an unchanged input is never tokenized twice. ``progress`` gets the
    number of records of each finished batch.
    """
    from packft.atomic import sweep
    from packft.integrity import check_seal, seal, unseal
    from packft.tokenize import tokenize_file

    out_dir = Path(out_dir) if out_dir is not None else cfg.cache_path / "shards"
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep(out_dir)
    shard = out_dir / f"{Path(path).name}.{_shard_key(Path(path), cfg)[:20]}.arrow"
    rejects = rejects_path_for(shard)
    if shard.exists() and not cfg.overwrite_cache:
        problem = check_seal(shard, [rejects])
        if problem is None:
            return shard
        log.warning("cached shard %s is not reused (%s): tokenizing %s again", shard, problem, path)
    unseal(shard)
    tokenize_file(
        Path(path),
        shard,
        fmt=_fmt(cfg),
        map_keys=cfg.map_keys,
        tokenizer_path=cfg.tokenizer_name_or_path,
        template=cfg.prompt_type.strip(),
        options=_options(cfg),
        rejects_path=rejects,
        on_invalid=cfg.on_invalid,
        progress=progress,
        repair=cfg.repair,
    )
    seal(shard, [rejects])
    return shard


def plan(cfg: PreprocessConfig, shard_paths: list[Path]) -> Path:
    """Plan rows over all shards at once; returns the plan file (in the cache directory)."""
    from packft.atomic import sweep
    from packft.integrity import seal, unseal
    from packft.pack import plan_packing, plan_unpacked
    from packft.shards import TokenShards

    with TokenShards(shard_paths) as shards:
        lengths = shards.lengths
    if cfg.pack:
        result = plan_packing(
            lengths,
            cfg.capacity,
            cfg.pack_algorithm,
            seed=cfg.pack_seed,
            mix=cfg.mix,
            overlong=cfg.pack_overlong(),
        )
    else:
        capacity = cfg.capacity if cfg.capacity is not None else max(1, int(lengths.max(initial=1)))
        result = plan_unpacked(lengths, capacity, overlong=cfg.pack_overlong())
    key = hashlib.sha256(
        json.dumps([[str(p) for p in shard_paths], cfg.model_dump(mode="json")]).encode()
    ).hexdigest()[:20]
    out = cfg.cache_path / "plans" / f"{key}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep(out.parent)
    unseal(out)
    result.save(out)
    seal(out)
    return out


def write(
    cfg: PreprocessConfig,
    shard_paths: list[Path],
    plan_file: Path,
    inputs: list[Path] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build rows and write the datasets, plan and sidecar; returns the sidecar's stats."""
    import numpy as np

    from packft.errors import IntegrityError
    from packft.indexed import optimal_dtype
    from packft.integrity import check_seal, dataset_stage, seal_path
    from packft.pack import PackPlan
    from packft.rows import write_sft_dataset
    from packft.shards import TokenShards, tokenizer_ids
    from packft.sources import file_sha256
    from packft.stats import merged_counts, tokenize_totals

    ids = tokenizer_ids(shard_paths)
    if ids is None:  # shards from before the header held the ids (or no shards at all)
        tokenizer = _load_tokenizer(cfg.tokenizer_name_or_path, cfg.prompt_type.strip())
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        ids = {"pad_id": pad, "eos_id": eos, "vocab_size": len(tokenizer)}
    pad_id = ids["pad_id"]
    ids_dtype = optimal_dtype(ids["vocab_size"]) if cfg.dtype == "optimal" else np.int32
    problem = check_seal(plan_file) if seal_path(plan_file).exists() else None
    if problem is not None:
        raise IntegrityError(f"plan file {plan_file}: {problem}; re-run to plan again")
    the_plan = PackPlan.load(plan_file)
    tok = tokenize_totals(shard_paths)
    sidecar = {
        "packft_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "inputs": {str(p): file_sha256(p) for p in (inputs or [])},
        "tokenizer": cfg.tokenizer_name_or_path,
        "tokenizer_sha256": tokenizer_fingerprint(cfg.tokenizer_name_or_path),
        "template": cfg.prompt_type.strip(),
        "algorithm": the_plan.algorithm,
        "seed": the_plan.seed,
        "mix": the_plan.mix,
        "overlong": the_plan.overlong,
        "pad_id": int(pad_id),
        "input_ids_dtype": np.dtype(ids_dtype).name,
        "shards": [p.name for p in shard_paths],
    }
    seq_length = cfg.seq_length or int(the_plan.lengths.max(initial=1)) + 1
    # One stage holds every file of the set: the rejects file, the six data files, the plan and
    # the sidecar are committed together (see packft.integrity).
    with dataset_stage(cfg.prefix) as stage:
        rejects = Path(f"{cfg.prefix}.rejects.jsonl")
        out = stage.open(rejects)
        for shard in shard_paths:
            if rejects_path_for(shard).exists():
                out.write(rejects_path_for(shard).read_bytes())
        stage.seal(rejects)
        with TokenShards(shard_paths) as shards:
            stats = write_sft_dataset(
                cfg.prefix,
                shards,
                the_plan,
                seq_length=seq_length,
                pad_id=int(pad_id),
                pack=cfg.pack,
                neat_pack=cfg.neat_pack,
                ids_dtype=ids_dtype,
                sidecar={**sidecar, "stats": merged_counts(tok, the_plan)},
                progress=progress,
                stage=stage,
                vocab_size=int(ids["vocab_size"]),
            )
    return {**stats.to_dict(), **merged_counts(tok, the_plan)}


def preprocess(cfg: PreprocessConfig, *, show_progress: bool = False) -> PreprocessResult:
    """The whole ``preprocess_data.py`` job: fetch -> tokenize -> quality gate -> plan -> write.

    Raises:
        packft.quality.QualityGateError: too few valid records (nothing is written).

    ``result.stats["seconds"]`` holds the wall time of each step.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from packft.indexed import SFT_KEYS, sft_prefix
    from packft.integrity import prepare_output
    from packft.pack import PackPlan

    prepare_output(cfg.prefix)  # an unwritable output directory fails before any tokenizing
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    inputs = fetch_inputs(cfg)  # a bad --input fails before any progress output
    lap("fetch")
    with Progress(*columns, disable=not show_progress, transient=False) as bar:
        shards = []
        for path in inputs:
            task = bar.add_task(f"tokenize {path.name}", total=None)
            shards.append(tokenize_input(path, cfg, progress=lambda n, t=task: bar.advance(t, n)))
            bar.update(task, total=bar.tasks[task].completed)
        lap("tokenize")
        check_input_quality(cfg, shards, inputs)
        plan_file = plan(cfg, shards)
        lap("plan")
        task = bar.add_task("write rows", total=PackPlan.load(plan_file).num_rows)
        stats = write(cfg, shards, plan_file, inputs, progress=lambda n: bar.advance(task, n))
        lap("write")
    stats["seconds"] = seconds
    files = [Path(f"{sft_prefix(cfg.prefix, k)}.{e}") for k in SFT_KEYS for e in ("bin", "idx")]
    return PreprocessResult(cfg.prefix, files, stats, shards, sum(seconds.values()))


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from packft.config import add_model_arguments

    add_model_arguments(parser, PreprocessConfig)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from packft.config import model_from_args
    from packft.stats import stats_table

    console = Console(stderr=True)
    cfg = model_from_args(PreprocessConfig, args)  # errors: one line via packft.cli
    result = preprocess(cfg, show_progress=True)
    rejects = Path(f"{result.prefix}.rejects.jsonl")
    title = f"{result.prefix} ({result.seconds:.1f} s)"
    console.print(stats_table(result.stats, title, rejects_file=rejects))
    print(
        f"rejects: {result.stats.get('rejected_total', 0)} record(s) in {rejects}", file=sys.stderr
    )
    print(f"timings: {json.dumps(result.stats['seconds'])}", file=sys.stderr)
    print(
        f"wrote {result.prefix}_packed_{{input_ids,attention_mask,labels}}_document.{{bin,idx}}",
        file=sys.stderr,
    )
    return 0
