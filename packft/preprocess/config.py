"""Options of ``packft preprocess`` (:class:`PreprocessConfig`): MindSpeed's flag names, checked
all at once before any work starts.

How ``--overlong`` reaches the tokenizer: ``truncate`` gives the template-aware (per-turn,
proportional) truncation a budget of ``seq_length - 1`` minus the eod, so samples fit a row with
their eod intact, and keeps every template marker of the kept turns, cutting inside the
user/assistant text (:mod:`packft.tokenize.truncation`); ``drop`` tokenizes exactly like MindSpeed
(budget ``seq_length``, MindSpeed's cut, whose lost prompt markers are only counted) and
then drops what exceeds ``seq_length - 1`` (MindSpeed's ``--pack`` and unpacked rule; with
``--pack-algorithm knapsack --neat-pack`` packft does what MindSpeed's ``--neat-pack`` does
instead: each turn's (source, target) pair is cut on its own to ``seq_length - 1`` at
tokenization, and a sample still longer than that is tail-cut at packing); ``split`` tokenizes
without a budget and cuts samples into row-sized pieces.

What each stage's work is: :meth:`PreprocessConfig.validate_options`, :meth:`tokenize_options`,
:meth:`pack_options` and :meth:`write_options` are the one place a config becomes the options of
a stage (:mod:`packft.ingest.options`, :mod:`packft.tokenize.options`, :mod:`packft.pack.options`,
:mod:`packft.dataset.options`). Those options objects are the definition of "same work": the
CLI's shard and plan reuse and the Prefect tasks' cache keys are both their ``cache_key()``.
Fields in none of them (``workers`` only in ``tokenize_options`` and outside its key,
``cache_dir``, ``overwrite_cache``, ``log_interval``, ``input``/``input_sha256`` (the input counts
by content), ``min_valid_fraction`` (a gate, not an output), ``tokenizer_name_or_path`` (the
tokenizer counts by content)) never make work "different".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from packft.ingest.limits import DEFAULT_MAX_RECORD_BYTES
from packft.ingest.quality import DEFAULT_MIN_VALID_FRACTION

if TYPE_CHECKING:
    from packft.dataset.options import WriteOptions
    from packft.ingest.options import ValidateOptions
    from packft.pack.options import PackOptions
    from packft.tokenize.options import TokenizeOptions

HANDLERS = (
    "AlpacaStyleInstructionHandler",
    "SharegptStyleInstructionHandler",
    "OpenAIInstructionHandler",
)
DEFAULT_CACHE = "~/.cache/packft"


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
        from packft.ingest.repairs import parse_repairs

        return parse_repairs(value)

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        from packft.tokenize.templates import TEMPLATE_NAMES

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

    # --- the stages' options: the one place a config becomes "what work is done" --------------

    def tokenize_options(self) -> TokenizeOptions:
        """How each input file is tokenized (budget, marker-keeping and MindSpeed's neat-pack
        pair cut derived here; ``--pack-algorithm`` matters only through that cut)."""
        from packft.ingest.keymap import HANDLER_FORMATS
        from packft.tokenize.options import TokenizeOptions

        return TokenizeOptions(
            template=self.prompt_type.strip(),
            fmt=HANDLER_FORMATS[self.handler_name],
            map_keys=self.map_keys,
            repair=tuple(self.repair),
            on_invalid=self.on_invalid,
            max_record_bytes=self.max_record_bytes,
            seq_length=self.tokenize_budget(),
            append_eod=self.append_eod,
            overlong="truncate",
            keep_markers=self.overlong == "truncate",  # drop: MindSpeed's bytes; split: no cut
            pair_cutoff=self.pair_cutoff(),
            workers=self.workers,
        )

    def validate_options(self) -> ValidateOptions:
        """Which records are valid (the tokenize options' validation part)."""
        return self.tokenize_options().validation()

    def pack_options(self) -> PackOptions:
        """How the rows are planned."""
        from packft.pack.options import PackOptions

        return PackOptions(
            pack=self.pack,
            capacity=self.capacity,
            algorithm=self.pack_algorithm,
            seed=self.pack_seed,
            mix=self.mix,
            overlong=self.pack_overlong(),  # type: ignore[arg-type]
        )

    def write_options(self) -> WriteOptions:
        """What the write step adds to the shards and the plan."""
        from packft.dataset.options import WriteOptions

        return WriteOptions(
            name=self.prefix.name,
            pack=self.pack,
            neat_pack=self.neat_pack,
            seq_length=self.seq_length,
            dtype=self.dtype,
        )


def _map_keys_problems(handler_name: str, map_keys: dict[str, Any] | None) -> list[str]:
    """--map-keys errors (unknown keys, wrong value types) as config problems, before any work."""
    from packft.ingest.keymap import HANDLER_FORMATS, get_key_map

    try:
        get_key_map(HANDLER_FORMATS[handler_name], map_keys)
    except ValueError as error:
        return [str(error)]
    return []
