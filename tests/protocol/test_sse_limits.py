"""The SSE decoder's bounds: a cap on one event, and long lines fed in many pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nim_async.errors import NIMPredictionError, ResponseTooLargeError
from nim_async.protocol.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder


def test_a_line_in_many_pieces_is_one_event() -> None:
    decoder = SSEDecoder()
    payload = b"x" * 100_000
    line = b"data: " + payload
    events = []
    for i in range(0, len(line), 7):
        events.extend(decoder.feed(line[i : i + 7]))
    assert events == []
    events.extend(decoder.feed(b"\n\n"))
    assert [e.data for e in events] == [payload]


def test_an_open_line_over_the_cap_raises_naming_the_cap() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: ")
    for _ in range(99):
        decoder.feed(b"y" * 10)  # no newline ever comes
    with pytest.raises(ResponseTooLargeError) as info:
        decoder.feed(b"y" * 10)
    assert info.value.limit == 1000
    assert info.value.what == "server-sent event"
    assert "1000 bytes" in str(info.value)
    assert isinstance(info.value, NIMPredictionError)


def test_many_data_lines_over_the_cap_raise() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    for _ in range(17):
        decoder.feed(b"data: " + b"z" * 50 + b"\n")  # one event that never ends: 57 bytes a line
    with pytest.raises(ResponseTooLargeError):
        decoder.feed(b"data: " + b"z" * 50 + b"\n")


def test_events_under_the_cap_pass_and_the_cap_is_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    events = []
    for _ in range(100):
        events.extend(decoder.feed(b"data: " + b"a" * 50 + b"\n\n"))
    assert len(events) == 100


def test_no_cap_and_bad_cap() -> None:
    decoder = SSEDecoder(max_event_bytes=None)
    decoder.feed(b"data: " + b"b" * (DEFAULT_MAX_EVENT_BYTES + 10))
    assert [e.data[:3] for e in decoder.feed(b"\n\n")] == [b"bbb"]
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSEDecoder(max_event_bytes=0)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=60))
def test_the_cap_is_exact_when_fed_byte_by_byte(limit: int, step: int) -> None:
    """Raw bytes count: ``data:`` (5), the value, the line end (1).

    Fed a byte at a time, an event of exactly the cap passes and one byte more raises; fed in
    larger chunks, an event within the cap never raises (the check runs after each chunk).
    """
    for size, ok in ((limit, True), (limit + 1, False)):
        body = b"data:" + b"q" * size + b"\n\n"
        for chunk_size in (1, step):
            decoder = SSEDecoder(max_event_bytes=limit + 6)
            try:
                got = []
                for i in range(0, len(body), chunk_size):
                    got.extend(decoder.feed(body[i : i + chunk_size]))
            except ResponseTooLargeError:
                assert not ok, (limit, size, chunk_size)
            else:
                assert ok or chunk_size > 1, (limit, size, chunk_size)
                assert [len(e.data) for e in got] == [size]
