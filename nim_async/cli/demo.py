"""``nim-async demo``: the whole product on a laptop, with something to look at.

Without a URL it starts the embedded emulator in-process (and says so: it is an emulator, a test
double that reads solid colour regions with Pillow, not a model), deploys nothing, draws a sample
image of coloured shapes, runs phrase grounding while streaming the tokens to the terminal, asks
a VQA question, prints the results as tables and writes the annotated image. With a URL the same
steps run against that NIM.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from nim_async.cli.parser import DEFAULT_MODEL

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from nim_async.results import PredictionResponse

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OUT",
    "demo",
    "render_response",
    "run_demo",
    "sample_image",
]

DEFAULT_OUT = Path("nim-async-demo.png")
EMULATOR_NOTICE = (
    "No --url given: running against the embedded NIM [bold]emulator[/bold] at {url}.\n"
    "The emulator is a test double, [bold]not a model[/bold]: it finds solid colour regions "
    "with Pillow and answers in the NIM API's shape. Nothing was deployed.\n"
    "Point --url at a real NIM (see `nim-async deploy`) for a model's answers."
)


def sample_image(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Draw the demo's sample picture: coloured shapes on white.

    Args:
        size: ``(width, height)`` in pixels.

    Returns:
        An RGB image.
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))

    draw.rectangle(box(0.06, 0.10, 0.38, 0.52), fill=(200, 30, 30))
    draw.ellipse(box(0.52, 0.08, 0.80, 0.45), fill=(30, 60, 200))
    draw.rectangle(box(0.12, 0.66, 0.56, 0.90), fill=(40, 170, 60))
    draw.ellipse(box(0.70, 0.62, 0.86, 0.84), fill=(255, 165, 0))
    return image


def render_response(console: Console, response: PredictionResponse) -> None:
    """Print a prediction as a rich table (phrases and boxes, or the answer).

    Args:
        console: Where to print.
        response: The prediction.
    """
    from rich.table import Table

    from nim_async.results import PhraseGroundingResponse

    if isinstance(response, PhraseGroundingResponse):
        console.print(f"[bold]Sentence:[/] {response.sentence}")
        table = Table(title="Phrase grounding (boxes in original-image pixels)")
        table.add_column("phrase")
        table.add_column("boxes [xmin, ymin, xmax, ymax]")
        for grounding in response.groundings:
            boxes = "; ".join(
                "[" + ", ".join(f"{v:.0f}" for v in box.pixels) + "]" for box in grounding.boxes
            )
            table.add_row(grounding.phrase, boxes or "-")
        console.print(table)
    else:
        table = Table(title=response.task_type)
        table.add_column("prompt")
        table.add_column("answer")
        table.add_row(response.prompt, str(response.plain_result))
        console.print(table)


async def run_demo(
    *,
    url: str | None = None,
    out: Path = DEFAULT_OUT,
    model: str = DEFAULT_MODEL,
    question: str = "How many shapes are there?",
    image: Path | None = None,
    console: Console | None = None,
) -> int:
    """Run the demo: grounding (streamed) and VQA on one image, tables, annotated picture.

    Args:
        url: A running NIM; ``None`` starts the embedded emulator in-process.
        out: Where to write the annotated image.
        model: Served model name.
        question: The VQA question.
        image: An image file to use instead of the generated sample.
        console: Where to print (default: stdout).

    Returns:
        The exit status (0).

    Raises:
        NIMError: when the server cannot be reached or answers with an error.
        ValueError: when ``image`` cannot be read or ``out`` cannot be written.
    """
    from rich.console import Console

    from nim_async.results import PhraseGroundingResponse

    console = console or Console(highlight=False)
    picture = _picture(image)
    emulated = url is None
    grounding, answer = await _predict(console, url, model, question, picture)
    _print_results(console, grounding, answer, question, emulated=emulated)
    if isinstance(grounding, PhraseGroundingResponse):
        try:
            grounding.draw(picture).save(out)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot write {out}: {exc}") from None
        console.print(f"Annotated image written to [bold]{out}[/]")
    return 0


def _picture(image: Path | None) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if image is None:
        return sample_image()
    try:
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {image}: {exc}") from None


async def _predict(
    console: Console, url: str | None, model: str, question: str, picture: Image.Image
) -> tuple[PredictionResponse, PredictionResponse]:
    """Grounding (streamed to the console) and VQA, on the emulator when ``url`` is None."""
    from rich.panel import Panel

    from nim_async.predict.predictor import AsyncNIMPredictor

    async with contextlib.AsyncExitStack() as stack:
        emulated = url is None
        if url is None:
            from nim_async.emulator import Emulator, EmulatorSettings

            emulator = await stack.enter_async_context(
                Emulator(EmulatorSettings(ttft_ms=120.0, itl_ms=6.0), host="127.0.0.1", port=0)
            )
            url = emulator.url
            console.print(Panel(EMULATOR_NOTICE.format(url=url), title="nim-async demo"))
        else:
            console.print(f"Using the NIM at [bold]{url}[/]")
        grounder = await stack.enter_async_context(
            AsyncNIMPredictor(model_name=model, task_type="phrase-grounding", base_url=url)
        )
        answerer = await stack.enter_async_context(
            AsyncNIMPredictor(model_name=model, task_type="vqa", base_url=url)
        )
        source_note = "the emulator" if emulated else "the model"
        console.rule(f"Phrase grounding — tokens as {source_note} streams them")
        async with grounder.stream(picture) as stream:
            async for token in stream:
                console.file.write(token)
                console.file.flush()
            grounding = await stream.get_final_response()
        console.file.write("\n")
        console.rule(f"VQA — {question}")
        answer = await answerer(picture, user_prompt=question)
    return grounding, answer


def _print_results(
    console: Console,
    grounding: PredictionResponse,
    answer: PredictionResponse,
    question: str,
    *,
    emulated: bool,
) -> None:
    from rich.table import Table

    from nim_async.results import PhraseGroundingResponse

    title = "Results (from the emulator, not a model)" if emulated else "Results"
    summary = Table(title=title)
    summary.add_column("task")
    summary.add_column("prompt")
    summary.add_column("result")
    if isinstance(grounding, PhraseGroundingResponse):
        summary.add_row("phrase-grounding", "(the task's default)", grounding.sentence)
    summary.add_row("vqa", question, str(answer.plain_result))
    console.print(summary)
    render_response(console, grounding)


async def demo(args: argparse.Namespace) -> int:
    """Run ``nim-async demo`` (see :func:`run_demo`).

    Args:
        args: Parsed arguments (``--url``, ``--out``, ``--model``, ``--question``, ``--image``).

    Returns:
        The exit status.
    """
    from rich.console import Console

    return await run_demo(
        url=args.url,
        out=Path(args.out),
        model=args.model,
        question=args.question,
        image=Path(args.image) if args.image else None,
        console=Console(highlight=False),
    )
