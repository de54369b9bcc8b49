"""``nim-async predict``: one prediction, streaming its tokens to the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from PIL import Image, ImageOps, UnidentifiedImageError

from nim_async.cli.common import console, make_predictor, sampling_from_args
from nim_async.cli.demo import render_response
from nim_async.cli.parser import EXIT_OK
from nim_async.export import write_coco
from nim_async.results import PhraseGroundingResponse, PredictionResponse

__all__ = ["predict", "save_drawing"]


def _response_payload(source: str, response: PredictionResponse) -> dict[str, Any]:
    payload: dict[str, Any] = {"source": source}
    payload.update(response.model_dump(mode="json"))
    payload["result"] = response.plain_result
    return payload


def save_drawing(source: str, response: PredictionResponse, out: Path) -> Path:
    """Draw a phrase-grounding response onto its local image file and save it.

    Args:
        source: Path of the image the prediction was made on.
        response: The prediction (must be phrase grounding).
        out: Where to write the picture (format from the suffix).

    Returns:
        ``out``.

    Raises:
        ValueError: when the response has no boxes to draw or the image is not a local file.
    """
    if not isinstance(response, PhraseGroundingResponse):
        raise ValueError("--draw needs --task phrase-grounding (only groundings have boxes)")
    if "://" in source:
        raise ValueError("--draw needs a local image file, not a URL")
    try:
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot open {source} to draw on: {exc}") from None
    try:
        response.draw(image).save(out)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot write {out}: {exc}") from None
    return out


def _check_image_source(source: str) -> None:
    if "://" not in source and not Path(source).is_file():
        raise ValueError(f"no such image file: {source}")


async def predict(args: argparse.Namespace) -> int:
    """Run ``nim-async predict IMAGE``: stream the tokens, then a table (or ``--json``).

    Args:
        args: Parsed arguments.

    Returns:
        The exit status.
    """
    sampling = sampling_from_args(args)
    source: str = args.image
    _check_image_source(source)
    if (args.draw or args.coco) and args.task != "phrase-grounding":
        option = "--draw" if args.draw else "--coco"
        raise ValueError(f"{option} needs --task phrase-grounding (only groundings have boxes)")
    async with make_predictor(args, task=args.task) as predictor:
        if args.json or args.no_stream:
            response = await predictor(source, user_prompt=args.prompt, sampling_params=sampling)
        else:
            async with predictor.stream(
                source, user_prompt=args.prompt, sampling_params=sampling
            ) as stream:
                async for token in stream:
                    sys.stdout.write(token)
                    sys.stdout.flush()
                response = await stream.get_final_response()
            sys.stdout.write("\n")
    if args.json:
        sys.stdout.write(orjson.dumps(_response_payload(source, response)).decode() + "\n")
    else:
        render_response(console(), response)
    if args.draw:
        out = save_drawing(source, response, Path(args.draw))
        if not args.json:
            console().print(f"Annotated image written to [bold]{out}[/]")
    if args.coco:
        write_coco([(source, response)], Path(args.coco))
    return EXIT_OK
