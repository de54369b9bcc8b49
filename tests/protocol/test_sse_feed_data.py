"""SSEDecoder.feed_data: the events' data alone, the same as feed() gives, however split."""

from __future__ import annotations

import random

import pytest

from nim_async.errors import ResponseTooLargeError
from nim_async.protocol.sse import SSEDecoder


def _events(rng: random.Random, n: int) -> bytes:
    """A body mixing what OpenAI-style servers send with every other event-stream form."""
    parts: list[bytes] = []
    for i in range(n):
        kind = rng.random()
        payload = b'{"choices":[{"delta":{"content":"t%d"}}]}' % i
        if kind < 0.55:
            parts.append(b"data: " + payload + b"\n\n")
        elif kind < 0.6:
            parts.append(b"data: " + payload + b"\r\n\r\n")
        elif kind < 0.65:
            parts.append(b"data:" + payload + b"\r\r")
        elif kind < 0.7:
            parts.append(b"event: delta\ndata: " + payload + b"\n\n")
        elif kind < 0.75:
            parts.append(b"id: %d\ndata: " % i + payload + b"\n\n")
        elif kind < 0.8:
            parts.append(b": keep-alive\n\n")
        elif kind < 0.85:
            parts.append(b"data: first line\ndata: second\n\n")
        elif kind < 0.88:
            parts.append(b"retry: 100\ndata: x\n\n")
        elif kind < 0.91:
            parts.append(b"data: \n\n")  # an event whose data is empty
        elif kind < 0.94:
            parts.append(b"\n\n\n")  # blank lines with no event
        elif kind < 0.97:
            parts.append(b"data\n\n")  # a bare field name: one empty data line
        else:
            parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts)
    return (b"\xef\xbb\xbf" + body) if rng.random() < 0.2 else body


def _split(rng: random.Random, body: bytes) -> list[bytes]:
    chunks: list[bytes] = []
    i = 0
    while i < len(body):
        step = rng.choice([1, 2, 3, 7, 50, 200, 1000, len(body)])
        chunks.append(body[i : i + step])
        i += step
    return chunks


@pytest.mark.parametrize("seed", range(300))
def test_feed_data_equals_feed_for_any_stream_and_any_split(seed: int) -> None:
    rng = random.Random(seed)
    body = _events(rng, rng.randint(0, 40))
    chunks = _split(rng, body)
    reference, fast, whole = SSEDecoder(), SSEDecoder(), SSEDecoder()
    expected = [e.data for c in chunks for e in reference.feed(c)]
    expected += [e.data for e in reference.close()]
    got = [d for c in chunks for d in fast.feed_data(c)]
    got += [e.data for e in fast.close()]
    assert got == expected
    assert got == [e.data for e in whole.feed(body)] + [e.data for e in whole.close()]
    assert fast.last_event_id == reference.last_event_id


def test_an_openai_stream_cut_mid_event_keeps_every_token() -> None:
    event = b'data: {"choices":[{"delta":{"content":" tok"}}]}\n\n'
    body = event * 100 + b"data: [DONE]\n\n"
    decoder = SSEDecoder()
    datas: list[bytes] = []
    for i in range(0, len(body), 333):  # every read ends inside an event
        datas += decoder.feed_data(body[i : i + 333])
    assert len(datas) == 101
    assert datas[0] == b'{"choices":[{"delta":{"content":" tok"}}]}'
    assert datas[-1] == b"[DONE]"


def test_feed_data_keeps_the_size_limit_for_an_event_still_open() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed_data(b"data: ok\n\n") == [b"ok"]
    with pytest.raises(ResponseTooLargeError):
        decoder.feed_data(b"data: " + b"x" * 200)
