"""Remote inputs: a content-addressed cache for http(s) files and Hugging Face dataset snapshots.

Cache layout under ``cache_dir``::

    blobs/<sha256><ext>       verified content, named by its own hash; <ext> keeps the format
    partial/<key>.part        bytes received so far for one URL (key = sha256 of the URL)
    partial/<key>.json        the validator (ETag / Last-Modified) the .part was fetched under
    urls.json                 {url: {"sha256": ..., "file": "blobs/...", "size": n}}
    hub/                      huggingface_hub's own cache for ``hf://datasets/...`` snapshots

Algorithm of :func:`fetch_url`: a URL already in ``urls.json`` whose blob exists (and matches the
expected ``sha256`` if one is given) is returned without touching the network; so is any blob
already named by the expected hash. Otherwise the file is streamed into ``<key>.part``. A network
error, a 5xx/408/429 answer or a short body is retried with exponential backoff
(``backoff * 2**k`` seconds, ``Retry-After`` honoured up to 60 s); the counter resets whenever an
attempt made progress. Each retry asks only for the missing tail (``Range: bytes=<have>-``, with
``If-Range`` so a changed file restarts from zero instead of splicing two versions). Other 4xx
answers fail at once. When complete, the file is hashed; a mismatch with the expected ``sha256``
deletes the partial file and raises :class:`ChecksumMismatchError`, so nothing corrupt stays in the
cache. A good file is committed into ``blobs/`` by a :class:`packft.core.atomic.Stage` (moved to
a temporary name there, fsynced, renamed), then ``urls.json`` is rewritten atomically. A per-URL ``flock`` keeps two processes from writing the same ``.part``. A local write
error (disk full, read-only, I/O) deletes the ``.part`` and raises one ``OSError`` naming it.
A body sent without ``Content-Length`` (nor a ``Content-Range`` total) ends when the connection
closes, so a cut-short transfer looks complete: unless ``sha256`` was given, such a file is kept
but recorded as ``"unverified": true`` in ``urls.json`` and a one-line warning is logged, also
whenever the cached copy is reused. A body cut short *with* a known length is retried as above.

Reuse is verified: a blob is returned from the cache only if its bytes still hash to its name
(one read, ~1 GB/s); a corrupt blob is deleted with a warning and downloaded again. Each call
first removes temporaries that dead processes left in the cache (:func:`packft.core.writers.sweep`).

Cost: one streaming pass to download plus one read to hash (~1.5 GB/s sha256 on this machine).
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packft.core.atomic import Stage, atomic_write_bytes
from packft.core.digest import file_sha256, named_os_error
from packft.core.durable import fsync_file
from packft.core.faults import inject
from packft.core.writers import sweep

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(OSError):
    """A remote input could not be fetched (the message says why and what to do instead).

    ``transient`` is True only when the server or network kept failing (connection errors,
    timeouts, 5xx/408/429) until the in-call retries ran out: a later attempt may succeed. A
    4xx answer, a checksum mismatch or an unusable URL is final (False).
    """

    transient: bool = False

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not hash to the expected sha256; nothing was kept."""


class HubUnavailableError(DownloadError):
    """The Hugging Face Hub could not be reached (offline, unknown repo or revision)."""


class _Retryable(Exception):
    """A transient failure: try again after a backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _load_index(cache_dir: Path) -> dict[str, dict]:
    path = cache_dir / "urls.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged index only costs a re-download; blobs are verified by name
    return data if isinstance(data, dict) else {}


def _record_in_index(cache_dir: Path, url: str, entry: dict) -> None:
    with _flock(cache_dir / "urls.json.lock"):
        index = _load_index(cache_dir)
        index[url] = entry
        text = json.dumps(index, indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(cache_dir / "urls.json", text.encode("utf-8"))


def _suffix_from_name(name: str, known: tuple[str, ...]) -> str:
    lowered = name.lower()
    return max((s for s in known if lowered.endswith(s)), key=len, default="")


def _suffix_from_headers(headers, known: tuple[str, ...]) -> str:
    disposition = headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    return _suffix_from_name(unquote(match.group(1)), known) if match else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), 60.0)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(parsed.timestamp() - time.time(), 60.0))


def _download_once(
    client, url: str, part: Path, meta: Path, known: tuple[str, ...]
) -> tuple[str, bool]:
    """One GET of the missing tail; returns (file suffix, whether the server said how long the
    file is, so that a short body is detected); raises _Retryable when incomplete."""
    import httpx

    have = part.stat().st_size if part.exists() else 0
    try:
        validator = json.loads(meta.read_text()) if have else {}
    except (OSError, ValueError):  # no record of what the .part holds: never splice onto it
        part.unlink(missing_ok=True)
        have, validator = 0, {}
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator.get("if_range"):
            headers["If-Range"] = validator["if_range"]
    try:
        with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 416 and have:
                total = response.headers.get("content-range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == have:
                    return validator.get("suffix", ""), True  # the .part was already complete
                part.unlink(missing_ok=True)
                raise _Retryable("server refused the resume range; restarting from zero")
            if status in RETRY_STATUS:
                raise _Retryable(
                    f"HTTP {status} {response.reason_phrase}",
                    _retry_after(response.headers.get("retry-after")),
                )
            if status >= 400:
                hint = " (check the URL)" if status in (401, 403, 404, 410) else ""
                raise DownloadError(f"{url}: HTTP {status} {response.reason_phrase}{hint}")
            suffix = validator.get("suffix") or _suffix_from_name(urlsplit(url).path, known)
            suffix = suffix or _suffix_from_headers(response.headers, known)
            if not suffix:
                raise DownloadError(
                    f"{url}: cannot tell the file format: the URL path does not end in one of "
                    f"{', '.join(known)} and the server sent no file name. Download it and pass "
                    "the local path to --input."
                )
            if status == 206:
                match = re.match(
                    r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("content-range", "")
                )
                if not match or int(match.group(1)) != have:
                    part.unlink(missing_ok=True)
                    raise _Retryable("server answered a different range; restarting from zero")
                total = int(match.group(3)) if match.group(3) != "*" else None
                mode = "ab"
            else:
                have, mode = 0, "wb"
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                etag = response.headers.get("etag", "")
                if_range = etag if etag and not etag.startswith("W/") else ""
                if_range = if_range or response.headers.get("last-modified", "")
                record = {"url": url, "if_range": if_range, "suffix": suffix}
                atomic_write_bytes(meta, json.dumps(record).encode())
            _receive(response, part, meta, mode)
    except httpx.TransportError as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retryable(f"connection ended after {size} of {total} bytes")
    return suffix, total is not None


def _receive(response: Any, part: Path, meta: Path, mode: str) -> None:
    """Append the body to ``part``. A local write error (disk full, read-only, I/O) removes the
    partial file, which could not be resumed usefully, and names it; network errors keep it."""
    import httpx

    try:
        with open(part, mode) as handle:
            try:
                for chunk in response.iter_raw():  # no re-chunking: keep every byte received
                    inject("download.write", part)
                    handle.write(chunk)
            finally:
                fsync_file(handle)  # what was received survives for the next attempt
    except httpx.TransportError:
        raise
    except OSError as error:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise named_os_error(error, part) from None


def _intact_blob(path: Path, digest: str, size: int | None = None) -> bool:
    """A cached blob is reused only when its bytes still hash to its name; a corrupt one is
    deleted (with a warning) so it is downloaded again."""
    if not path.is_file():
        return False
    if (size is None or path.stat().st_size == size) and file_sha256(path) == digest:
        return True
    log.warning(
        "cached download %s is corrupt (sha256 differs from its name): downloading it again", path
    )
    path.unlink(missing_ok=True)
    return False


def fetch_url(
    url: str,
    cache_dir: Path,
    *,
    sha256: str | None = None,
    known_suffixes: tuple[str, ...] = (),
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60.0,
    refresh: bool = False,
) -> Path:
    """Download ``url`` into the content-addressed cache and return the verified local file.

    Args:
        url: an http(s) URL whose path (or Content-Disposition file name) ends in a known suffix.
        cache_dir: cache root (see the module docstring for the layout).
        sha256: expected hex digest; a mismatch raises and leaves nothing in the cache.
        known_suffixes: file suffixes that name a readable format (e.g. ``.jsonl``, ``.csv.gz``).
        retries: transient failures tolerated in a row (progress resets the count).
        backoff: first retry delay in seconds; doubles on each consecutive failure.
        timeout: per-read network timeout in seconds.
        refresh: ignore ``urls.json`` and download again.

    Returns:
        ``cache_dir/blobs/<sha256><suffix>``.

    Raises:
        DownloadError: HTTP 4xx, or still failing after ``retries`` consecutive attempts.
        ChecksumMismatchError: the content does not match ``sha256``.
    """
    import httpx

    cache_dir = Path(cache_dir)
    expected = sha256.lower() if sha256 else None
    for where in (cache_dir, cache_dir / "blobs", cache_dir / "partial"):
        sweep(where)
    if not refresh:
        entry = _load_index(cache_dir).get(url)
        usable = entry and (expected is None or entry["sha256"] == expected)
        if usable and _intact_blob(cache_dir / entry["file"], entry["sha256"], entry.get("size")):
            if entry.get("unverified") and expected is None:
                _warn_unverified(url, entry)
            return cache_dir / entry["file"]
        if expected:
            suffix = _suffix_from_name(urlsplit(url).path, known_suffixes)
            candidate = cache_dir / "blobs" / f"{expected}{suffix}"
            if suffix and _intact_blob(candidate, expected):
                return candidate
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    part = cache_dir / "partial" / f"{key}.part"
    meta = part.with_suffix(".json")
    with _flock(part.with_suffix(".lock")):
        if refresh:
            part.unlink(missing_ok=True)
        failures = 0
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0))) as client:
            while True:
                before = part.stat().st_size if part.exists() else 0
                try:
                    suffix, length_known = _download_once(client, url, part, meta, known_suffixes)
                    break
                except _Retryable as exc:
                    progressed = part.exists() and part.stat().st_size > before
                    failures = 1 if progressed else failures + 1
                    if failures > retries:
                        raise DownloadError(
                            f"{url}: giving up after {failures} failed attempts in a row (last: "
                            f"{exc}); {part.stat().st_size if part.exists() else 0} bytes are kept "
                            "in the cache and a re-run resumes from there.",
                            transient=True,
                        ) from exc
                    delay = exc.retry_after if exc.retry_after is not None else 0.0
                    time.sleep(max(delay, backoff * 2 ** (failures - 1)))
        digest = file_sha256(part)
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{url}: sha256 mismatch: expected {expected}, downloaded {digest}. The file was "
                "deleted from the cache; check the URL and the checksum you passed."
            )
        final = cache_dir / "blobs" / f"{digest}{suffix}"
        final.parent.mkdir(parents=True, exist_ok=True)
        with Stage(final.parent, label="download") as stage:
            stage.adopt(final, part)  # fsynced, then over a blob of that name: it may be corrupt
            stage.commit()
        meta.unlink(missing_ok=True)
    entry = {"sha256": digest, "file": f"blobs/{final.name}", "size": final.stat().st_size}
    if not length_known and expected is None:
        entry["unverified"] = True
        _warn_unverified(url, entry)
    _record_in_index(cache_dir, url, entry)
    return final


def _warn_unverified(url: str, entry: dict) -> None:
    """One log line: a body without Content-Length may have been cut short unnoticed."""
    log.warning(
        "packft: warning: %s was sent without Content-Length, so a cut-short download cannot be "
        "told from a complete one; %s bytes kept UNVERIFIED (pass --input-sha256 %s if that is "
        "the right file)",
        url,
        f"{entry['size']:,}",
        entry["sha256"],
    )


def fetch_hub_dataset(
    repo_id: str, revision: str | None, cache_dir: Path, subpath: str = ""
) -> Path:
    """Snapshot a Hugging Face dataset repo (only ``subpath``, a path or glob, if given).

    Offline mode (``HF_HUB_OFFLINE=1``) is read at call time, so only an existing snapshot is used.

    Returns:
        The snapshot's root directory.

    Raises:
        HubUnavailableError: offline, unreachable, unknown repo/revision, or gated.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    offline = flag in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)
    spec = f"hf://datasets/{repo_id}" + (f"@{revision}" if revision else "")
    patterns = [subpath, f"{subpath}/**"] if subpath else None
    try:
        root = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            cache_dir=Path(cache_dir) / "hub",
            allow_patterns=patterns,
            local_files_only=offline,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        why = "offline mode (HF_HUB_OFFLINE) is on and" if offline else "the Hub is unreachable or"
        raise HubUnavailableError(
            f"cannot fetch {spec}: {why} it is not in the cache {Path(cache_dir) / 'hub'} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). On a "
            f"machine with network run `hf download {repo_id} --repo-type dataset "
            f"{'--revision ' + revision + ' ' if revision else ''}--local-dir DIR`, copy DIR "
            "here and pass it (or one data file in it) as --input DIR."
        ) from exc
    return Path(root)
