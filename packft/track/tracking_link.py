"""Delivery of tracking calls off the caller's thread, so tracking never stops the work.

Algorithm: a :class:`Link` owns one daemon thread and a bounded FIFO per top-level run (its
nested runs share it). Every call a tracker makes (metrics, params, tags, artifacts, the run's
end) is queued and sent in order by that thread; the caller never waits for the server. MLflow's
own HTTP client is bounded by short defaults (:data:`HTTP_DEFAULTS`, read by MLflow at every
request; a user's values win), so a dead server fails a call in ~3 s instead of the ~250 s of
MLflow's default 7 retries with doubling backoff.

The first failure marks the link *lost*: one warning line says what failed and where the data
still is (the caller's ``hint``, e.g. how to import ``train_log.jsonl`` later), and every later
call is dropped at once. Two calls wait, bounded: creating a run (its id is needed now; done in
the caller's thread) and :meth:`Link.close`, which waits while the queue drains (a run's end)
and gives up after :data:`DRAIN_IDLE_S` seconds without a completed call. With ``required=True`` nothing is warned:
the caller's next call raises :class:`TrackingUnavailable` (one line, exit 1 in the CLI).

Reachability: :func:`probe` asks an http(s) server's ``/health`` before a run is created
(:data:`PROBE_TIMEOUT_S` per try, two tries one second apart: an unreachable server is known
within ~7 s at worst, at once when the port refuses connections).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from packft.core.errors import PackftError

log = logging.getLogger("packft.track.tracking")

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds per connect/read (MLflow: 120)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # MLflow: 7, with backoff 2 s doubling (~250 s)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout carries `packft train`'s JSON
}
PROBE_TIMEOUT_S = 3.0
DRAIN_IDLE_S = 60.0
"""close() gives up when no call completed for this long. A dead or hung server is found
sooner (MLflow's bounded retries fail a call in <= ~33 s); this only catches a call that is
not bounded, e.g. a single multi-GB upload that takes longer is abandoned (with the warning)."""
QUEUE_SIZE = 10_000
RECHECK_S = 60.0
"""A store lost in this process is not probed (nor warned about) again for this long."""
_LOST: dict[str, tuple[str, float]] = {}


class TrackingUnavailable(PackftError):
    """The tracking server cannot be used and the run was told tracking is required."""


def apply_http_defaults() -> None:
    """Short MLflow HTTP timeouts/retries, unless the user set their own."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def recently_lost(uri: str) -> str | None:
    """Why ``uri`` failed in this process within :data:`RECHECK_S` seconds, else None."""
    found = _LOST.get(uri)
    return found[0] if found and time.monotonic() - found[1] < RECHECK_S else None


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S, tries: int = 2) -> str | None:
    """None if ``uri`` is not http(s) or its server answers ``/health``; else the reason."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    url = uri.rstrip("/") + "/health"
    reason = "no answer"
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return None
        except urllib.error.HTTPError as error:
            if error.code < 500:  # something answers; the API calls will tell the rest
                return None
            reason = f"HTTP {error.code} from {url}"
        except (urllib.error.URLError, OSError) as error:
            reason = short_reason(getattr(error, "reason", error))
        if attempt + 1 < tries:
            time.sleep(1.0)
    return reason


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def short_reason(error: object) -> str:
    """The useful part of a (often very long) requests/MLflow error, on one line."""
    text = str(error)
    found = _ERRNO_TEXT.findall(text)
    if found:
        return found[-1].strip()
    if isinstance(error, TimeoutError) or "timed out" in text.lower():
        return "timed out"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 160 else first[:157] + "..."


class _QuietRetries(logging.Filter):
    """urllib3 logs a warning per HTTP retry; packft reports a lost server once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying (")


_QUIET = _QuietRetries()


class Link:
    """Ordered, bounded, non-blocking delivery of one run family's tracking calls."""

    def __init__(self, uri: str, *, required: bool = False, hint: str = "") -> None:
        self.uri, self.required, self.hint = uri, required, hint
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple, dict] | None] = queue.Queue(
            QUEUE_SIZE
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self.delivered = 0
        apply_http_defaults()
        logging.getLogger("urllib3.connectionpool").addFilter(_QUIET)

    @property
    def lost(self) -> str | None:
        """Why tracking stopped, or None while it works."""
        return self._lost

    def message(self) -> str:
        return f"MLflow tracking at {self.uri} failed ({self._lost})"

    def _usable(self) -> bool:
        if self._lost is None:
            return True
        if self.required:
            raise TrackingUnavailable(
                f"{self.message()} and tracking is required (--tracking-required); start or "
                "fix the server, or run without --tracking-required to continue untracked"
            )
        return False

    def send(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)`` for the sender thread; never blocks."""
        if not self._usable():
            return
        with self._lock:  # queued and thread started atomically (see _run's exit)
            try:
                self._queue.put_nowait((fn, args, kwargs))
            except queue.Full:
                full = True
            else:
                full = False
                self._ensure_thread()
        if full:
            self.lose(f"{QUEUE_SIZE} calls waiting: the server is too slow")
            self._usable()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` now in the caller's thread (e.g. creating a run); None if tracking is lost."""
        if not self._usable():
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure means: continue untracked
            self.lose(short_reason(error))
            self._usable()
            return None

    def lose(self, reason: str, *, quiet: bool = False) -> None:
        """Stop tracking; warn once (unless required: the next call raises instead)."""
        with self._lock:
            if self._lost is not None:
                return
            self._lost = reason
        _LOST[self.uri] = (reason, time.monotonic())
        if not (quiet or self.required):
            log.warning("packft: %s; the run continues untracked%s", self.message(), self.hint)

    def close(self, idle_s: float = DRAIN_IDLE_S) -> None:
        """Wait while queued calls are delivered (gives up after ``idle_s`` without progress)."""
        self._drain(idle_s)
        with self._lock:
            if self._thread is not None:
                with contextlib.suppress(queue.Full):  # full only while a lost link skips
                    self._queue.put_nowait(None)  # the sender ends; a later send() starts one
        self._usable()

    def _drain(self, idle_s: float) -> None:
        seen, since = self.delivered, time.monotonic()
        while self._queue.unfinished_tasks and self._lost is None:
            with self._queue.all_tasks_done:
                self._queue.all_tasks_done.wait(timeout=0.1)
            if self.delivered != seen:
                seen, since = self.delivered, time.monotonic()
            elif time.monotonic() - since > idle_s:
                self.lose(f"no answer for {idle_s:.0f} s")

    def _ensure_thread(self) -> None:
        """Start the sender if none runs (caller holds the lock)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="packft-tracking", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    with self._lock:
                        if self._queue.empty():  # nothing was sent after close(): stop
                            self._thread = None
                            return
                    continue
                if self._lost is None:
                    fn, args, kwargs = item
                    try:
                        fn(*args, **kwargs)
                        self.delivered += 1
                    except Exception as error:  # noqa: BLE001 - tracking must not stop work
                        self.lose(short_reason(error))
            finally:
                self._queue.task_done()
