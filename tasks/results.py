"""The results of the model tasks and of ``publish``, as typed, allow-listed models.

They live apart from the tasks so that each is defined (and allow-listed with
:func:`tasks.serializer.allow`, by its unique name) exactly once, whichever task module is
loaded or copied. The data-step results are :mod:`packft.preprocess.results`; the training
summary is :class:`packft.train.summary.TrainSummary`.
"""

from __future__ import annotations

from pydantic import ConfigDict

from packft.core.results import Result
from packft.dataset.store import PublishResult
from tasks.serializer import allow


@allow
class ExportResult(Result):
    """Where the final weights are: the HF directory as trained, and the mcore copy if asked."""

    hf: str
    mcore: str | None = None

    def weights(self) -> dict[str, str]:
        """``{"hf": dir, "mcore": dir}`` (``mcore`` only when exported): kind -> directory."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ParentRun(Result):
    """The MLflow run the trainer's run nests under (:func:`packft.track.nest_runs_under`)."""

    run_id: str
    experiment: str | None = None
    tracking_uri: str | None = None


@allow
class PublishedVersion(PublishResult):
    """A :class:`packft.dataset.PublishResult` and where ``latest`` is."""

    model_config = ConfigDict(frozen=True)

    latest: str
    """``{output_root}/latest``: the path to train on."""
