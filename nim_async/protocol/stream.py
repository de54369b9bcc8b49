"""An IO-free accumulator for a streamed chat completion.

Feed it the SSE events of one response (:class:`~nim_async.protocol.sse.SSEDecoder` output); it
returns the content deltas of each batch and keeps the reasoning, usage, finish reason and model.
:meth:`StreamAccumulator.final` returns what was accumulated. The predictor's stream and the
benchmark client both read chunks through it, so there is one chunk parser.

Hot path: ``orjson.loads`` per event and one path of plain dict lookups per chunk; no object per
chunk and no per-token work beyond appending the delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from nim_async.errors import StreamError
from nim_async.protocol.sse import DONE, SSEEvent
from nim_async.results import Usage

__all__ = ["BadChunkError", "StreamAccumulator", "StreamResult", "parse_completion", "usage_from"]


class BadChunkError(StreamError):
    """Raised when a stream event is not JSON (the server or a proxy broke the stream)."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What a finished stream carried.

    Attributes:
        content: The joined content deltas.
        reasoning: The joined reasoning deltas (``reasoning_content`` / ``reasoning``), or
            ``None`` when the server sent none.
        usage: The server's ``usage`` object (last one seen), if any.
        finish_reason: The last ``finish_reason`` seen, if any.
        model: The ``model`` of the first chunk that named one.
        saw_done: Whether the ``[DONE]`` sentinel arrived.
    """

    content: str
    reasoning: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    model: str | None
    saw_done: bool

    @property
    def complete(self) -> bool:
        """Whether the stream ended properly (a finish reason or ``[DONE]``)."""
        return self.saw_done or self.finish_reason is not None


class StreamAccumulator:
    """Accumulates one streamed chat completion from parsed SSE events.

    Attributes:
        pieces: The content deltas so far, in order.
        reasoning: The reasoning deltas so far.
        usage: The last ``usage`` object seen.
        finish_reason: The last finish reason seen.
        model: The model name the server reported.
        saw_done: Whether ``[DONE]`` arrived.
        chunks: Number of data events other than ``[DONE]``.
        arrivals: Number of chunks that carried a token (token arrivals): content or
            reasoning, or an empty ``content`` that is not the role chunk (vLLM's ``role``
            chunk) nor an end chunk (``finish_reason`` set); vLLM streams a token whose text
            its detokenizer holds back (part of a UTF-8 character) as ``content: ""``.
    """

    __slots__ = (
        "arrivals",
        "chunks",
        "finish_reason",
        "model",
        "pieces",
        "reasoning",
        "saw_done",
        "usage",
    )

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.reasoning: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.saw_done = False
        self.chunks = 0
        self.arrivals = 0

    @property
    def text(self) -> str:
        """The content so far."""
        return "".join(self.pieces)

    def feed(self, events: list[SSEEvent]) -> list[str]:
        """Read a batch of events (one network read) and return its content deltas.

        Args:
            events: SSE events in arrival order.

        Returns:
            The non-empty content deltas of this batch (also appended to :attr:`pieces`).

        Raises:
            BadChunkError: an event is not JSON.
            StreamError: the server sent an error event mid-stream (``partial_text`` holds the
                content so far).
        """
        return self.feed_data([event.data for event in events])

    def feed_data(self, datas: list[bytes]) -> list[str]:
        """:meth:`feed` for the events' data alone (``SSEDecoder.feed_data`` output).

        Args:
            datas: The data of each SSE event, in arrival order.

        Returns:
            The non-empty content deltas of this batch (also appended to :attr:`pieces`).

        Raises:
            BadChunkError: an event is not JSON.
            StreamError: the server sent an error event mid-stream (``partial_text`` holds the
                content so far).
        """
        tokens: list[str] = []
        loads = orjson.loads
        chunks = arrivals = 0  # written back once, also when an error ends the batch
        try:
            for data in datas:
                if data == DONE:
                    self.saw_done = True
                    continue
                chunks += 1
                try:
                    obj = loads(data)
                except orjson.JSONDecodeError:
                    self.pieces.extend(tokens)
                    raise BadChunkError(
                        f"the stream carried an event that is not JSON: {data[:200]!r}",
                        partial_text=self.text,
                    ) from None
                if type(obj) is not dict:
                    continue
                choices = obj.get("choices")
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta")
                    reason = choice.get("finish_reason")
                    if delta:
                        content = delta.get("content")
                        if content and len(delta) == 1:  # the common token chunk
                            tokens.append(content)
                            arrivals += 1
                        else:
                            arrivals += self._delta(delta, content, reason, tokens)
                    if reason:
                        self.finish_reason = reason
                elif "error" in obj or obj.get("object") == "error":
                    self.pieces.extend(tokens)
                    err = obj.get("error", obj)
                    message = err.get("message") if isinstance(err, dict) else err
                    raise StreamError(
                        f"the server reported an error mid-stream: {message}",
                        partial_text=self.text,
                    )
                usage = obj.get("usage")
                if usage:
                    self.usage = usage
                if self.model is None:
                    self.model = obj.get("model")
        finally:
            self.chunks += chunks
            self.arrivals += arrivals
        if tokens:
            self.pieces.extend(tokens)
        return tokens

    def _delta(
        self, delta: dict[str, Any], content: object, reason: object, tokens: list[str]
    ) -> int:
        # A delta other than {"content": "..."}: content with other keys, reasoning, the
        # role chunk, an empty content. Returns how many token arrivals it counts for.
        arrivals = 0
        if content:
            tokens.append(content)  # type: ignore[arg-type]
            arrivals = 1
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self.reasoning.append(reasoning)
            if not content:
                arrivals = 1
        elif content == "" and "role" not in delta and not reason:
            # a token whose text the server's detokenizer holds back (part of a UTF-8
            # character): vLLM streams it as content "", one chunk per token
            arrivals = 1
        return arrivals

    def final(self) -> StreamResult:
        """What the stream carried so far (call after the body ended)."""
        return StreamResult(
            content="".join(self.pieces),
            reasoning="".join(self.reasoning) or None,
            usage=self.usage,
            finish_reason=self.finish_reason,
            model=self.model if isinstance(self.model, str) else None,
            saw_done=self.saw_done,
        )


def parse_completion(body: bytes) -> StreamResult:
    """Read a non-streamed chat completion into the same result a stream gives.

    Args:
        body: The JSON body of the answer.

    Raises:
        ValueError: the body is not an OpenAI chat completion (the message shows its start).
    """
    try:
        data = orjson.loads(body)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        finish_reason = choice.get("finish_reason")
        usage = data.get("usage")
        model = data.get("model")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"the server's answer is not an OpenAI chat completion: {body[:300]!r}"
        ) from exc
    return StreamResult(
        content=content if isinstance(content, str) else str(content),
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        usage=usage if isinstance(usage, dict) else None,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        model=model if isinstance(model, str) else None,
        saw_done=True,
    )


def usage_from(data: dict[str, Any] | None) -> Usage | None:
    """The :class:`~nim_async.results.Usage` of a server's ``usage`` object (``None`` if unusable).

    Args:
        data: The ``usage`` object of an answer or of a stream's last chunk.
    """
    if not data:
        return None
    try:
        return Usage(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            total_tokens=int(data.get("total_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None
