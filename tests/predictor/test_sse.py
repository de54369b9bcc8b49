"""The SSE decoder: the event-stream format, chunk boundaries anywhere, and property tests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nim_async.protocol.sse import DONE, SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def test_openai_style_stream() -> None:
    body = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    events = decode(body)
    assert [e.data for e in events] == [b'{"a": 1}', b'{"b": 2}', DONE]
    assert all(e.event == "message" for e in events)


def test_multiline_data_comments_event_id_retry() -> None:
    body = (
        b": a comment\n"
        b"event: update\n"
        b"id: 7\n"
        b"retry: 1500\n"
        b"data: first\n"
        b"data:second\n"
        b"data\n"
        b"\n"
        b"data: next\n"
        b"\n"
    )
    first, second = decode(body)
    assert first == SSEEvent(b"first\nsecond\n", "update", "7", 1500)
    assert first.text == "first\nsecond\n"
    # the event type resets, the last event id persists
    assert second == SSEEvent(b"next", "message", "7", None)


def test_line_endings_cr_lf_crlf_mixed() -> None:
    for sep in (b"\n", b"\r", b"\r\n"):
        body = b"data: x" + sep + b"data: y" + sep + sep + b"data: z" + sep + sep
        assert [e.data for e in decode(body)] == [b"x\ny", b"z"], sep
    mixed = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert [e.data for e in decode(mixed)] == [b"a\nb\nc"]


def test_crlf_split_between_cr_and_lf() -> None:
    assert [e.data for e in decode(b"data: a\r", b"\n\r", b"\n")] == [b"a"]
    # a bare CR at the very end of the stream still ends the line
    assert [e.data for e in decode(b"data: a\r\r")] == [b"a"]


def test_unterminated_event_is_discarded_and_blank_events_are_not_dispatched() -> None:
    assert decode(b"data: a\n\ndata: partial") == [SSEEvent(b"a")]
    assert decode(b"event: x\n\n: only a comment\n\n") == []


def test_bom_is_stripped_even_when_split() -> None:
    assert [e.data for e in decode(b"\xef\xbb", b"\xbfdata: x\n\n")] == [b"x"]


def test_unknown_fields_ignored_and_id_with_nul_ignored() -> None:
    events = decode(b"foo: bar\nid: a\x00b\nretry: soon\ndata: x\n\n")
    assert events == [SSEEvent(b"x", "message", None, None)]


def test_space_after_colon_removed_once() -> None:
    assert [e.data for e in decode(b"data:  two spaces\n\n")] == [b" two spaces"]


# ---------------------------------------------------------------- property tests

_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=20,
)
_event = st.fixed_dictionaries(
    {
        "lines": st.lists(_text, min_size=1, max_size=4),
        "event": st.none() | _text.filter(lambda s: s != ""),
        "id": st.none() | _text,
        "comment": st.none() | _text,
    }
)


@st.composite
def _stream(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    events = draw(st.lists(_event, max_size=8))
    bom = draw(st.booleans())
    out = bytearray(b"\xef\xbb\xbf" if bom else b"")
    expected: list[SSEEvent] = []
    last_id: str | None = None

    def newline(after_cr_ok: bool = True) -> bytes:
        # an empty line right after a bare CR must not start with LF (that would be one CRLF)
        choices = (
            [b"\n", b"\r", b"\r\n"]
            if after_cr_ok or not out.endswith(b"\r")
            else [
                b"\r",
                b"\r\n",
            ]
        )
        return draw(st.sampled_from(choices))

    for ev in events:
        if ev["comment"] is not None:
            out += b":" + ev["comment"].encode() + newline()
        if ev["event"] is not None:
            out += b"event: " + ev["event"].encode() + newline()
        if ev["id"] is not None:
            out += b"id: " + ev["id"].encode() + newline()
            last_id = ev["id"]
        for line in ev["lines"]:
            out += b"data: " + line.encode() + newline()
        out += newline(after_cr_ok=False)
        data = "\n".join(ev["lines"]).encode()
        expected.append(SSEEvent(data, ev["event"] or "message", last_id, None))
    return bytes(out), expected


@settings(max_examples=300, deadline=None)
@given(_stream(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_split_gives_the_same_events(
    stream: tuple[bytes, list[SSEEvent]], cuts: list[int]
) -> None:
    body, expected = stream
    assert decode(body) == expected
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode(*chunks) == expected


@settings(max_examples=200, deadline=None)
@given(_stream())
def test_byte_by_byte(stream: tuple[bytes, list[SSEEvent]]) -> None:
    body, expected = stream
    assert decode(*(body[i : i + 1] for i in range(len(body)))) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_arbitrary_bytes_never_raise_and_split_invariant(data: bytes, cuts: list[int]) -> None:
    whole = decode(data)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode(*chunks) == whole
