r"""Server-Sent Events decoder: ``feed(bytes) -> events``, no IO.

Implements the event-stream format of the WHATWG HTML standard (section 9.2): fields
``data`` (multi-line), ``event``, ``id`` and ``retry``; comment lines starting with ``:``;
line endings CR, LF or CRLF; an optional UTF-8 byte order mark; and a chunk boundary at any
byte, including between the CR and LF of one CRLF. Event data is kept as ``bytes`` so a JSON
payload can go straight to ``orjson.loads`` without a decode/encode round trip.

The common case of an OpenAI-style stream (LF line endings, ``data: {...}`` lines) takes a
fast path; anything containing a CR takes the general path. Both give identical events.

The work is linear in the bytes fed: a line that arrives in many chunks is kept as a list of
pieces and joined once, when its end arrives, so a huge line costs one copy, not one per read.
An event (its data lines plus the line still open) larger than ``max_event_bytes`` raises
:class:`~nim_async.errors.ResponseTooLargeError` instead of growing without bound.

Example:
    >>> decoder = SSEDecoder()
    >>> [e.data for e in decoder.feed(b"data: hello\\n\\ndata: [DO")]
    [b'hello']
    >>> [e.data for e in decoder.feed(b"NE]\\n\\n")]
    [b'[DONE]']
"""

from __future__ import annotations

import re

from nim_async.errors import ResponseTooLargeError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "DONE", "SSEDecoder", "SSEEvent"]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
"""The largest event a decoder accepts unless told otherwise (a token delta is ~100 bytes)."""

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

    __slots__ = (
        "_data",
        "_data_len",
        "_event",
        "_id",
        "_max",
        "_open",
        "_open_len",
        "_retry",
        "_started",
    )

    def __init__(self, max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES) -> None:
        """Create a decoder.

        Args:
            max_event_bytes: The largest event to accept, counted as the raw bytes of its
                data lines (field name and line end included) plus the line still open;
                ``None`` for no limit.

        Raises:
            ValueError: ``max_event_bytes`` is not positive.
        """
        if max_event_bytes is not None and max_event_bytes <= 0:
            raise ValueError(f"max_event_bytes must be positive or None, got {max_event_bytes}")
        self._max = max_event_bytes
        self._open: list[bytes] = []  # the pieces of the line that has not ended yet
        self._open_len = 0
        self._started = False  # past a possible byte order mark
        self._data: list[bytes] = []
        self._data_len = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

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

        Raises:
            ResponseTooLargeError: The event being read grew past ``max_event_bytes``.
        """
        pieces = self._open
        if not self._started:
            head = b"".join([*pieces, chunk])
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._open = [head]
                self._open_len = len(head)
                return []
            self._started = True
            pieces = self._open = []
            self._open_len = 0
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if b"\n" not in chunk and b"\r" not in chunk and not (pieces and pieces[-1][-1:] == b"\r"):
            # The line is still open: keep the piece, copy nothing (linear in the bytes fed).
            pieces.append(chunk)
            self._open_len += len(chunk)
            self._check_size()
            return []
        if pieces:
            pieces.append(chunk)
            buf = b"".join(pieces)
        else:
            buf = bytes(chunk)
        events: list[SSEEvent] = []
        if b"\r" not in buf:
            lines = buf.split(b"\n")
            tail = lines.pop()
        else:
            hold = buf.endswith(b"\r")
            if hold:
                # A CR at the end may be the first half of a CRLF: keep the line (it is
                # complete) with its CR so the next chunk's LF joins it.
                buf = buf[:-1]
            lines = _LINE_END.split(buf)
            tail = lines.pop()
            if hold:
                tail += b"\r"
        self._open = [tail] if tail else []
        self._open_len = len(tail)
        # Hot loop: "data: ..." lines and blank lines inline; other lines in _line().
        data = self._data
        for line in lines:
            if line[:6] == b"data: ":
                data.append(line[6:])
                self._data_len += len(line) + 1
            elif line:
                self._line(line, events)
            elif data:
                value = data[0] if len(data) == 1 else b"\n".join(data)
                events.append(SSEEvent(value, self._event or "message", self._id, self._retry))
                data = self._data = []
                self._data_len = 0
                self._event = None
                self._retry = None
            else:
                self._event = None
                self._retry = None
        self._check_size()
        return events

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Decode one chunk and return only the data of each event it completed.

        The same events as :meth:`feed`, as their ``data`` alone (whatever their type), for a
        consumer that reads nothing else, such as an OpenAI-style chat stream. The whole
        one-line ``data: ...`` events in the chunk (what such servers send) are split out by
        one C call, with no per-line Python work and no :class:`SSEEvent` per event; the
        rest (an event begun in an earlier chunk, the unfinished one at the end, any other
        field, CR line endings) goes through :meth:`feed`.

        Args:
            chunk: The next bytes of the stream (any length, split anywhere).

        Returns:
            The data of the events completed by this chunk, in order.

        Raises:
            ResponseTooLargeError: The event being read grew past ``max_event_bytes``.
        """
        if not self._started and not self._open and len(chunk) >= len(_BOM):
            self._started = True  # the first chunk: past a byte order mark, if any
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if (
            not self._started
            or self._event is not None
            or self._retry is not None
            or chunk.find(b"\r") >= 0
            or (self._open and self._open[-1][-1:] == b"\r")
        ):
            return [event.data for event in self.feed(chunk)]
        datas: list[bytes] = []
        if self._open or self._data:
            # Finish the event an earlier chunk began; after a blank line the state is clean.
            first = chunk.find(b"\n\n") + 2
            if first < 2:
                return [event.data for event in self.feed(chunk)]
            datas += [event.data for event in self.feed(chunk[:first])]
            chunk = chunk[first:]
        end = chunk.rfind(b"\n\n") + 2  # the whole events end here (0: there are none)
        if end < 2:
            end = 0
        else:
            whole = chunk[:end] if end < len(chunk) else chunk
            if whole.startswith(b"data: "):
                # Split at every blank line followed by "data: ": if no newline is left in
                # the pieces, they were that many one-line "data: " events (one split, one
                # join, one memchr).
                pieces = whole[6:-2].split(b"\n\ndata: ")
                if b"".join(pieces).find(b"\n") < 0:
                    datas += pieces
                else:
                    datas += [event.data for event in self.feed(whole)]
            else:
                datas += [event.data for event in self.feed(whole)]
        if end < len(chunk):  # the event still open at the end
            datas += [event.data for event in self.feed(chunk[end:] if end else chunk)]
        return datas

    def _check_size(self) -> None:
        limit = self._max
        if limit is None or self._data_len + self._open_len <= limit:
            return
        self._open = []
        self._open_len = 0
        self._data = []
        self._data_len = 0
        raise ResponseTooLargeError(
            f"a server-sent event exceeded {limit} bytes; raise the limit "
            "(max_event_bytes) if such events are expected",
            limit=limit,
            what="server-sent event",
        )

    def close(self) -> list[SSEEvent]:
        """Finish the stream.

        Returns:
            Events completed by a final line that ended in a bare CR. An event still open at
            the end (no terminating blank line) is discarded, as the standard requires.
        """
        events: list[SSEEvent] = []
        buf = b"".join(self._open)
        self._open = []
        self._open_len = 0
        if buf.endswith(b"\r"):
            for line in _LINE_END.split(buf[:-1]):
                self._line(line, events)
        self._data = []
        self._data_len = 0
        self._event = None
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            self._data_len += len(line) + 1
            return
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEEvent(data, self._event or "message", self._id, self._retry))
            self._data = []
            self._data_len = 0
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
            self._data_len += len(line) + 1
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # any other field name is ignored, as the standard says
