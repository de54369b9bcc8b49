"""The deployer's model lookup after readiness follows the one retry policy (nim_async.http.retry):
a busy server (503, 429) is asked again, up to three times; an internal error (500) is not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from nim_async.deploy.events import DeployEvent, Notice
from nim_async.deploy.watch import list_models


@pytest.fixture
async def server() -> AsyncIterator[Callable[[list[int]], tuple[str, list[int]]]]:
    """``server([503])``: a URL whose /v1/models answers those statuses, then a model list."""
    answers: list[int] = []
    seen: list[int] = []

    async def models(request: web.Request) -> web.Response:
        status = answers.pop(0) if answers else 200
        seen.append(status)
        if status != 200:
            return web.json_response({"message": "busy"}, status=status)
        return web.json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]

    def make(statuses: list[int]) -> tuple[str, list[int]]:
        answers.extend(statuses)
        return f"http://{host}:{port}", seen

    try:
        yield make
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("statuses", "found", "asked"),
    [([503, 429], ["m1"], 3), ([503, 503, 503], None, 3), ([500], None, 1)],
)
async def test_list_models_retries_what_the_policy_retries(
    server: Callable[[list[int]], tuple[str, list[int]]],
    statuses: list[int],
    found: list[str] | None,
    asked: int,
) -> None:
    url, seen = server(statuses)
    events: list[DeployEvent] = []
    assert await list_models(url, events.append) == found
    assert len(seen) == asked
    warnings = [e for e in events if isinstance(e, Notice)]
    assert len(warnings) == (0 if found else 1)
