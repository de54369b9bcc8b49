"""``POST /v1/chat/completions`` of the emulator: preprocess, queue, then generate on the clock.

Preprocessing (body validation, image fetch and scene analysis) happens first, like a real
server's, so it adds to the time to first token; then the request waits for a sequence slot;
then the first token is due ``ttft_ms`` later and the rest follow at the ITL
(:class:`~nim_async.emulator.timing.TokenPacer`). The metrics observe what was actually sent.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from nim_async.emulator.answer import Job, build_job
from nim_async.emulator.geometry import VisionFamily, image_tokens
from nim_async.emulator.rejection import RequestError, bad
from nim_async.emulator.rendering import DONE, ChunkRenderer, completion_body, error_body
from nim_async.emulator.state import ServerState
from nim_async.emulator.timing import (
    TokenPacer,
    drop_connection,
    first_token_delay,
    injected_failure,
    sleep_until,
)
from nim_async.emulator.validation import check_context, parse_request
from nim_async.emulator.video import requested_fps, video_prompt_tokens

__all__ = ["ChatEndpoint", "image_prompt_tokens"]

log = logging.getLogger("nim_async.emulator")

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_BATCH_BELOW = 0.0002  # seconds: a token due sooner than this joins the pending write


def image_prompt_tokens(
    size: tuple[int, int], max_pixels: int, family: VisionFamily = "qwen2.5-vl"
) -> int:
    """Prompt tokens of one image: one per cell after the family's resize, plus 2.

    A cell is 28×28 for Qwen2.5-VL and 32×32 for Qwen3-VL; the 2 are the vision start and end
    markers around the image's pad tokens.

    Args:
        size: ``(width, height)`` of the image as sent.
        max_pixels: Vision pixel budget.
        family: The vision processor.

    Raises:
        ValueError: for an aspect ratio the processor refuses (over 200).
    """
    return image_tokens(size[0], size[1], max_pixels, family) + 2


def error_response(
    state: ServerState, status: int, message: str, param: str | None = None
) -> web.Response:
    """A vLLM-shaped JSON error, counted in the metrics."""
    state.metrics.errors[status] = state.metrics.errors.get(status, 0) + 1
    return web.Response(
        status=status,
        body=error_body(status, message, param),
        headers={"Content-Type": "application/json"},
    )


class ChatEndpoint:
    """The chat-completions handler over a :class:`ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one chat-completion request."""
        st = self._state
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if not st.is_ready():
            return error_response(st, 503, "Service is not ready.")
        s = st.settings
        if injected_failure(s, st.rng):
            await request.read()
            return error_response(
                st,
                s.fail_status,
                f"injected failure (emulator --fail-rate {s.fail_rate:g}, "
                f"--fail-status {s.fail_status})",
            )
        try:
            job = await self.prepare(await request.read())
        except RequestError as exc:
            log.info("emulator: rejected request (%d): %s", exc.status, exc.message)
            return error_response(st, exc.status, exc.message, exc.param)
        except Exception:  # never crash the server on one request
            log.exception("emulator: internal error while preparing a request")
            return error_response(st, 500, "internal emulator error")
        prepared = loop.time()  # generation may start now; sending headers does not delay it
        st.metrics.prompt_tokens += job.prompt_tokens
        resp: web.StreamResponse | None = None
        if job.stream:
            # Headers go out once preprocessing is done, as vLLM's StreamingResponse does.
            resp = web.StreamResponse(headers=_SSE_HEADERS)
            try:
                await resp.prepare(request)
            except ConnectionError:
                return resp
        return await self._generate(request, resp, job, arrived, prepared)

    async def prepare(self, raw: bytes) -> Job:
        """Validate ``raw``, look at its images and answer it (the preprocessing).

        Raises:
            RequestError: for a request the emulator rejects.
        """
        s = self._state.settings
        req = parse_request(raw, s, self._state.fields)
        scenes = [await self._state.images.scene(url) for url in req.image_urls]
        videos = [await self._state.images.video(url) for url in req.video_urls]
        family, budget = s.vision_family, s.pixel_budget
        fps = requested_fps(req.media_io_kwargs, req.mm_processor_kwargs)
        prompt_tokens = req.text_tokens
        try:
            for sc in scenes:
                prompt_tokens += image_prompt_tokens(sc.size, budget, family)
            for info in videos:
                prompt_tokens += video_prompt_tokens(info, fps, budget, family)
        except ValueError as exc:
            raise bad(str(exc), "messages") from None
        limit = check_context(req, prompt_tokens, s.max_model_len)
        return build_job(req, scenes, s, prompt_tokens=prompt_tokens, limit=limit, videos=videos)

    async def _generate(
        self,
        request: web.Request,
        resp: web.StreamResponse | None,
        job: Job,
        arrived: float,
        prepared: float,
    ) -> web.StreamResponse:
        st = self._state
        loop = asyncio.get_running_loop()
        m = st.metrics
        slots = st.slots
        started = prepared  # the clock starts when preprocessing ends, unless it has to queue
        if slots is not None and slots.locked():
            m.waiting += 1
            try:
                await slots.acquire()
            finally:
                m.waiting -= 1
            started = loop.time()
        elif slots is not None:
            await slots.acquire()
        m.running += 1
        m.queue.observe(started - prepared)
        first_due = started + first_token_delay(st.settings, job.prompt_tokens)
        try:
            if resp is not None:
                return await self._stream(request, resp, job, arrived, first_due)
            return await self._complete(request, job, arrived, first_due)
        finally:
            m.running -= 1
            if slots is not None:
                slots.release()

    def _finish(self, job: Job, arrived: float, first: float, last: float) -> None:
        m = self._state.metrics
        now = asyncio.get_running_loop().time()
        n = len(job.pieces)
        m.generation_tokens += n
        m.ttft.observe(max(0.0, first - arrived))
        if n > 1:
            gap = max(0.0, (last - first) / (n - 1))
            m.itl.observe(gap, n - 1)
            m.tpot.observe(gap)
        m.e2e.observe(now - arrived)
        m.success[job.finish_reason] = m.success.get(job.finish_reason, 0) + 1

    def _abort(self, sent: int) -> None:
        m = self._state.metrics
        m.success["abort"] = m.success.get("abort", 0) + 1
        m.generation_tokens += sent

    async def _complete(
        self, request: web.Request, job: Job, arrived: float, first_due: float
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        s = self._state.settings
        n = len(job.pieces)
        itl = s.itl_ms / 1000.0
        cut = s.disconnect_after
        if cut is not None and n > cut:
            await sleep_until(loop, first_due + max(cut - 1, 0) * itl)
            self._abort(0)
            drop_connection(request, cut)
            return web.Response(status=200)
        await sleep_until(loop, first_due)
        first = loop.time()
        await sleep_until(loop, first + max(n - 1, 0) * itl)
        body = orjson.dumps(completion_body(job, s.served_model_name))
        self._finish(job, arrived, first, loop.time())
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        job: Job,
        arrived: float,
        first_due: float,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        s = self._state.settings
        render = ChunkRenderer(job, self._state.model_json)
        pieces = job.pieces or [""]
        last = len(pieces) - 1
        pacer = TokenPacer(first_due, s.itl_ms / 1000.0)
        cut = s.disconnect_after
        buf: list[bytes] = [render.role()]  # the role chunk travels with the first token
        sent = 0
        try:
            for i, piece in enumerate(pieces):
                if pacer.next_due - loop.time() > _BATCH_BELOW:
                    if buf and i > 0:
                        await resp.write(b"".join(buf))
                        buf.clear()
                    await sleep_until(loop, pacer.next_due)
                if cut is not None and i >= cut:
                    if buf:
                        await resp.write(b"".join(buf))
                    self._abort(sent)
                    drop_connection(request, cut)
                    return resp
                sent = i + 1 if job.pieces else 0
                buf.append(render.token(piece, sent, last=i == last))
                if i == last:
                    if job.include_usage:
                        buf.append(render.usage())
                    buf.append(DONE)
                if pacer.itl > 0 or i == last:
                    await resp.write(b"".join(buf))
                    buf.clear()
                    pacer.written(loop.time())
            await resp.write_eof()
        except ConnectionError:
            log.info("emulator: client went away mid-stream after %d tokens", sent)
            self._abort(sent)
            return resp
        first = pacer.first_written if pacer.first_written is not None else loop.time()
        self._finish(job, arrived, first, pacer.last_written or first)
        return resp
