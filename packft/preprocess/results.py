"""What each preprocess step hands to the next: typed, JSON-serialisable results.

These are the joins between the steps (and between the Prefect tasks that wrap them): a step
returns one of these models and the next reads attributes, never magic dict keys. Each one is
computed where its data is: the tokenize step counts lengths while the shard is in memory
(:attr:`TokenizeResult.length_counts`), the plan step counts row fills while the plan is in
memory (:attr:`PlanResult.row_fill`), so a report never re-reads shards or plans from disk.

Every input file is hashed once, when it is pinned (:meth:`InputFile.pin`); every later step
takes the digest from the :class:`InputFile`. The Prefect tasks persist these models as JSON
(``tasks.serializer``), rebuilding only the models listed there, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from packft.core.results import Result
from packft.dataset.stats import DatasetStats
from packft.ingest.quality import InputCounts
from packft.ingest.rejects import ValidationSummary
from packft.tokenize.counts import TokenCounts


class InputFile(Result):
    """An input file pinned by content: keys see ``sha256``, never the path or mtime."""

    path: Path
    """Where the bytes are on this machine (the file, or the local copy of a URL)."""
    sha256: str
    """Hex SHA-256 of the bytes (computed once, by :meth:`pin`)."""
    source: str = ""
    """The ``--input`` it came from (path, URL, hf:// id): for logs and MLflow dataset sources."""
    size: int = 0
    """Bytes."""

    @classmethod
    def pin(cls, path: Path, source: str = "") -> InputFile:
        """Hash ``path`` (the only time its bytes are hashed in a run)."""
        from packft.core.digest import file_sha256

        path = Path(path).resolve()
        return cls(path=path, sha256=file_sha256(path), source=source or str(path),
                   size=path.stat().st_size)  # fmt: skip

    @property
    def label(self) -> str:
        return self.source or str(self.path)


class TokenizerPin(Result):
    """A tokenizer pinned by content (:func:`packft.tokenize.tokenizer_fingerprint`)."""

    path_or_id: str
    """The ``--tokenizer-name-or-path`` as given."""
    sha256: str
    """Its fingerprint (every file of the directory; the name for a hub id)."""

    @classmethod
    def pin(cls, path_or_id: str) -> TokenizerPin:
        from packft.tokenize.options import tokenizer_fingerprint

        return cls(path_or_id=str(path_or_id), sha256=tokenizer_fingerprint(path_or_id))


class RecordCounts(ValidationSummary):
    """Records of one input (or of a run): read, valid, rejected per reason, repaired per kind
    (the fields of :class:`packft.ingest.rejects.ValidationSummary`)."""

    @property
    def rejected_total(self) -> int:
        return self.num_rejected

    @classmethod
    def summed(cls, items: list[RecordCounts]) -> RecordCounts:
        """The counts of several inputs together."""
        rejected: dict[str, int] = {}
        repaired: dict[str, int] = {}
        for item in items:
            for name, n in item.rejected.items():
                rejected[name] = rejected.get(name, 0) + n
            for name, n in item.repaired.items():
                repaired[name] = repaired.get(name, 0) + n
        return cls(total=sum(i.total for i in items), valid=sum(i.valid for i in items),
                   rejected=dict(sorted(rejected.items())),
                   repaired=dict(sorted(repaired.items())))  # fmt: skip

    def figures(self) -> dict[str, object]:
        """The numbers as a flat mapping for tracking (``rejected_total`` included)."""
        return {**self.model_dump(), "rejected_total": self.rejected_total}


class InputResult(Result):
    """What every per-input step reports: the input, its record counts and its rejects file."""

    file: str
    """The input's label (source spec or path)."""
    sha256: str
    """The input's content digest."""
    counts: RecordCounts
    rejects: Path
    """The JSONL of this file's rejected records (empty when none)."""

    def input_counts(self) -> InputCounts:
        """What the quality gate needs of this file."""
        c = self.counts
        return InputCounts(self.file, c.total, c.valid, dict(c.rejected), str(self.rejects))


class ValidationResult(InputResult):
    """One input file checked record by record (no tokenizing)."""


class TokenizeResult(TokenCounts, InputResult):
    """One input file tokenized into one shard (or the shard reused), with its counts
    (:class:`packft.tokenize.counts.TokenCounts`: ``length_counts`` is the length histogram,
    counted while tokenizing)."""

    shard: Path
    shard_key: str
    """:func:`packft.tokenize.shard_key` (input, tokenizer, options, version): the shard's name."""
    lengths_before_cut: bool = True
    """False for a shard from before ``length_counts`` existed: the stored (cut) lengths."""


class PlanResult(Result):
    """The rows planned over all shards."""

    plan: Path
    """The plan file (``.npz``, sealed)."""
    plan_key: str
    """:func:`packft.pack.options.plan_key` (shard keys + pack options): the plan's name."""
    samples: int
    rows: int
    capacity: int
    lower_bound_rows: int
    dropped: int = 0
    truncated: int = 0
    split: int = 0
    row_fill: dict[int, int] = Field(default_factory=dict)
    """Rows per real-token count (the row-fill histogram, counted while the plan was in
    memory)."""


class WriteResult(Result):
    """A dataset version written (or found): where it is and the sidecar's stats."""

    version: Path
    """The version directory."""
    prefix: Path
    """``{version}/{name}``: the ``--data-path`` prefix of the written set."""
    stats: DatasetStats
    """The sidecar's ``stats`` (:func:`packft.preprocess.write`'s figures)."""


@dataclass
class PreprocessResult:
    """What a run produced (``reused``: the set on disk was already this run's, nothing written)."""

    prefix: Path
    files: list[Path]
    stats: DatasetStats
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step (``fetch``, then ``tokenize``, ``plan``, ``write`` or ``check``)."""
    reused: bool = False
    dataset_key: str | None = None
