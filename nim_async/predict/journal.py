"""A resumable batch: one JSON line per input in an append-only results file.

:class:`BatchJournal` is what ``nim-async batch --out/--resume`` uses, for any caller of
:func:`~nim_async.predict.batch.predict_many`. Each result is written (and flushed) as it
finishes, so a run that is killed keeps every line it wrote; the next run with ``resume=True``
skips the inputs already recorded and appends the rest::

    with BatchJournal("results.jsonl", resume=True) as journal:
        async with AsyncNIMPredictor(...) as predictor:
            async for result in predict_many(predictor, journal.pending(sources)):
                journal.record(result)
    print(journal.ok, journal.failed, journal.skipped)

The file is only ever a regular file: a path that is a directory, device, FIFO or socket (or a
symlink to one), or that lies under ``/proc``, ``/sys`` or ``/dev`` (``/dev/shm`` aside), is
refused with :class:`~nim_async.errors.OutputFileError`; ``overwrite`` and ``retry_errors``
replace the file atomically (a temporary file in the same folder, then a rename), and every OS
error (permission, read-only or immutable folder, full disk) becomes an ``OutputFileError``
naming the path and the cause.

Lines are :func:`~nim_async.predict.batch.result_record` objects whose ``index`` is the input's
position in ``sources`` (stable across resumed runs), plus ``key``: the input's
:func:`~nim_async.predict.sources.source_identity` (a resolved absolute path, or the URL as
given), by which inputs are told apart: the same folder given once relative and once absolute is
one set of inputs, and a repeat within one run gets no second line. A resumed run counts the
error records it keeps in :attr:`BatchJournal.earlier_failed`. A partial last line (a write
torn by a kill) is cut off when the file is opened again; ``retry_errors=True`` drops the error
lines so those inputs run again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import orjson

from nim_async.errors import OutputFileError
from nim_async.predict.batch import BatchResult, result_record
from nim_async.predict.sources import source_identity

__all__ = ["BatchJournal", "JournalExistsError", "read_recorded"]


class JournalExistsError(ValueError):
    """The results file already holds results and neither resume nor overwrite was asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} already holds results; resume to continue it or overwrite to start again"
        )
        self.path = path


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)
_SPECIAL_ROOTS = ("proc", "sys", "dev")
_SHM = ("dev", "shm")  # a plain tmpfs: results may go there


def _os_error(path: Path, exc: OSError) -> OutputFileError:
    cause = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
    if exc.errno == errno.EPERM and "mmutable" not in cause:
        cause += " (immutable file or folder?)"
    return OutputFileError(f"cannot write results file {path}: {cause}", str(path))


def _kind(mode: int) -> str | None:
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_target(path: Path) -> Path:
    """The real path to write (symlinks followed); refuses anything but a regular file."""
    real = Path(os.path.realpath(path))
    shown = f"{path} (-> {real})" if real != Path(os.path.abspath(path)) else str(path)
    if len(real.parts) > 1 and real.parts[1] in _SPECIAL_ROOTS and real.parts[1:3] != _SHM:
        raise OutputFileError(
            f"refusing to write results file {shown}: it is under /{real.parts[1]} "
            "(a kernel or device filesystem); give a regular file path",
            str(path),
        )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as exc:
        raise _os_error(path, exc) from None
    kind = _kind(mode)
    if kind is not None:
        raise OutputFileError(
            f"refusing to write results file {shown}: it is {kind}, not a regular file",
            str(path),
        )
    return real


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_append(path: Path, shown: Path) -> IO[bytes]:
    # O_NONBLOCK: a FIFO put there since the check fails at once instead of blocking.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise OutputFileError(
                f"refusing to write results file {shown}: it is {kind}, not a regular file",
                str(shown),
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def _repair_torn_tail(path: Path) -> bytes:
    data = path.read_bytes()
    keep_end = data.rfind(b"\n") + 1
    if keep_end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(keep_end)
        data = data[:keep_end]
    return data


def read_recorded(path: str | Path, *, drop_errors: bool = False) -> tuple[set[str], int]:
    """Read the inputs already recorded in a results file, repairing a torn last line.

    A run killed mid-write can leave a partial last line; it is cut off so the file stays valid
    JSON Lines. With ``drop_errors`` the error records are removed (atomically) so those inputs
    run again.

    Args:
        path: The JSON Lines results file (missing: nothing recorded).
        drop_errors: Remove error records and do not count them as recorded.

    Returns:
        The recorded inputs' identities (:func:`~nim_async.predict.sources.source_identity`)
        and how many error records were dropped.
    """
    recorded, dropped, _ = _read(Path(path), drop_errors=drop_errors)
    return recorded, dropped


def _record_key(record: dict[str, Any]) -> str:
    key = record.get("key")
    # files written before records carried their key: the source as given, resolved here
    return key if isinstance(key, str) else source_identity(str(record["source"]))


def _read(out: Path, *, drop_errors: bool) -> tuple[set[str], int, int]:
    """(recorded identities, error records dropped, error records kept and not redone ok)."""
    if not out.exists():
        return set(), 0, 0
    status: dict[str, bool] = {}
    kept: list[bytes] = []
    dropped = 0
    for line in _repair_torn_tail(out).splitlines():
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "source" not in record:
            continue
        if drop_errors and record.get("status") != "ok":
            dropped += 1
            continue
        key = _record_key(record)
        status[key] = status.get(key, False) or record.get("status") == "ok"
        kept.append(line)
    if drop_errors and dropped:
        _replace_atomically(out, b"".join(line + b"\n" for line in kept))
    return set(status), dropped, sum(1 for ok in status.values() if not ok)


class BatchJournal:
    """The results file of one batch run: what to skip, and one flushed line per result.

    Args:
        path: The JSON Lines results file (its folder is created).
        resume: Keep the lines already there and skip their inputs.
        overwrite: Start the file afresh.
        retry_errors: With ``resume``: drop the error lines, so those inputs run again.

    Raises:
        ValueError: ``retry_errors`` without ``resume``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        retry_errors: bool = False,
    ) -> None:
        if retry_errors and not resume:
            raise ValueError("retry_errors only applies together with resume")
        self.path = Path(path)
        self.resume = resume
        self.overwrite = overwrite
        self.retry_errors = retry_errors
        self.recorded: frozenset[str] = frozenset()
        """Identities (:func:`~nim_async.predict.sources.source_identity`) of the inputs earlier
        runs recorded (set when opened with ``resume``)."""
        self.dropped_errors = 0
        """Error lines removed because of ``retry_errors``."""
        self.earlier_failed = 0
        """Inputs whose earlier error records ``resume`` kept (not run again: they failed)."""
        self.skipped = 0
        """Inputs skipped by :meth:`pending` because an earlier run recorded them."""
        self.duplicates = 0
        """Inputs skipped by :meth:`pending` because they were already given in this run."""
        self.ok = 0
        """Results recorded as ok."""
        self.failed = 0
        """Results recorded as errors."""
        self._sink: IO[bytes] | None = None
        self._started: set[str] = set()
        self._positions: dict[int, int] = {}

    def open(self) -> Self:
        """Check and prepare the file, read what is recorded, and open it for appending.

        Opening a journal that is already open does nothing (``with journal.open():`` opens
        the file once: a second open would replace an overwritten file again, re-read a file
        whose error lines were just dropped, and leave the first handle unclosed).

        Raises:
            JournalExistsError: the file holds results and neither ``resume`` nor ``overwrite``.
            OutputFileError: the path is not (and cannot become) a regular file, or an OS error
                (permission, read-only folder, full disk), naming the path and the cause.
        """
        if self._sink is not None:
            return self
        out = _check_target(self.path)
        try:
            exists = out.exists()
            if exists and out.stat().st_size > 0 and not (self.resume or self.overwrite):
                raise JournalExistsError(self.path)
            out.parent.mkdir(parents=True, exist_ok=True)
            if self.overwrite and exists:
                _replace_atomically(out, b"")
            if self.resume:
                recorded, self.dropped_errors, self.earlier_failed = _read(
                    out, drop_errors=self.retry_errors
                )
                self.recorded = frozenset(recorded)
            self._sink = _open_append(out, self.path)
        except OSError as exc:
            raise _os_error(self.path, exc) from None
        return self

    def close(self) -> None:
        """Close the file (every recorded line is already flushed).

        Raises:
            OutputFileError: the last bytes could not be written (e.g. the disk is full).
        """
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except OSError as exc:
                raise _os_error(self.path, exc) from None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def pending(self, sources: Iterable[Any]) -> Iterator[Any]:
        """Yield the sources still to run, lazily, in order.

        Skips those an earlier run recorded (counted in :attr:`skipped`) and repeats within
        ``sources`` (counted in :attr:`duplicates`). Feed the result to ``predict_many`` and
        pass its results to :meth:`record`.

        Args:
            sources: The batch's inputs (paths, URLs, anything ``predict_many`` takes).
        """
        for position, item in enumerate(sources):
            key = source_identity(item)
            if key in self.recorded:
                self.skipped += 1
                continue
            if key in self._started:
                self.duplicates += 1
                continue
            self._started.add(key)
            # predict_many numbers what it is given; the line carries the position in sources.
            self._positions[len(self._started) - 1] = position
            yield item

    def record(self, result: BatchResult) -> dict[str, Any]:
        """Append the line of one result and flush it.

        Args:
            result: A result of ``predict_many`` over :meth:`pending`.

        Returns:
            The record written (``index`` is the input's position in the sources).

        Raises:
            RuntimeError: if the journal is not open.
            OutputFileError: the line could not be written (e.g. the disk is full); the file
                keeps every complete line before it (a torn one is cut off on resume).
        """
        sink = self._sink
        if sink is None:
            raise RuntimeError("BatchJournal is not open; use `with BatchJournal(...)`")
        record = result_record(result)
        record["index"] = self._positions.pop(result.index, result.index)
        record["key"] = source_identity(result.source)
        try:
            sink.write(orjson.dumps(record) + b"\n")
            sink.flush()
        except OSError as exc:
            self._sink = None
            with contextlib.suppress(OSError):  # its buffer cannot be written either
                sink.close()
            raise _os_error(self.path, exc) from None
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
        return record

    def __repr__(self) -> str:
        return f"BatchJournal({str(self.path)!r}, ok={self.ok}, failed={self.failed})"
