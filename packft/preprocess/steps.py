"""The steps of ``packft preprocess``; the Prefect tasks in ``tasks/`` wrap exactly these functions.

1. :func:`fetch_inputs`   resolve ``--input`` (file, directory, URL, hf://) to local files,
   then :meth:`InputFile.pin <packft.preprocess.results.InputFile.pin>` hashes each one, the
   only time its bytes are hashed (:func:`packft.preprocess.inputs.validate_source` optionally
   checks a file's records without tokenizing).
2. :func:`tokenize_to_shard` one input file -> one tokenized Arrow shard, cached under
   ``--cache-dir`` as ``shards/{shard_key[:40]}.arrow``
   (:func:`packft.tokenize.shard_key`: input sha256, tokenizer fingerprint, ``TokenizeOptions``).
   :func:`check_input_quality` then refuses input with too few valid records
   (:mod:`packft.ingest.quality`, ``--min-valid-fraction``) before anything is written.
3. :func:`plan_shards`    all shards' lengths -> one global plan, cached as
   ``plans/{plan_key[:40]}.npz`` (:func:`packft.pack.options.plan_key`: shard keys +
   ``PackOptions``), kept in memory for the write.
4. :func:`write`          rows -> the three ``{prefix}_packed_*_document`` datasets, plan, sidecar.

:func:`preprocess` runs them in that order (the CLI's job). The Prefect tasks in ``tasks/`` call
the same functions with the same options objects, so the CLI and the flow reuse exactly the same
work (both key it with the options' ``cache_key()``); each step returns a typed result
(:mod:`packft.preprocess.results`).

The write step takes the pad id and vocabulary size from the shard headers; it loads the
tokenizer only for shards written before the headers carried them.

A re-run whose dataset is already on disk writes nothing (:mod:`packft.preprocess.reuse`).
Measured speed and memory: the README's Benchmarks section (``benchmarks/bench_preprocess.py``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packft import __version__
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.inputs import rejects_path_for, shard_result
from packft.preprocess.results import (
    DatasetStats,
    InputFile,
    PlanResult,
    PreprocessResult,
    TokenizeResult,
    TokenizerPin,
)
from packft.preprocess.reuse import KEY_CHARS
from packft.tokenize.options import SHARD_FORMAT as _SHARD_FORMAT

if TYPE_CHECKING:
    from packft.ingest.quality import GateResult
    from packft.pack.options import PackOptions
    from packft.pack.plan import PackPlan
    from packft.tokenize.options import TokenizeOptions

log = logging.getLogger(__name__)
SHARD_FORMAT = _SHARD_FORMAT
"""The shard format in every shard key made here (:data:`packft.tokenize.options.SHARD_FORMAT`)."""


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str, template: str) -> Any:
    from packft.tokenize.templates import load_tokenizer

    return load_tokenizer(path, template)


def _options(cfg: PreprocessConfig) -> TokenizeOptions:
    """The tokenize options of ``cfg`` (:meth:`PreprocessConfig.tokenize_options`)."""
    return cfg.tokenize_options()


def _shard_key(path: Path, cfg: PreprocessConfig) -> str:
    """The shard key the CLI uses for ``path`` under ``cfg`` (hashes the input and tokenizer)."""
    from packft.tokenize.options import shard_key

    return shard_key(InputFile.pin(path).sha256, TokenizerPin.pin(cfg.tokenizer_name_or_path).sha256,
                     cfg.tokenize_options(), SHARD_FORMAT)  # fmt: skip


# --- steps --------------------------------------------------------------------------------------


def fetch_inputs(cfg: PreprocessConfig, refresh: bool = False) -> list[Path]:
    """Local data files for ``--input`` (downloads land in ``--cache-dir``; ``refresh``
    downloads remote inputs again instead of reusing the cached copy)."""
    from packft.ingest.sources import resolve_input

    return resolve_input(
        cfg.input, cfg.cache_path / "downloads", sha256=cfg.input_sha256, refresh=refresh
    )


def tokenize_to_shard(
    source: InputFile,
    tokenizer: TokenizerPin,
    options: TokenizeOptions,
    out_dir: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> TokenizeResult:
    """Tokenize one input into ``out_dir/{shard_key[:40]}.arrow``, or reuse the shard there.

    The name is :func:`packft.tokenize.shard_key` of the input's and the tokenizer's content
    and ``options`` (not ``workers``), so any change of those re-tokenizes and an unchanged
    input is never tokenized twice, whatever its name or path. A shard there that fails its
    checksum record is tokenized again (with a warning); ``overwrite`` always re-tokenizes.
    ``progress`` gets the number of records of each finished batch.
    """
    from packft.core.writers import sweep
    from packft.dataset.integrity import check_seal, seal, unseal
    from packft.tokenize.encode import tokenize_file
    from packft.tokenize.options import shard_key
    from packft.tokenize.shards import read_stats

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep(out_dir)
    key = shard_key(source.sha256, tokenizer.sha256, options, SHARD_FORMAT)
    shard = out_dir / f"{key[:KEY_CHARS]}.arrow"
    rejects = rejects_path_for(shard)
    if shard.exists() and not overwrite:
        problem = check_seal(shard, [rejects])
        if problem is None:
            return shard_result(source, shard, key, read_stats(shard))
        log.warning("cached shard %s is not reused (%s): tokenizing %s again", shard, problem,
                    source.label)  # fmt: skip
    unseal(shard)
    stats = tokenize_file(
        source.path, shard, tokenizer_path=tokenizer.path_or_id, options=options,
        rejects_path=rejects, progress=progress, input_sha256=source.sha256,
        tokenizer_sha256=tokenizer.sha256,
    )  # fmt: skip
    seal(shard, [rejects])
    return shard_result(source, shard, key, stats.model_dump())


def tokenize_input(
    path: Path,
    cfg: PreprocessConfig,
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """:func:`tokenize_to_shard` for one path and config (``{cache_dir}/shards`` by default);
    returns the shard."""
    result = tokenize_to_shard(
        InputFile.pin(path), TokenizerPin.pin(cfg.tokenizer_name_or_path),
        cfg.tokenize_options(), Path(out_dir) if out_dir else cfg.cache_path / "shards",
        overwrite=cfg.overwrite_cache, progress=progress,
    )  # fmt: skip
    return result.shard


def check_input_quality(cfg: PreprocessConfig, shards: Sequence[TokenizeResult]) -> GateResult:
    """The quality gate (:func:`packft.ingest.quality.check_quality`) over the shards' counts.

    Raises:
        packft.ingest.quality.QualityGateError: too few valid records; nothing has been written yet.
    """
    from packft.ingest.quality import check_quality

    return check_quality([s.input_counts() for s in shards], cfg.min_valid_fraction)


def plan_shards(
    shard_paths: Sequence[Path],
    shard_keys: Sequence[str],
    options: PackOptions,
    out_dir: Path,
    *,
    overwrite: bool = False,
) -> tuple[PlanResult, PackPlan]:
    """Plan rows over all shards at once into ``out_dir/{plan_key[:40]}.npz``, or reuse it.

    Returns the plan's :class:`PlanResult` (counts and row-fill histogram) and the plan itself
    (in memory, so the write step does not load it again). A cached plan that fails its
    checksum record is planned again; ``overwrite`` always plans again.
    """
    from packft.core.writers import sweep
    from packft.dataset.integrity import check_seal, seal, unseal
    from packft.pack.options import plan_key, row_fill_counts
    from packft.pack.plan import PackPlan, lower_bound_rows
    from packft.tokenize.shards import TokenShards

    key = plan_key(list(shard_keys), options)
    out = Path(out_dir) / f"{key[:KEY_CHARS]}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep(out.parent)
    the_plan = None
    if out.exists() and not overwrite:
        problem = check_seal(out)
        if problem is None:
            the_plan = PackPlan.load(out)
        else:
            log.warning("cached plan %s is not reused (%s): planning again", out, problem)
    if the_plan is None:
        with TokenShards(list(shard_paths)) as shards:
            lengths = shards.lengths
        del shards  # the planner needs only the lengths (4 of the reader's 12 bytes per sample)
        the_plan = options.plan(lengths)
        del lengths
        unseal(out)
        the_plan.save(out)
        seal(out)
    result = PlanResult(
        plan=out, plan_key=key, samples=int(the_plan.num_samples), rows=the_plan.num_rows,
        capacity=int(the_plan.capacity),
        lower_bound_rows=lower_bound_rows(int(the_plan.lengths.sum()), the_plan.capacity),
        dropped=len(the_plan.dropped), truncated=int(the_plan.truncated),
        split=int(the_plan.split), row_fill=row_fill_counts(the_plan),
    )  # fmt: skip
    return result, the_plan


def plan(cfg: PreprocessConfig, shard_paths: list[Path]) -> Path:
    """Plan rows over ``shard_paths`` (any shard files) into ``{cache_dir}/plans``, always anew
    (the shards are known only by path here); returns the plan file."""
    keys = [f"path:{Path(p).resolve()}" for p in shard_paths]
    result, _ = plan_shards(shard_paths, keys, cfg.pack_options(), cfg.cache_path / "plans",
                            overwrite=True)  # fmt: skip
    return result.plan


def write(
    cfg: PreprocessConfig,
    shard_paths: Sequence[Path],
    plan_file: Path,
    inputs: Sequence[Path | InputFile] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    loaded_plan: PackPlan | None = None,
    tokenizer: TokenizerPin | None = None,
    dataset_key: str | None = None,
) -> DatasetStats:
    """Build rows and write the datasets, plan and sidecar; returns the sidecar's stats.

    ``loaded_plan`` is the plan of ``plan_file`` when the caller holds it in memory (just
    planned or checked), else the file is checked against its seal and loaded here.
    ``inputs`` and ``tokenizer`` pinned by the caller are recorded as they are (paths are
    hashed here). ``dataset_key`` (:func:`packft.preprocess.reuse.expected_key`) is recorded
    so that a re-run can recognise the set (:mod:`packft.preprocess.reuse`).
    """
    import numpy as np

    from packft.core.errors import IntegrityError
    from packft.dataset.indexed import optimal_dtype
    from packft.dataset.integrity import check_seal, dataset_stage, seal_path
    from packft.dataset.rows import write_sft_dataset
    from packft.dataset.stats import merged_counts, tokenize_totals
    from packft.pack.plan import PackPlan
    from packft.tokenize.shards import TokenShards, tokenizer_ids

    shard_paths = list(shard_paths)
    options = cfg.write_options()
    ids = tokenizer_ids(shard_paths)
    if ids is None:  # shards from before the header held the ids (or no shards at all)
        tok = _load_tokenizer(cfg.tokenizer_name_or_path, cfg.prompt_type.strip())
        eos = tok.eos_token_id
        ids = {"pad_id": tok.pad_token_id if tok.pad_token_id is not None else eos,
               "eos_id": eos, "vocab_size": len(tok)}  # fmt: skip
    pad_id = ids["pad_id"]
    ids_dtype = optimal_dtype(ids["vocab_size"]) if options.dtype == "optimal" else np.int32
    the_plan = loaded_plan
    if the_plan is None:
        problem = check_seal(plan_file) if seal_path(plan_file).exists() else None
        if problem is not None:
            raise IntegrityError(f"plan file {plan_file}: {problem}; re-run to plan again")
        the_plan = PackPlan.load(plan_file)
    pinned = [f if isinstance(f, InputFile) else InputFile.pin(f) for f in inputs or []]
    tokenizer = tokenizer or TokenizerPin.pin(cfg.tokenizer_name_or_path)
    totals = tokenize_totals(shard_paths)
    sidecar = {
        "packft_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "inputs": {str(f.path): f.sha256 for f in pinned},
        "tokenizer": cfg.tokenizer_name_or_path,
        "tokenizer_sha256": tokenizer.sha256,
        "template": cfg.prompt_type.strip(),
        "algorithm": the_plan.algorithm,
        "seed": the_plan.seed,
        "mix": the_plan.mix,
        "overlong": the_plan.overlong,
        "pad_id": int(pad_id),
        "input_ids_dtype": np.dtype(ids_dtype).name,
        "shards": [p.name for p in shard_paths],
    }
    if dataset_key is not None:
        sidecar["dataset_key"] = dataset_key
    seq_length = options.seq_length or int(the_plan.lengths.max(initial=1)) + 1
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
                pack=options.pack,
                neat_pack=options.neat_pack,
                ids_dtype=ids_dtype,
                sidecar={**sidecar, "stats": merged_counts(totals, the_plan)},
                progress=progress,
                stage=stage,
                vocab_size=int(ids["vocab_size"]),
            )
    return DatasetStats.of(stats, merged_counts(totals, the_plan))


def preprocess(cfg: PreprocessConfig, *, show_progress: bool = False) -> PreprocessResult:
    """The whole ``preprocess_data.py`` job: fetch -> tokenize -> quality gate -> plan -> write,
    or fetch -> check when the set at ``--output-prefix`` is already this run's
    (:mod:`packft.preprocess.reuse`; ``result.reused``, nothing written).

    Raises:
        packft.ingest.quality.QualityGateError: too few valid records (nothing is written).

    ``result.step_seconds`` holds the wall time of each step.
    """
    from packft.dataset.indexed import SFT_KEYS, sft_prefix
    from packft.dataset.integrity import journal_path, prepare_output
    from packft.preprocess.reuse import reusable_output

    pending = journal_path(cfg.prefix).exists()  # an unfinished commit: never reuse, write anew
    prepare_output(cfg.prefix)  # an unwritable output directory fails before any tokenizing
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    inputs = [InputFile.pin(p) for p in fetch_inputs(cfg)]  # a bad --input fails before output
    tokenizer = TokenizerPin.pin(cfg.tokenizer_name_or_path)
    lap("fetch")
    files = [Path(f"{sft_prefix(cfg.prefix, k)}.{e}") for k in SFT_KEYS for e in ("bin", "idx")]
    keys, recorded = reusable_output(cfg, inputs, tokenizer)
    if recorded is not None and not (pending or cfg.overwrite_cache):
        lap("check")
        return PreprocessResult(cfg.prefix, files, recorded, [], sum(seconds.values()), seconds,
                                reused=True, dataset_key=keys.dataset_key)  # fmt: skip
    stats, paths = _tokenize_plan_write(cfg, inputs, tokenizer, show_progress, lap)
    return PreprocessResult(cfg.prefix, files, stats, paths, sum(seconds.values()), seconds,
                            dataset_key=keys.dataset_key)  # fmt: skip


def _tokenize_plan_write(
    cfg: PreprocessConfig,
    inputs: list[InputFile],
    tokenizer: TokenizerPin,
    show_progress: bool,
    lap: Callable[[str], None],
) -> tuple[DatasetStats, list[Path]]:
    """The tokenize, quality gate, plan and write steps of :func:`preprocess`, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from packft.dataset.options import dataset_key

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    options, store = cfg.tokenize_options(), cfg.cache_path
    with Progress(*columns, disable=not show_progress, transient=False) as bar:
        shards = []
        for source in inputs:
            task = bar.add_task(f"tokenize {source.path.name}", total=None)
            shards.append(tokenize_to_shard(
                source, tokenizer, options, store / "shards", overwrite=cfg.overwrite_cache,
                progress=lambda n, t=task: bar.advance(t, n),
            ))  # fmt: skip
            bar.update(task, total=bar.tasks[task].completed)
        lap("tokenize")
        check_input_quality(cfg, shards)
        paths = [s.shard for s in shards]
        planned, the_plan = plan_shards(paths, [s.shard_key for s in shards], cfg.pack_options(),
                                        store / "plans", overwrite=cfg.overwrite_cache)  # fmt: skip
        lap("plan")
        task = bar.add_task("write rows", total=planned.rows)
        stats = write(cfg, paths, planned.plan, inputs, lambda n: bar.advance(task, n),
                      loaded_plan=the_plan, tokenizer=tokenizer,
                      dataset_key=dataset_key(planned.plan_key, cfg.write_options()))  # fmt: skip
        lap("write")
    return stats, paths
