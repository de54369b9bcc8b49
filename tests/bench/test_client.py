from __future__ import annotations

from typing import Any

import orjson
import pytest

from nim_async.bench.client import BenchClient, PreparedRequest, build_body
from nim_async.bench.metrics import RequestRecord


def test_build_body_has_task_prompt_image_and_streaming_fields() -> None:
    prepared = build_body(
        b"\xff\xd8abc",
        mime="image/jpeg",
        model="m",
        task_type="vqa",
        max_tokens=9,
        prompt="What colour?",
    )
    body = orjson.loads(prepared.body)
    assert body["model"] == "m"
    assert body["max_tokens"] == 9
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True
    content = body["messages"][-1]["content"]
    assert content[0]["image_url"]["url"] == "data:image/jpeg;base64,/9hhYmM="
    assert content[1]["text"] == "What colour?"
    assert prepared.encode_s >= 0
    no_eos = orjson.loads(
        build_body(
            b"x", mime="image/png", model="m", task_type="vqa", max_tokens=1, ignore_eos=False
        ).body
    )
    assert "ignore_eos" not in no_eos


@pytest.mark.parametrize(
    ("mode", "error", "chunks"),
    [
        ("reason", None, 5),
        ("503", "HTTP 503", 0),
        ("cut", "IncompleteStream", 5),
        ("error", "StreamError", 5),
    ],
)
async def test_send_records_timings_usage_and_errors(
    http_server: Any, mode: str, error: str | None, chunks: int
) -> None:
    async with BenchClient(http_server.url, max_connections=2) as client:
        record = RequestRecord(index=0, scheduled_start=0.0, start=0.0)
        body = orjson.dumps({"mode": mode})
        await client.send(PreparedRequest(body=body, encode_s=0.25), record)
    assert record.error == error
    assert record.chunks == chunks  # reasoning chunks count as token arrivals
    assert record.encode_s == 0.25
    assert record.request_bytes == len(body)
    assert record.end >= record.start > 0
    if mode == "reason":
        assert record.output_tokens == 5
        assert record.prompt_tokens == 7
        assert not record.usage_mismatch
        assert record.headers_time is not None
        assert record.ttft is not None
        assert record.ttft > 0


async def test_send_to_a_dead_port_records_connect_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with BenchClient(f"http://127.0.0.1:{port}") as client:
        record = await client.send(
            PreparedRequest(b"{}", 0.0), RequestRecord(index=0, scheduled_start=0.0, start=0.0)
        )
        assert record.error == "ConnectError"
        status, _ = await client.get_text("/v1/metrics")
        assert status == 0
