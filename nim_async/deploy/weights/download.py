"""The archive download: resumable (HTTP ``Range``) into a ``.part`` file renamed when complete.

Progress is reported as :mod:`nim_async.deploy.events` values; a pre-signed URL that expired (or
that the storage refuses) is renewed once through :mod:`nim_async.deploy.weights.vi`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nim_async.config import NIMConfig
from nim_async.deploy.events import (
    EventSink,
    TransferFinished,
    TransferProgress,
    TransferStarted,
)
from nim_async.errors import NIMPredictionError, WeightsDownloadError
from nim_async.http.download import DownloadClient
from nim_async.http.errors import failure_kind
from nim_async.http.retry import RetryPolicy
from nim_async.protocol.scrub import strip_query

__all__ = [
    "ExpiredURL",
    "archive_path",
    "download_archive",
    "expired_error",
    "remove",
    "remove_downloads",
    "retry_policy",
]

logger = logging.getLogger("nim_async.deploy.weights")

_DOWNLOAD_ATTEMPTS = 6
_BACKOFF_BASE = 0.2
_BACKOFF_MAX = 5.0


def retry_policy(attempts: int) -> RetryPolicy:
    """The retry policy of the weights' HTTP calls (:class:`~nim_async.http.retry.RetryPolicy`).

    Args:
        attempts: Total attempts, the first included.
    """
    return RetryPolicy(attempts=attempts, base=_BACKOFF_BASE, cap=_BACKOFF_MAX)


class ExpiredURL(Exception):
    """The pre-signed URL has expired or was refused by the storage."""


class _Progress:
    """Reports one download's byte counts to a sink (no sink: nothing)."""

    def __init__(self, sink: EventSink | None, label: str) -> None:
        self._sink = sink
        self._key = label
        self._description = f"Downloading {label}"
        self.total: int | None = None

    def __call__(self, completed: int) -> None:
        if self._sink is not None:
            self._sink(TransferProgress(self._key, self._description, completed, self.total))


class _Retry(Exception):
    """This attempt ended without the whole object; try again (the reason is the message)."""


async def download_archive(
    client: DownloadClient,
    url: str,
    part: Path,
    *,
    label: str,
    on_event: EventSink | None = None,
) -> None:
    """Download ``url`` into ``part``, resuming with ``Range`` after interruptions.

    Args:
        client: The HTTP client.
        url: The pre-signed URL (never shown: messages carry it without its query).
        part: The partial file (appended to when the storage resumes at its size).
        label: What is downloaded, for the progress display (``run abc``).
        on_event: Receives the progress.

    Raises:
        ExpiredURL: the storage refused the pre-signed URL (HTTP 400/401/403).
        WeightsDownloadError: the download kept failing or the storage answered an error.
    """
    progress = _Progress(on_event, label)
    last_error = ""
    if on_event is not None:
        on_event(TransferStarted(None))
    summary: str | None = None
    # The one policy's attempts, backoff and log. A broken transfer always resumes (each
    # attempt continues from the partial file), timeouts included; an HTTP error is retried as
    # the policy says (429, 502, 503, 504), any other is raised at once.
    retry = retry_policy(_DOWNLOAD_ATTEMPTS).start(label=f"the download of {label}")
    try:
        while True:
            failure: Exception
            try:
                have = await _attempt(client, url, part, progress)
            except _Retry as exc:
                failure, last_error = exc, str(exc)
            except NIMPredictionError as exc:  # no answer, or the body broke off
                failure, last_error = exc, failure_kind(exc)
                logger.info(
                    "Model download interrupted at %d bytes (%s); resuming",
                    _file_size(part),
                    last_error,
                )
            except WeightsDownloadError as exc:  # the storage answered an HTTP error
                if await retry.backoff(exc):
                    continue
                raise
            else:
                if progress.total is None or have == progress.total:
                    summary = f"Downloaded {label}: {have / 1e6:.1f} MB"
                    return
                last_error = f"got {have} of {progress.total} bytes"
                failure = _Retry(last_error)
            if not await retry.backoff(failure, retryable=True):
                break
    finally:
        if on_event is not None:
            on_event(TransferFinished(summary))
    raise WeightsDownloadError(
        f"Downloading the model from {strip_query(url)} failed after {retry.attempts} "
        f"attempts ({last_error}). Run the deploy again to resume."
    )


async def _attempt(client: DownloadClient, url: str, part: Path, progress: _Progress) -> int:
    """One GET of the object (from the partial file's end); returns the bytes now in ``part``."""
    have = _file_size(part)
    # identity: byte offsets must be those of the stored object for Range to work.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    async with client.stream(url, headers=headers) as response:
        status = response.status
        if status in (400, 401, 403):
            raise ExpiredURL(f"HTTP {status}")
        if status == 416 and have:
            # Our partial file does not fit the object (changed?): start over.
            remove(part)
            raise _Retry("HTTP 416 for the resumed range")
        if status == 206 and have:
            start, progress.total = _content_range(response.headers.get("content-range"))
            if start != have:
                remove(part)
                raise _Retry("the storage resumed at the wrong offset")
            mode = "ab"
        elif status == 200:
            have = 0
            length = response.headers.get("content-length")
            progress.total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise WeightsDownloadError(
                f"Downloading the model from {strip_query(url)} failed: HTTP {status}.",
                status_code=status,
            )
        progress(have)
        with part.open(mode) as sink:
            # Unbuffered: every byte received is on disk before an interruption.
            async for chunk in response.chunks():
                sink.write(chunk)
                have += len(chunk)
                progress(have)
    return have


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def remove(path: Path) -> None:
    """Delete ``path`` if it exists.

    Args:
        path: A file.
    """
    path.unlink(missing_ok=True)


def _content_range(value: str | None) -> tuple[int, int | None]:
    # "bytes 100-199/200" or "bytes 100-199/*"
    if not value or not value.startswith("bytes "):
        return -1, None
    try:
        span, _, size = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (int(size) if size.strip().isdigit() else None)
    except ValueError:
        return -1, None


def archive_path(downloads: Path, run_id: str, run_output_id: str) -> Path:
    """Where the archive of one run output is stored.

    Named after the run output, so a resumed file always belongs to the same object.

    Args:
        downloads: ``{models_dir}/.downloads``.
        run_id: The run.
        run_output_id: The run output.
    """
    return downloads / f"{run_id}-{_file_safe(run_output_id)}.tar"


def remove_downloads(downloads: Path, run_id: str, run_output_id: str) -> None:
    """Delete the stored archive of a run output and its partial file.

    Args:
        downloads: ``{models_dir}/.downloads``.
        run_id: The run.
        run_output_id: The run output.
    """
    archive = archive_path(downloads, run_id, run_output_id)
    remove(archive)
    remove(archive.with_name(archive.name + ".part"))


def expired_error(config: NIMConfig) -> WeightsDownloadError:
    """The error for a pre-signed URL refused even after renewing it.

    Args:
        config: Names the run.
    """
    return WeightsDownloadError(
        f"The download URL Datature Vi issued for run {config.run_id!r} has expired (or was "
        "refused by the storage) even after requesting a fresh one; check the host clock "
        "and try again."
    )


def _file_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:100]
