"""The steps of ``packft preprocess``; the Prefect tasks in ``tasks/`` wrap exactly these functions.

1. :func:`fetch_inputs`   resolve ``--input`` (file, directory, URL, hf://) to local files
   (:func:`validate_input` optionally checks a file's records without tokenizing).
2. :func:`tokenize_input` one input file -> one tokenized Arrow shard, cached under
   ``--cache-dir`` by (input sha256, tokenizer hash, template, options).
   :func:`check_input_quality` then refuses input with too few valid records
   (:mod:`packft.ingest.quality`, ``--min-valid-fraction``) before anything is written.
3. :func:`plan`           all shards' lengths -> one global plan file (:mod:`packft.pack.plan`).
4. :func:`write`          rows -> the three ``{prefix}_packed_*_document`` datasets, plan, sidecar.

:func:`preprocess` runs them in that order (the CLI's job).

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

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packft import __version__
from packft.preprocess.config import PreprocessConfig

log = logging.getLogger(__name__)
SHARD_FORMAT = 2
"""In the shard cache key: 2 = header with pad/eos ids and vocab size, neat-pack pair cut."""


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
    from packft.tokenize.templates import load_tokenizer

    return load_tokenizer(path, template)


def _fmt(cfg: PreprocessConfig) -> str:
    from packft.ingest.keymap import HANDLER_FORMATS

    return HANDLER_FORMATS[cfg.handler_name]


def _options(cfg: PreprocessConfig):
    from packft.tokenize.encode import TokenizeOptions

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
    from packft.core.digest import file_sha256

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
    from packft.ingest.sources import resolve_input

    return resolve_input(
        cfg.input, cfg.cache_path / "downloads", sha256=cfg.input_sha256, refresh=refresh
    )


def validate_input(path: Path, cfg: PreprocessConfig, rejects_path: Path | None = None) -> Any:
    """Read and check every record of one input without tokenizing (a cheap pre-flight).

    Returns the :class:`packft.ingest.rejects.ValidationSummary` (total, valid, rejected per
    reason); with ``--on-invalid fail`` the first invalid record raises ``InvalidRecordError``.
    ``tokenize_input`` validates too, so this step is optional.
    """
    from packft.ingest.formats import validate_file
    from packft.ingest.limits import RecordLimits

    rejects = rejects_path or Path(f"{cfg.prefix}.{Path(path).name}.rejects.jsonl")
    limits = RecordLimits(max_bytes=cfg.max_record_bytes)
    return validate_file(
        Path(path), _fmt(cfg), cfg.map_keys, rejects, cfg.on_invalid, repair=cfg.repair,
        limits=limits,
    )  # fmt: skip


def check_input_quality(cfg: PreprocessConfig, shard_paths: list[Path], inputs: list[Path]) -> Any:
    """The quality gate (:func:`packft.ingest.quality.check_quality`) over tokenized shards' counts.

    Raises:
        packft.ingest.quality.QualityGateError: too few valid records; nothing has been written yet.
    """
    from packft.ingest.quality import InputCounts, check_quality
    from packft.tokenize.shards import read_stats

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
    from packft.core.atomic import sweep
    from packft.dataset.integrity import check_seal, seal, unseal
    from packft.tokenize.encode import tokenize_file

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
    from packft.core.atomic import sweep
    from packft.dataset.integrity import seal, unseal
    from packft.pack.plan import plan_packing, plan_unpacked
    from packft.tokenize.shards import TokenShards

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

    from packft.core.digest import file_sha256
    from packft.core.errors import IntegrityError
    from packft.dataset.indexed import optimal_dtype
    from packft.dataset.integrity import check_seal, dataset_stage, seal_path
    from packft.dataset.rows import write_sft_dataset
    from packft.dataset.stats import merged_counts, tokenize_totals
    from packft.pack.plan import PackPlan
    from packft.tokenize.shards import TokenShards, tokenizer_ids

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
    # the sidecar are committed together (see packft.dataset.integrity).
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
        packft.ingest.quality.QualityGateError: too few valid records (nothing is written).

    ``result.stats["seconds"]`` holds the wall time of each step.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from packft.dataset.indexed import SFT_KEYS, sft_prefix
    from packft.dataset.integrity import prepare_output
    from packft.pack.plan import PackPlan

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
