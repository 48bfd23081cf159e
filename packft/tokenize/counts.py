"""The sample counts of tokenizing one file: one field list, light to import (pydantic only).

:class:`TokenCounts` is filled by the tokenize run (:class:`packft.tokenize.batch.TokenizeStats`
derives from it and adds the record counts and provenance stored in the shard) and handed on
by the preprocess step (``packft.preprocess.TokenizeResult`` derives from it too), so the
figures carry the same names from the shard to the flow's report.
"""

from __future__ import annotations

from pydantic import Field

from packft.core.results import Result


class TokenCounts(Result):
    """What tokenizing one file counts of its samples: the one definition of these fields, for
    the run's :class:`TokenizeStats` and the step's ``packft.preprocess.TokenizeResult``."""

    truncated: int = 0
    truncated_marker_lost: int = 0
    dropped: int = 0
    written: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_length: int = 0
    length_counts: dict[int, int] = Field(default_factory=dict)
    """Samples per length before truncation (eod included), dropped samples too: the
    length plot shows what the data was, not what the cut left (absent in older shards)."""
