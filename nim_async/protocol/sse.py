r"""Server-Sent Events decoder: ``feed(bytes) -> events``, no IO.

Implements the event-stream format of the WHATWG HTML standard (section 9.2): fields
``data`` (multi-line), ``event``, ``id`` and ``retry``; comment lines starting with ``:``;
line endings CR, LF or CRLF; an optional UTF-8 byte order mark; and a chunk boundary at any
byte, including between the CR and LF of one CRLF. Event data is kept as ``bytes`` so a JSON
payload can go straight to ``orjson.loads`` without a decode/encode round trip.

The common case of an OpenAI-style stream (LF line endings, ``data: {...}`` lines) takes a
fast path; anything containing a CR takes the general path. Both give identical events.

Example:
    >>> decoder = SSEDecoder()
    >>> [e.data for e in decoder.feed(b"data: hello\\n\\ndata: [DO")]
    [b'hello']
    >>> [e.data for e in decoder.feed(b"NE]\\n\\n")]
    [b'[DONE]']
"""

from __future__ import annotations

import re

__all__ = ["DONE", "SSEDecoder", "SSEEvent"]

DONE = b"[DONE]"
"""The data of the sentinel event that ends an OpenAI-style stream."""

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEEvent:
    r"""One dispatched event.

    Attributes:
        data: The event data; several ``data`` lines are joined with ``\\n``.
        event: The event type (``"message"`` unless an ``event:`` field set it).
        id: The last event id seen so far in the stream, or ``None``.
        retry: The reconnection time in milliseconds, when this event set one.
    """

    __slots__ = ("data", "event", "id", "retry")

    def __init__(
        self,
        data: bytes,
        event: str = "message",
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    @property
    def text(self) -> str:
        """The data decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.data, self.event, self.id, self.retry) == (
            other.data,
            other.event,
            other.id,
            other.retry,
        )

    def __hash__(self) -> int:
        return hash((self.data, self.event, self.id, self.retry))

    def __repr__(self) -> str:
        return (
            f"SSEEvent(data={self.data!r}, event={self.event!r}, id={self.id!r}, "
            f"retry={self.retry!r})"
        )


class SSEDecoder:
    """Incremental event-stream decoder.

    Feed it the bytes of a response body in chunks of any size; each call returns the events
    completed by that chunk. Call :meth:`close` at the end of the body: per the standard, an
    event that was not terminated by a blank line is discarded.
    """

    __slots__ = ("_buf", "_data", "_event", "_id", "_retry", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False

    @property
    def last_event_id(self) -> str | None:
        """The last event id the stream set, or ``None``."""
        return self._id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode one chunk of the body.

        Args:
            chunk: The next bytes of the stream (any length, split anywhere).

        Returns:
            The events completed by this chunk, in order (often empty).
        """
        buf = self._buf + chunk if self._buf else bytes(chunk)
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        events: list[SSEEvent] = []
        if b"\r" not in buf:
            lines = buf.split(b"\n")
            self._buf = lines.pop()
        else:
            hold = buf.endswith(b"\r")
            if hold:
                # A CR at the end may be the first half of a CRLF: keep the line (it is
                # complete) with its CR so the next chunk's LF joins it.
                buf = buf[:-1]
            lines = _LINE_END.split(buf)
            tail = lines.pop()
            if hold:
                self._buf = tail + b"\r"
            else:
                self._buf = tail
        # Hot loop: "data: ..." lines and blank lines inline; other lines in _line().
        data = self._data
        for line in lines:
            if line[:6] == b"data: ":
                data.append(line[6:])
            elif line:
                self._line(line, events)
            elif data:
                value = data[0] if len(data) == 1 else b"\n".join(data)
                events.append(SSEEvent(value, self._event or "message", self._id, self._retry))
                data = self._data = []
                self._event = None
                self._retry = None
            else:
                self._event = None
                self._retry = None
        return events

    def close(self) -> list[SSEEvent]:
        """Finish the stream.

        Returns:
            Events completed by a final line that ended in a bare CR. An event still open at
            the end (no terminating blank line) is discarded, as the standard requires.
        """
        events: list[SSEEvent] = []
        buf, self._buf = self._buf, b""
        if buf.endswith(b"\r"):
            for line in _LINE_END.split(buf[:-1]):
                self._line(line, events)
        self._data = []
        self._event = None
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            return
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEEvent(data, self._event or "message", self._id, self._retry))
            self._data = []
            self._event = None
            self._retry = None
            return
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":  # a bare "data" line: an empty data line
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # any other field name is ignored, as the standard says
