"""A training run's summary as a typed result (what ``tasks.model.finetune`` hands the flow).

:func:`packft.train.train` returns a plain mapping (``packft train`` prints and records it as it
is); :class:`TrainSummary` is that mapping with its fields named, so the flows read attributes.
The native engine fills ``world_size``/``device``, the MindSpeed engine ``engine``/``returncode``;
:meth:`TrainSummary.figures` leaves out the other engine's fields, so the mapping logged to MLflow
is the one the engine returned. Loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packft.core.results import Result

ENGINE_ONLY = ("world_size", "device", "engine", "returncode")
"""Fields one engine reports and the other does not (absent, not null, in :meth:`figures`)."""


class TrainSummary(Result):
    """Steps run, first/final (and held-out) loss, real tokens/s and the final checkpoint."""

    steps: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    valid_loss: float | None = None
    """The last evaluation's held-out loss (native engine, with ``eval_iters``)."""
    tokens_per_s: float | None = None
    """Real (non-pad) tokens per second, warm-up excluded; None where not measured."""
    checkpoint: str | None = None
    """The final weights' directory (``{save}/hf``, or ``{save}/mindspeed``)."""
    world_size: int | None = None
    device: str | None = None
    engine: str | None = None
    returncode: int | None = None

    @classmethod
    def of(cls, summary: Mapping[str, Any] | None) -> TrainSummary:
        """The engine's summary mapping as a model (an empty one on a rank that has none)."""
        return cls.model_validate(dict(summary or {}))

    def figures(self) -> dict[str, Any]:
        """The summary as the engine returned it (the other engine's fields left out)."""
        data = self.model_dump()
        return {k: v for k, v in data.items() if k not in ENGINE_ONLY or v is not None}
