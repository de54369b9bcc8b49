"""Stream tokens as they arrive, then get the parsed result and the timings.

python examples/streaming.py                      # against the embedded emulator
python examples/streaming.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from nim_async.cli.demo import sample_image
from nim_async.config import NIMSamplingParams
from nim_async.predict.predictor import AsyncNIMPredictor


async def main(url: str | None) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            from nim_async.emulator import Emulator

            emulator = await stack.enter_async_context(Emulator(ttft_ms=50, itl_ms=5))
            url = emulator.url
            print(f"Using the embedded emulator at {url} (an emulator, not a model)")
        predictor = await stack.enter_async_context(
            AsyncNIMPredictor("cosmos-reason1-7b", task_type="phrase-grounding", base_url=url)
        )
        start = time.perf_counter()
        first: float | None = None
        pieces = 0
        params = NIMSamplingParams(temperature=0.0, max_tokens=512)
        async with predictor.stream(sample_image(), sampling_params=params) as stream:
            async for token in stream:
                if first is None:
                    first = time.perf_counter() - start
                pieces += 1
                print(token, end="", flush=True)
            result = await stream.get_final_response()
        print()
        total = time.perf_counter() - start
        print(f"{pieces} pieces; first after {first or 0:.3f} s; done after {total:.3f} s")
        print("sentence:", result.result.sentence)
        print("phrases:", [g.phrase for g in result.result.groundings])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running NIM (default: start the emulator in-process)")
    sys.exit(asyncio.run(main(parser.parse_args().url)))
