"""Score a folder of images with bounded concurrency; one JSON line per image.

``predict_many`` keeps at most ``--concurrency`` requests in flight, reads the file list lazily,
retries 429/5xx with backoff and records failures instead of stopping. The same job from the
shell: ``nim-async batch DIR --task vqa --prompt ... --out results.jsonl --resume``.

    python examples/batch_scoring.py                  # 40 generated images, embedded emulator
    python examples/batch_scoring.py --url http://127.0.0.1:8000 --images ./my-photos
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson

from nim_async.predict.batch import predict_many, result_record
from nim_async.predict.predictor import AsyncNIMPredictor


def make_images(folder: Path, count: int) -> None:
    from PIL import Image, ImageDraw

    colours = [(200, 30, 30), (30, 60, 200), (40, 170, 60), (255, 165, 0)]
    for i in range(count):
        image = Image.new("RGB", (320, 240), "white")
        draw = ImageDraw.Draw(image)
        for k in range(1 + i % 3):
            x = 20 + 95 * k
            draw.rectangle((x, 60, x + 70, 170), fill=colours[(i + k) % len(colours)])
        image.save(folder / f"img{i:04d}.png")


def images(folder: Path) -> Iterator[str]:
    """Lazily list the images: fine for a folder of a million files."""
    for path in sorted(folder.glob("*.png")):
        yield str(path)


async def score(url: str, folder: Path, out: Path, concurrency: int) -> int:
    ok = failed = 0
    async with AsyncNIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=url) as predictor:
        results = predict_many(
            predictor,
            images(folder),
            concurrency=concurrency,
            user_prompt="How many shapes are there?",
            retries=2,
        )
        with out.open("ab") as sink:
            async with contextlib.aclosing(results):
                async for result in results:
                    sink.write(orjson.dumps(result_record(result)) + b"\n")
                    sink.flush()
                    if result.ok:
                        ok += 1
                    else:
                        failed += 1
    print(f"{ok} scored, {failed} failed -> {out}")
    return 1 if failed else 0


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else Path(tmp)
        if not args.images:
            make_images(folder, args.count)
        out = Path(args.out) if args.out else Path(tmp) / "results.jsonl"
        async with contextlib.AsyncExitStack() as stack:
            url = args.url
            if url is None:
                from nim_async.emulator import Emulator

                emulator = await stack.enter_async_context(Emulator(ttft_ms=5, itl_ms=1))
                url = emulator.url
                print(f"Using the embedded emulator at {url} (an emulator, not a model)")
            status = await score(url, folder, out, args.concurrency)
        if not args.out:
            for line in out.read_text().splitlines()[:3]:
                print(line)
        return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running NIM (default: start the emulator in-process)")
    parser.add_argument("--images", help="folder of .png images (default: generate some)")
    parser.add_argument("--count", type=int, default=40, help="images to generate")
    parser.add_argument("--out", help="JSON Lines output (default: a temporary file)")
    parser.add_argument("--concurrency", type=int, default=8)
    sys.exit(asyncio.run(main(parser.parse_args())))
