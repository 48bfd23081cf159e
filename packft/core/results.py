"""The base of every typed result packft hands from one step to the next.

A step returns a model, the next reads its attributes (never magic dict keys). Results are
immutable and refuse unknown fields, so a stored result of another shape fails validation
instead of drifting silently (``tasks.serializer`` then recomputes it). It lives at the ground
floor so that every stage (``dataset``, ``preprocess``, ``train``) can derive from it without
importing a later stage.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    """Base of the step results: immutable, and unknown fields are an error (no silent drift)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
