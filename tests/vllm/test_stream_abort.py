"""Breaking out of a stream aborts the request on the real server.

A streamed prediction (public API: ``AsyncNIMPredictor.stream``) asks for far more tokens than it
reads (``ignore_eos``, so only ``max_tokens`` could end it: about 20 s of generation on this CPU
server). After a few tokens the test breaks out of the stream; the client must close the
connection, and vLLM must abort the request: its ``vllm:num_requests_running`` gauge returns to 0
within a few seconds, and ``vllm:generation_tokens_total`` stops growing far short of
``max_tokens``.
The gauge is server-wide: the test assumes nobody else is generating on this server meanwhile
(true in CI, where the suite runs serially).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from PIL import Image

from nim_async import AsyncNIMPredictor, NIMSamplingParams

MAX_TOKENS = 2500
ABORT_WITHIN_S = 5.0


def _gauge(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if label in m.group(1):
            total += float(m.group(2))
    return total


async def _scrape(client: httpx.AsyncClient) -> tuple[float, float, float]:
    """Return (running requests, generated tokens, requests finished at max_tokens)."""
    text = (await client.get("/metrics")).text
    return (
        _gauge(text, "vllm:num_requests_running"),
        _gauge(text, "vllm:generation_tokens_total"),
        _gauge(text, "vllm:request_success_total", 'finished_reason="length"'),
    )


async def test_break_out_of_stream_aborts_on_server(vllm_server: Any) -> None:
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    params = NIMSamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, temperature=1.0)
    async with (
        httpx.AsyncClient(base_url=vllm_server.url, timeout=10.0) as metrics,
        AsyncNIMPredictor(
            model_name=vllm_server.model, task_type="vqa", base_url=vllm_server.url
        ) as predictor,
    ):
        _, generated_before, length_before = await _scrape(metrics)
        tokens: list[str] = []
        async with predictor.stream(image, "Describe it.", sampling_params=params) as stream:
            async for token in stream:
                tokens.append(token)
                if len(tokens) >= 5:
                    break
            running, _, _ = await _scrape(metrics)
            assert running >= 1, "the request was not running on the server while streaming"
        broke_at = time.monotonic()
        assert len(tokens) == 5

        running, _, _ = await _scrape(metrics)
        while running > 0 and time.monotonic() - broke_at < ABORT_WITHIN_S:
            await asyncio.sleep(0.1)
            running, _, _ = await _scrape(metrics)
        took = time.monotonic() - broke_at
        assert running == 0, f"vllm:num_requests_running still {running} after {took:.1f}s"

        # and it stays stopped: no more tokens, and it never finished at max_tokens.
        # (vLLM 0.32 counts a client-side abort in neither request_success_total{abort} nor
        # its log at the default settings; the token counter is the witness.)
        _, generated, length = await _scrape(metrics)
        await asyncio.sleep(1.0)
        _, generated_later, length_later = await _scrape(metrics)
        assert generated_later == generated, "the server kept generating after the abort"
        assert generated - generated_before < MAX_TOKENS // 10, generated - generated_before
        assert length_later == length == length_before
