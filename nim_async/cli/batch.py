"""``nim-async batch``: score many images, one JSON line per input, resumable.

The results file is a :class:`~nim_async.predict.journal.BatchJournal`: each line is appended and
flushed as its input finishes, ``--resume`` skips the inputs already recorded, and
``--retry-errors`` runs the failed ones again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nim_async.cli.common import console, make_predictor, sampling_from_args
from nim_async.cli.parser import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from nim_async.export import coco_from_jsonl
from nim_async.predict.batch import predict_many
from nim_async.predict.journal import BatchJournal, JournalExistsError
from nim_async.predict.sources import source_identity
from nim_async.ui.batch_progress import RichBatchProgress

__all__ = ["IMAGE_SUFFIXES", "batch", "iter_inputs"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_SHOWN_FAILURES = 10


def iter_inputs(spec: str) -> Iterator[str]:
    """Yield the inputs of ``nim-async batch`` lazily.

    Args:
        spec: A directory (image files under it, recursively, in sorted order), a text file
            with one path or URL per line (blank lines and ``#`` comments skipped), or ``-``
            for such lines on stdin.

    Raises:
        ValueError: if ``spec`` is neither a directory nor a file.
    """
    if spec == "-":
        yield from _lines(sys.stdin)
        return
    path = Path(spec)
    if path.is_dir():
        yield from _walk_images(path)
        return
    if not path.is_file():
        raise ValueError(f"DIR_OR_LIST: no such directory or file: {spec}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield str(path)
        return
    with path.open(encoding="utf-8") as lines:
        yield from _lines(lines)


def _lines(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        item = line.strip()
        if item and not item.startswith("#"):
            yield item


def _walk_images(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(dirpath, name)


def _check(args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.retry_errors and not args.resume:
        raise ValueError("--retry-errors only applies together with --resume")


def _open_journal(args: argparse.Namespace) -> BatchJournal:
    journal = BatchJournal(
        args.out, resume=args.resume, overwrite=args.overwrite, retry_errors=args.retry_errors
    )
    try:
        return journal.open()
    except JournalExistsError as exc:
        raise ValueError(
            f"{exc.path} already holds results; pass --resume to continue it or --overwrite to "
            "start again"
        ) from None


def _inputs(spec: str) -> Iterator[str]:
    """The inputs of ``spec``; a wrong DIR_OR_LIST fails here, before connecting anywhere."""
    probe = iter_inputs(spec)
    try:
        first = next(probe)
    except StopIteration:
        return iter(())

    def chained() -> Iterator[str]:
        yield first
        yield from probe

    return chained()


def _count_pending(spec: str, recorded: frozenset[str]) -> int:
    keys = {source_identity(item) for item in iter_inputs(spec)}
    return len(keys - recorded)


async def batch(args: argparse.Namespace) -> int:
    """Run ``nim-async batch DIR_OR_LIST``.

    Args:
        args: Parsed arguments.

    Returns:
        0 when every input succeeded, 1 when any failed (also an error record an earlier run
        left that ``--resume`` kept), 130 when interrupted.
    """
    _check(args)
    sampling = sampling_from_args(args)
    inputs = _inputs(args.inputs)
    failures: list[tuple[str, str]] = []
    progress = not args.no_progress and sys.stderr.isatty()
    with _open_journal(args) as journal:
        started = time.perf_counter()
        # For an ETA the bar needs a total: one extra lazy pass over a directory or list file.
        total = None
        if progress and args.inputs != "-":
            total = _count_pending(args.inputs, journal.recorded)
        interrupted = False
        try:
            async with (
                make_predictor(
                    args, task=args.task, max_connections=args.concurrency, retries=0
                ) as predictor,
                contextlib.aclosing(
                    predict_many(
                        predictor,
                        journal.pending(inputs),
                        concurrency=args.concurrency,
                        retries=args.retries,
                        user_prompt=args.prompt,
                        sampling_params=sampling,
                        ordered=args.ordered,
                        progress=RichBatchProgress() if progress else False,
                        total=total,
                    )
                ) as results,
            ):
                async for result in results:
                    record = journal.record(result)
                    if not result.ok and len(failures) < _SHOWN_FAILURES:
                        failures.append((record["source"], record["error"]["message"]))
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C: asyncio.run cancels this task; the lines written so far are complete.
            interrupted = True
    return _report(args, journal, failures, time.perf_counter() - started, interrupted)


def _report(
    args: argparse.Namespace,
    journal: BatchJournal,
    failures: list[tuple[str, str]],
    elapsed: float,
    interrupted: bool,
) -> int:
    err = console(stderr=True)
    out = journal.path
    earlier = journal.earlier_failed
    summary = (
        f"batch: {journal.ok} ok, {journal.failed} failed"
        + (f", {earlier} failed (earlier)" if earlier else "")
        + (f", {journal.skipped} already recorded (skipped)" if args.resume else "")
        + (f", {journal.duplicates} repeated inputs skipped" if journal.duplicates else "")
        + f" in {elapsed:.1f} s -> {out}"
    )
    if args.coco:
        count = coco_from_jsonl(out, Path(args.coco))
        err.print(f"COCO export: {count} images -> {args.coco}")
    if interrupted:
        err.print(f"{summary}\n[yellow]interrupted[/]; rerun with --resume to finish the rest")
        return EXIT_INTERRUPTED
    if journal.failed or earlier:
        err.print(f"[red]{summary}[/]")
        for source, message in failures:
            err.print(f"  {source}: {message}", markup=False)
        if journal.failed > len(failures):
            more = journal.failed - len(failures)
            err.print(f"  ... and {more} more (see {out})", markup=False)
        err.print("Rerun the failures with --resume --retry-errors")
        return EXIT_FAILED
    err.print(f"[green]{summary}[/]")
    return EXIT_OK
