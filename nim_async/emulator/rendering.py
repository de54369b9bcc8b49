"""Bytes the emulator sends: vLLM-shaped errors, completions and SSE chunks. No IO."""

from __future__ import annotations

import time
from typing import Any

import orjson

from nim_async.emulator.answer import Job

__all__ = ["ChunkRenderer", "completion_body", "error_body", "usage"]

ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
"""``error.type`` per HTTP status, as vLLM names them."""

DONE = b"data: [DONE]\n\n"


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM 0.32 answers errors."""
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": ERROR_TYPES.get(status, "APIError"),
                "param": param,
                "code": status,
            }
        }
    )


def usage(prompt: int, completion: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def completion_body(job: Job, model: str) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object of ``job``."""
    return {
        "id": job.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(job.pieces),
                    "reasoning": None,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": job.finish_reason,
                "stop_reason": job.stop_reason,
            }
        ],
        "usage": {
            **usage(job.prompt_tokens, len(job.pieces)),
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        "prompt_logprobs": None,
    }


class ChunkRenderer:
    """SSE ``chat.completion.chunk`` lines of one job, built from pre-encoded parts.

    Args:
        job: The job being streamed.
        model_json: The served model name, JSON-encoded.
    """

    def __init__(self, job: Job, model_json: bytes) -> None:
        created = str(int(time.time())).encode()
        self._job = job
        self._head = (
            b'data: {"id":"' + job.request_id.encode() + b'","object":"chat.completion.chunk",'
            b'"created":' + created + b',"model":' + model_json + b',"choices":['
        )
        self._finish = orjson.dumps(job.finish_reason)
        self._stop_reason = orjson.dumps(job.stop_reason)

    def _tail(self, done: int) -> bytes:
        if not self._job.continuous_usage:
            return b"]}\n\n"
        return b'],"usage":' + orjson.dumps(usage(self._job.prompt_tokens, done)) + b"}\n\n"

    def role(self) -> bytes:
        """The first chunk: the assistant role with empty content."""
        return (
            self._head + b'{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}' + self._tail(0)
        )

    def token(self, piece: str, sent: int, *, last: bool) -> bytes:
        """A content chunk; the last one carries ``finish_reason`` and ``stop_reason``."""
        content = orjson.dumps(piece)
        if last:
            return (
                self._head + b'{"index":0,"delta":{"content":' + content
                + b'},"logprobs":null,"finish_reason":' + self._finish
                + b',"stop_reason":' + self._stop_reason + b"}" + self._tail(sent)
            )  # fmt: skip
        return (
            self._head + b'{"index":0,"delta":{"content":' + content
            + b'},"logprobs":null,"finish_reason":null}' + self._tail(sent)
        )  # fmt: skip

    def usage(self) -> bytes:
        """The final usage chunk (``stream_options.include_usage``), with empty choices."""
        job = self._job
        return (
            self._head[:-1]
            + b'[],"usage":'
            + orjson.dumps(usage(job.prompt_tokens, len(job.pieces)))
            + b"}\n\n"
        )
