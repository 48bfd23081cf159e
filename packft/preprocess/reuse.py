"""A re-run whose dataset is already on disk writes nothing: the set is checked, not rebuilt.

``packft preprocess`` run twice with the same inputs, tokenizer and options would rewrite the same
rows (245 MB for 100k Alpaca records, ~2-3 s here). :func:`reusable_output` decides instead, before
any shard or plan is read, whether the set at ``--output-prefix`` already is what this run would
write. All of these must hold, else the run writes as before:

1. no journal of an unfinished commit was pending when the run started (the caller checks that
   before :func:`packft.dataset.integrity.prepare_output` settles it), and no ``--overwrite-cache``;
2. the sidecar records ``dataset_key`` equal to :func:`expected_key`: the
   :func:`packft.dataset.options.dataset_key` of the plan key (shard keys from the inputs' sha256,
   the tokenizer's fingerprint and the tokenize options; the pack options; packft's version) and
   the write options (with their format version). The inputs' sha256 is computed every run
   (~0.1 s for 84 MB): it is how an edited input is seen;
3. the write options recorded in the sidecar's config equal this run's, and the set's plan file
   is the cached plan of that plan key (the sha256 in the sidecar equals the one in the plan's
   cache seal), so a sidecar edited to claim the key of another set is still refused;
4. :func:`packft.dataset.integrity.open_verified` with ``require_all`` passes: all eight files
   exist with the recorded sizes and sampled fingerprints (a truncated file, or another run's
   file of the same size, fails), headers and row counts agree (4-23 ms, not a full sha256);
5. the quality gate passes on the recorded counts (a stricter ``--min-valid-fraction`` re-runs
   the steps, which then refuse the input as before).

The reused set's stats are the sidecar's, so the table printed is the one the writing run printed.
The sidecar keeps what the writing run recorded (its config, e.g. ``--workers``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from packft.dataset.stats import DatasetStats
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.results import InputFile, TokenizerPin

log = logging.getLogger(__name__)
KEY_CHARS = 40
"""Hex characters of a shard or plan key in its cache file name (160 bits)."""


@dataclass(frozen=True)
class ExpectedKeys:
    """The plan key and dataset key this run would produce, from pinned inputs only."""

    plan_key: str
    dataset_key: str


def expected_key(
    cfg: PreprocessConfig, inputs: Sequence[InputFile], tokenizer: TokenizerPin
) -> ExpectedKeys:
    """The keys of what ``cfg`` writes for these inputs, computed without reading a shard."""
    from packft.dataset.options import dataset_key
    from packft.pack.options import plan_key
    from packft.tokenize.options import SHARD_FORMAT, shard_key

    options = cfg.tokenize_options()
    shards = [shard_key(s.sha256, tokenizer.sha256, options, SHARD_FORMAT) for s in inputs]
    planned = plan_key(shards, cfg.pack_options())
    return ExpectedKeys(planned, dataset_key(planned, cfg.write_options()))


def cached_plan(cfg: PreprocessConfig, key: str) -> Path:
    """Where the plan step caches the plan of ``key``."""
    return cfg.cache_path / "plans" / f"{key[:KEY_CHARS]}.npz"


def reusable_output(
    cfg: PreprocessConfig, inputs: Sequence[InputFile], tokenizer: TokenizerPin
) -> tuple[ExpectedKeys, DatasetStats | None]:
    """This run's keys and, when the set at ``cfg.prefix`` is exactly what it would write (see
    the module doc), that set's recorded stats; else None (the reason is logged at INFO)."""
    keys = expected_key(cfg, inputs, tokenizer)
    why = _why_not(cfg, keys)
    if why is not None:
        log.info("output %s is written again: %s", cfg.prefix, why)
        return keys, None
    try:
        return keys, DatasetStats.model_validate(_read_sidecar(cfg.prefix)["stats"])
    except ValidationError as error:  # a sidecar this version did not write: write anew
        log.info("output %s is written again: its stats are not this version's (%s)",
                 cfg.prefix, error.errors()[0]["msg"])  # fmt: skip
        return keys, None


def _read_sidecar(prefix: Path) -> dict[str, Any]:
    from packft.dataset.integrity import sidecar_path

    return json.loads(sidecar_path(prefix).read_text(encoding="utf-8"))


def _why_not(cfg: PreprocessConfig, keys: ExpectedKeys) -> str | None:
    """Why the set at ``cfg.prefix`` must be written again, or None when it is this run's."""
    from packft.core.errors import PackftError
    from packft.dataset.integrity import data_files, open_verified, plan_path, rejects_path

    try:
        sidecar = _read_sidecar(cfg.prefix)
    except (OSError, ValueError) as error:
        return f"no readable sidecar ({type(error).__name__})"
    if not isinstance(sidecar, dict) or sidecar.get("dataset_key") != keys.dataset_key:
        return "the sidecar records another dataset key (other inputs, tokenizer or options)"
    recorded = sidecar.get("config") or {}
    options = cfg.write_options()
    for name in (f.name for f in fields(options) if f.name != "name"):
        if recorded.get(name) != getattr(options, name):
            return f"the sidecar's config has another {name}"
    files = (sidecar.get("integrity") or {}).get("files") or {}
    wanted = [*data_files(cfg.prefix), plan_path(cfg.prefix), rejects_path(cfg.prefix)]
    missing = [p.name for p in wanted if p.name not in files]
    if missing:
        return f"the sidecar records no {missing[0]}"
    if files[plan_path(cfg.prefix).name].get("sha256") != _sealed_sha256(
        cached_plan(cfg, keys.plan_key)
    ):
        return "the set's plan is not the cached plan of this run's plan key"
    try:
        open_verified(cfg.prefix, require_all=True)
    except (PackftError, OSError) as error:
        return str(error)
    return _gate_problem(cfg, sidecar)


def _sealed_sha256(entry: Path) -> str | None:
    """The sha256 a cache entry's seal records for it (None: no readable seal)."""
    from packft.dataset.integrity import seal_path

    try:
        return json.loads(seal_path(entry).read_text())["files"][entry.name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gate_problem(cfg: PreprocessConfig, sidecar: dict[str, Any]) -> str | None:
    """The quality gate on the recorded counts (None: passes)."""
    from packft.dataset.integrity import rejects_path
    from packft.ingest.quality import QualityGateError, check_quality

    stats = sidecar.get("stats") or {}
    counts = {"file": str(cfg.input), "samples_in": stats.get("samples_in", 0),
              "valid": stats.get("valid", 0), "rejected": stats.get("rejected") or {},
              "rejects": str(rejects_path(cfg.prefix))}  # fmt: skip
    try:
        check_quality([counts], cfg.min_valid_fraction)
    except QualityGateError as error:
        return str(error)
    return None
