"""The archive download under the one retry policy (nim_async.http.retry), against a real HTTP
storage on loopback: a 503 from the storage is retried, a 500 is not, and the attempts (the
policy's, six) bound every kind of failure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

import nim_async.deploy.weights.download as download
from nim_async.errors import WeightsDownloadError
from nim_async.http.download import DownloadClient

BODY = bytes(range(256)) * 64


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_BACKOFF_BASE", 0.0)


@pytest.fixture
async def storage() -> AsyncIterator[Callable[[list[int]], str]]:
    """``storage([503, 503])``: a URL answering those statuses first, then the whole body."""
    runner: web.AppRunner | None = None
    answers: list[int] = []
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        status = answers.pop(0) if answers else 200
        seen.append(status)
        if status != 200:
            return web.json_response({"message": "busy"}, status=status)
        return web.Response(body=BODY, content_type="application/octet-stream")

    def make(statuses: list[int]) -> str:
        answers.extend(statuses)
        assert runner is not None
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/object?X-Signature=secret"

    app = web.Application()
    app.router.add_get("/object", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    make.seen = seen  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        await runner.cleanup()


async def test_a_busy_storage_is_retried(
    storage: Callable[[list[int]], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = storage([503, 429, 502])
    part = tmp_path / "a.tar.part"
    with caplog.at_level(logging.INFO, logger="nim_async"):
        async with DownloadClient() as client:
            await download.download_archive(client, url, part, label="run r")
    assert part.read_bytes() == BODY
    assert storage.seen == [503, 429, 502, 200]  # type: ignore[attr-defined]
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying the download")]
    assert len(retries) == 3
    assert all("secret" not in r.getMessage() for r in caplog.records)


async def test_an_internal_error_is_not_retried(
    storage: Callable[[list[int]], str], tmp_path: Path
) -> None:
    url = storage([500])
    async with DownloadClient() as client:
        with pytest.raises(WeightsDownloadError) as info:
            await download.download_archive(client, url, tmp_path / "a.part", label="run r")
    assert info.value.status_code == 500
    assert storage.seen == [500]  # type: ignore[attr-defined]


async def test_the_attempts_bound_a_storage_that_stays_busy(
    storage: Callable[[list[int]], str], tmp_path: Path
) -> None:
    url = storage([503] * 10)
    async with DownloadClient() as client:
        with pytest.raises(WeightsDownloadError) as info:
            await download.download_archive(client, url, tmp_path / "a.part", label="run r")
    assert info.value.status_code == 503
    assert storage.seen == [503] * 6  # type: ignore[attr-defined]
