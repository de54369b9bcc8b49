"""nim_async.predict.journal used as a library (no CLI): resume, dedup, torn lines, retry errors.

Real predictor, real emulator over HTTP; the images are files so that their labels are stable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from nim_async.predict.batch import predict_many
from nim_async.predict.journal import BatchJournal, JournalExistsError, read_recorded
from nim_async.predict.predictor import AsyncNIMPredictor

QUESTION = "How many shapes are there?"


@pytest.fixture
def sources(tmp_path: Path, image_factory: Callable[..., bytes]) -> list[str]:
    paths = []
    for i, colour in enumerate(("red", "blue", "green")):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(image_factory(size=(120, 80), shapes=[(colour, (10, 10, 60, 60))]))
        paths.append(str(path))
    # a repeat, and an input that fails (no such file)
    return [*paths, paths[1], str(tmp_path / "missing.png")]


async def _run(journal: BatchJournal, url: str, sources: list[str]) -> None:
    async with AsyncNIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=url) as p:
        async for result in predict_many(p, journal.pending(sources), user_prompt=QUESTION):
            journal.record(result)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_journal_resumes_dedups_and_retries_errors(
    emulator: Any, sources: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "results.jsonl"
    with BatchJournal(out) as journal:
        await _run(journal, emulator.url, sources)
    assert (journal.ok, journal.failed, journal.duplicates, journal.skipped) == (3, 1, 1, 0)
    records = _lines(out)
    assert sorted(r["source"] for r in records) == sorted({*sources})
    # index: the position in the sources given, not in what was sent
    assert {r["source"]: r["index"] for r in records}[sources[4]] == 4
    assert {r["source"]: r["status"] for r in records}[sources[4]] == "error"

    # Without resume or overwrite the results are not appended to by accident.
    with pytest.raises(JournalExistsError, match="already holds results"):
        BatchJournal(out).open()
    with pytest.raises(ValueError, match="retry_errors"):
        BatchJournal(out, retry_errors=True)

    # A kill mid-write leaves a torn last line: it is cut off; everything recorded is skipped.
    with out.open("ab") as handle:
        handle.write(b'{"source": "torn')
    with BatchJournal(out, resume=True) as again:
        await _run(again, emulator.url, sources)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 5)
    assert len(_lines(out)) == 4

    # retry_errors drops the error line and runs that input again (it fails again).
    with BatchJournal(out, resume=True, retry_errors=True) as retry:
        assert retry.dropped_errors == 1
        assert sources[4] not in retry.recorded
        await _run(retry, emulator.url, sources)
    assert (retry.ok, retry.failed) == (0, 1)
    assert [r["status"] for r in _lines(out)].count("error") == 1
    assert read_recorded(out)[0] == {*sources}

    # overwrite starts afresh.
    with BatchJournal(out, overwrite=True) as fresh:
        assert fresh.recorded == frozenset()
    assert out.read_bytes() == b""


def test_record_needs_an_open_journal(tmp_path: Path) -> None:
    from nim_async.predict.batch import BatchResult

    journal = BatchJournal(tmp_path / "r.jsonl")
    with pytest.raises(RuntimeError, match="not open"):
        journal.record(BatchResult(0, "x.png", None, None, 1, 0.0))
