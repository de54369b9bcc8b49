"""StreamAccumulator.feed_data (the events' data) gives what feed (the events) gives."""

from __future__ import annotations

import orjson
import pytest

from nim_async.errors import StreamError
from nim_async.protocol.sse import SSEEvent
from nim_async.protocol.stream import BadChunkError, StreamAccumulator


def _chunk(delta: dict[str, object] | None = None, **extra: object) -> bytes:
    choice: dict[str, object] = {"index": 0, "delta": delta or {}}
    if "finish_reason" in extra:
        choice["finish_reason"] = extra.pop("finish_reason")
    return orjson.dumps({"model": "m", "choices": [choice], **extra})


BATCHES = [
    [_chunk({"role": "assistant", "content": ""})],  # vLLM's role chunk: no token
    [_chunk({"content": "Hel"}), _chunk({"content": "lo"})],
    [_chunk({"content": ""})],  # a token held back by the detokenizer: one arrival
    [_chunk({"reasoning_content": "think"}), _chunk({"reasoning": "more"})],
    [_chunk({"content": "a", "reasoning_content": "r"})],
    [_chunk({"content": None})],
    [orjson.dumps([1, 2]), orjson.dumps({"choices": []})],  # not a chunk: skipped
    [_chunk({}, finish_reason="stop"), _chunk({"content": ""}, finish_reason="length")],
    [orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})],
    [b"[DONE]"],
]


def _state(acc: StreamAccumulator) -> tuple[object, ...]:
    return (
        acc.pieces,
        acc.reasoning,
        acc.usage,
        acc.finish_reason,
        acc.model,
        acc.saw_done,
        acc.chunks,
        acc.arrivals,
    )


def test_feed_data_and_feed_agree_batch_by_batch() -> None:
    by_events, by_data = StreamAccumulator(), StreamAccumulator()
    for batch in BATCHES:
        tokens = by_events.feed([SSEEvent(d) for d in batch])
        assert by_data.feed_data(batch) == tokens
        assert _state(by_data) == _state(by_events)
    assert by_data.final() == by_events.final()
    # the values the accumulator gave before feed_data existed (checked against that code)
    assert by_data.text == "Helloa"
    assert by_data.reasoning == ["think", "more", "r"]
    assert by_data.arrivals == 6  # Hel, lo, the held-back "", think, more, a (with r)
    assert by_data.chunks == 13
    assert (by_data.finish_reason, by_data.model, by_data.saw_done) == ("length", "m", True)
    assert by_data.usage == {"prompt_tokens": 3, "completion_tokens": 4}


def test_a_bad_chunk_keeps_the_tokens_and_counts_before_it() -> None:
    acc = StreamAccumulator()
    with pytest.raises(BadChunkError) as info:
        acc.feed_data([_chunk({"content": "x"}), b"not json", _chunk({"content": "y"})])
    assert info.value.partial_text == "x"
    assert (acc.chunks, acc.arrivals, acc.pieces) == (2, 1, ["x"])


def test_an_error_event_mid_stream_is_a_stream_error_with_the_text_so_far() -> None:
    acc = StreamAccumulator()
    acc.feed_data([_chunk({"content": "partial"})])
    with pytest.raises(StreamError, match="overloaded") as info:
        acc.feed_data([orjson.dumps({"error": {"message": "overloaded"}})])
    assert info.value.partial_text == "partial"
