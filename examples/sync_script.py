"""A plain blocking script: NIMPredictor, the documented API, no asyncio in sight.

python examples/sync_script.py                      # against the embedded emulator
python examples/sync_script.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nim_async.cli.demo import sample_image
from nim_async.config import NIMSamplingParams
from nim_async.sync.predictor import NIMPredictor


@contextmanager
def emulator_in_thread() -> Iterator[str]:
    """Run the embedded emulator on its own event loop in a thread; yield its URL."""
    from nim_async.emulator import Emulator

    ready: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = []
    started = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        async with Emulator() as emulator:
            ready.append((emulator.url, asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the emulator did not start")
    url, loop, stop = ready[0]
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def run(url: str, workdir: Path) -> int:
    image_path = workdir / "shapes.png"
    sample_image().save(image_path)

    with NIMPredictor("cosmos-reason1-7b", task_type="phrase-grounding", base_url=url) as predictor:
        result = predictor(source=str(image_path))
        print("sentence:", result.sentence)
        for grounding in result.groundings:
            print(
                f"  {grounding.phrase}: {[[round(v) for v in b.pixels] for b in grounding.boxes]}"
            )
        result.draw(sample_image()).save(workdir / "shapes-annotated.png")

        print("streaming: ", end="")
        for token in predictor(source=str(image_path), stream=True):
            print(token, end="", flush=True)
        print()

    with NIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=url) as predictor:
        params = NIMSamplingParams(temperature=0.2, max_tokens=64, seed=1)
        answer = predictor(
            source=str(image_path), user_prompt="How many shapes are there?", sampling_params=params
        )
        print("answer:", answer.result.answer)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running NIM (default: start the emulator in-process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            return run(args.url, Path(tmp))
        with emulator_in_thread() as url:
            print(f"Using the embedded emulator at {url} (an emulator, not a model)")
            return run(url, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
