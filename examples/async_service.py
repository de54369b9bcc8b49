"""An async service that shares one AsyncNIMPredictor across concurrent requests.

A web handler (FastAPI, aiohttp, ...) would call ``VisionService.describe`` per request; here
eight "requests" arrive at once. The predictor holds one pooled HTTP client, so concurrent
calls reuse connections instead of opening one each.

    python examples/async_service.py                      # against the embedded emulator
    python examples/async_service.py --url http://127.0.0.1:8000   # against a real NIM
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys

from nim_async import errors
from nim_async.cli.demo import sample_image
from nim_async.predict.predictor import AsyncNIMPredictor


class VisionService:
    """Owns one predictor for its whole life: open at startup, close at shutdown."""

    def __init__(self, base_url: str) -> None:
        self._predictor = AsyncNIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=base_url)

    async def start(self) -> None:
        await self._predictor.__aenter__()

    async def stop(self) -> None:
        await self._predictor.aclose()

    async def describe(self, image: bytes, question: str) -> dict[str, object]:
        """One request: answer a question about an uploaded image."""
        try:
            response = await self._predictor(image, user_prompt=question)
        except errors.MediaError as exc:
            return {"status": 400, "error": str(exc)}
        except errors.NIMPredictionError as exc:
            return {"status": 502, "error": str(exc)}
        return {"status": 200, "answer": response.plain_result}


async def main(url: str | None) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            from nim_async.emulator import Emulator

            emulator = await stack.enter_async_context(Emulator())
            url = emulator.url
            print(f"Using the embedded emulator at {url} (an emulator, not a model)")
        service = VisionService(url)
        await service.start()
        stack.push_async_callback(service.stop)

        buffer = io.BytesIO()
        sample_image().save(buffer, format="PNG")
        upload = buffer.getvalue()
        questions = ["How many shapes are there?", "What colors are the shapes?"] * 4
        replies = await asyncio.gather(*(service.describe(upload, q) for q in questions))
        for question, reply in zip(questions, replies, strict=True):
            print(f"{question!r} -> {reply}")
        bad = await service.describe(b"not an image", "What is this?")
        print(f"an invalid upload -> {bad}")
        return 0 if all(r["status"] == 200 for r in replies) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running NIM (default: start the emulator in-process)")
    sys.exit(asyncio.run(main(parser.parse_args().url)))
