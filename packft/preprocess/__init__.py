"""``packft preprocess``: MindSpeed-LLM's ``preprocess_data.py`` for SFT data, composed of the
stages ingest -> tokenize -> pack -> dataset.

In: a :class:`~packft.preprocess.config.PreprocessConfig` (MindSpeed's pack recipe works
unchanged: ``--input --tokenizer-name-or-path --output-prefix --workers --log-interval
--tokenizer-type PretrainedFromHF --overwrite-cache --handler-name --prompt-type --pack
--neat-pack --append-eod --seq-length --map-keys``, plus ``--pack-algorithm --pack-seed --mix
--overlong --dtype --on-invalid --repair --cache-dir --min-valid-fraction --max-record-bytes``).
Out: the dataset set of :mod:`packft.dataset` at ``--output-prefix``, the rejects file, and a
:class:`~packft.preprocess.results.PreprocessResult` (files, stats, per-step seconds).

Modules: :mod:`~packft.preprocess.config` (the options, checked at once),
:mod:`~packft.preprocess.steps` (fetch, tokenize, quality gate, plan, write: the
functions the Prefect tasks wrap), :mod:`~packft.preprocess.inputs` (validate an input, a shard's
result), :mod:`~packft.preprocess.reuse` (a re-run whose set is on disk writes nothing), :mod:`~packft.preprocess.results` (the typed result each step
hands to the next) and :mod:`~packft.preprocess.cli` (the command). What "the same work" is for
each step is its options object, derived from the config by ``PreprocessConfig.*_options()``.
"""

from packft.dataset.stats import DatasetStats
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.inputs import rejects_path_for, validate_input, validate_source
from packft.preprocess.results import (
    InputFile,
    PlanResult,
    PreprocessResult,
    RecordCounts,
    TokenizeResult,
    TokenizerPin,
    ValidationResult,
    WriteResult,
)
from packft.preprocess.steps import (
    check_input_quality,
    fetch_inputs,
    plan,
    plan_shards,
    preprocess,
    tokenize_input,
    tokenize_to_shard,
    write,
)

__all__ = [
    "DatasetStats",
    "InputFile",
    "PlanResult",
    "PreprocessConfig",
    "PreprocessResult",
    "RecordCounts",
    "TokenizeResult",
    "TokenizerPin",
    "ValidationResult",
    "WriteResult",
    "check_input_quality",
    "fetch_inputs",
    "plan",
    "plan_shards",
    "preprocess",
    "rejects_path_for",
    "tokenize_input",
    "tokenize_to_shard",
    "validate_input",
    "validate_source",
    "write",
]
