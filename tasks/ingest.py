"""Ingest tasks: ``download`` (fetch + pin by content) and ``validate`` (count and keep rejects).

``download`` is the only task that touches the network. It is not cached (re-fetching is its
job; the content-addressed download cache of :mod:`packft.ingest.download` makes an unchanged URL
cheap) and it retries with exponential backoff, but only on transient errors (connection errors,
timeouts, 5xx: ``DownloadError.transient``): an HTTP 4xx such as 404/403, a checksum mismatch, a
missing local file, a bad spec or an offline Hub lookup fail at once. ``packft.ingest.download``
already retries within one attempt (resuming with HTTP Range); the task-level retries cover
whole-attempt failures such as a server that is down for a minute.

``validate`` is cached by the input's content digest and
:meth:`packft.ingest.options.ValidateOptions.cache_key` (format, key map, ``on_invalid``,
``repair``, ``max_record_bytes``: the CLI's own definition); an ``InvalidRecordError``
(``on_invalid: fail``) fails the run without retries, since re-reading the same bytes cannot help.

``quality_gate`` (never cached, no retries) runs :func:`packft.ingest.check_quality` over every
file's ``validate`` counts: too few valid records fail the flow run before anything is tokenized,
written or published.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.tasks import exponential_backoff

from packft.ingest.options import ValidateOptions
from packft.ingest.quality import GateResult
from packft.preprocess.results import ValidationResult
from tasks.caching import FileRef, content_cache, digest_json
from tasks.serializer import SERIALIZER

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import State

NOT_TRANSIENT = ("ChecksumMismatchError", "HubUnavailableError")


def is_transient(exc: BaseException | None) -> bool:
    """Network-ish failures worth another attempt (not 4xx, checksum, spec or offline errors).

    A :class:`packft.ingest.DownloadError` says itself (``transient``: the server or network
    kept failing, versus a 404/403, a checksum mismatch or a bad URL); other errors count as
    transient only when they are connection errors or timeouts (or other ``OSError``s).
    """
    if exc is None:
        return False
    if isinstance(getattr(exc, "transient", None), bool):
        return exc.transient  # type: ignore[attr-defined]
    if isinstance(exc, FileNotFoundError | ValueError | PermissionError):
        return False
    if type(exc).__name__ in NOT_TRANSIENT:
        return False
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def _retry_condition(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # the stored exception of a failed state
            exc = raised
    return is_transient(exc)


@task(
    name="download",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_condition,
    persist_result=False,
)
def download(
    spec: str, cache_dir: Path, refresh: bool = False, sha256: str | None = None
) -> list[FileRef]:
    """Resolve one ``--input`` spec to local files, each pinned by its SHA-256."""
    from packft.core import file_sha256
    from packft.ingest import resolve_input

    paths = resolve_input(spec, Path(cache_dir), sha256=sha256, refresh=refresh)
    remote = str(spec).startswith(("http://", "https://", "hf://"))
    return [
        FileRef(
            path=p.resolve(),
            sha256=file_sha256(p),
            source=str(spec) if remote and len(paths) == 1 else str(p.resolve()),
            size=p.stat().st_size,
        )
        for p in paths
    ]


def rejects_file(work_dir: Path, stage: str, source: FileRef, options: ValidateOptions) -> Path:
    """Where one input's rejects go (named by its content and the options' key)."""
    name = digest_json({"sha256": source.sha256, "options": options.cache_key()})[:32]
    return Path(work_dir) / "rejects" / stage / f"{name}.jsonl"


def cache_view(params: dict[str, Any]) -> dict[str, Any]:
    """What the ``validate`` task's key sees: the input's digest and the options' key."""
    return {"input": params["source"].sha256, "options": params["options"].cache_key()}


@task(
    name="validate",
    cache_key_fn=content_cache(
        exclude=("work_dir",),
        view=cache_view,
        outputs=lambda p: [rejects_file(p["work_dir"], "validate", p["source"], p["options"])],
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def validate(source: FileRef, options: ValidateOptions, work_dir: Path) -> ValidationResult:
    """Check every record of one file (``packft.preprocess.validate_source``); count by reason.

    ``options`` come from ``PreprocessConfig.validate_options()`` (the CLI's definition).
    """
    from packft.preprocess import InputFile, validate_source

    rejects = rejects_file(work_dir, "validate", source, options)
    pinned = InputFile(path=source.path, sha256=source.sha256, source=source.source,
                       size=source.size)  # fmt: skip
    return validate_source(pinned, options, rejects)


@task(name="quality-gate", persist_result=False)
def quality_gate(checks: list[ValidationResult], min_valid_fraction: float) -> GateResult:
    """Fail the run when too few records are valid (``packft.ingest.check_quality``)."""
    from packft.ingest import check_quality

    return check_quality([c.input_counts() for c in checks], min_valid_fraction)
