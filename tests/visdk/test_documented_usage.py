"""vi-sdk's documented NIMPredictor usage, run against nim_async with only the import changed.

``VISDK_SCRIPT`` is a script written the way vi-sdk 0.1.0b7 documents ``vi.deployment.nim``
(the ``NIMPredictor`` / ``NIMSamplingParams`` docstrings and the response types of
``vi.inference.task_types``): build a predictor from a ``NIMConfig`` or a model name and a port,
call it with ``source=``, ``user_prompt=``, ``stream=`` and ``sampling_params=``, and read
``r.result.sentence``, ``r.result.groundings[i].phrase`` / ``.grounding``, ``r.result.answer``,
``r.result`` (generic), ``r.prompt``, ``r.raw_output`` and ``r.thinking``. The test replaces its one
import line (``from vi.deployment.nim import`` -> ``from nim_async import``) and runs it in a fresh
interpreter against the emulator serving ``cosmos-reason2-2b`` over real HTTP, on random scenes
at several aspect ratios; its boxes are checked against the drawn truth (0-1000 coordinates).

Where vi-sdk's own docstrings disagree with vi-sdk's code they are not followed: its
``result.caption`` / ``result.phrase_grounding`` / ``.bounding_box`` example names attributes its
response types do not have, and its ``gen = predictor(source=...)`` relies on ``__call__`` being
a generator function (every call, ``stream=False`` included, returns a generator there); here
``stream=True`` asks for the token generator, as in the seed API.

The emulator is a test double: its text is not a model's answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from nim_async.catalog import box_format_for_model

MODEL = "cosmos-reason2-2b"
COLORS = ("red", "blue", "green", "yellow")
# (width, height): landscape, portrait, wide, square, none of them 32-pixel multiples
SIZES = [(641, 479), (333, 1001), (1500, 301), (777, 777)]

VISDK_SCRIPT = """
import json
import sys

from vi.deployment.nim import NIMConfig, NIMPredictor, NIMSamplingParams

port = int(sys.argv[1])
images = sys.argv[2:]
out = {"grounding": [], "pixels": []}

# Recommended in vi-sdk: the predictor from the deployment's config.
config = NIMConfig(nvidia_api_key="nvapi-not-a-real-key", image_name="cosmos-reason2-2b", port=port)
predictor = NIMPredictor(task_type="phrase-grounding", config=config)
for image in images:
    result = predictor(source=image, stream=False)
    out["grounding"].append(
        {
            "sentence": result.result.sentence,
            "groundings": [
                {"phrase": g.phrase, "grounding": g.grounding} for g in result.result.groundings
            ],
        }
    )
    out["pixels"].append([[list(b.pixels) for b in g.boxes] for g in result.groundings])
out["prompt"] = result.prompt
out["raw_output"] = result.raw_output
out["thinking"] = result.thinking

# A pretrained model by name and port, VQA with sampling parameters.
vqa = NIMPredictor(task_type="vqa", model_name="cosmos-reason2-2b", port=port)
params = NIMSamplingParams(temperature=0.7, top_p=0.9, max_tokens=512, seed=42)
answer = vqa(
    source=images[0], user_prompt="What color is the shape?", stream=False, sampling_params=params
)
out["answer"] = answer.result.answer

# Streaming: tokens as they come, the parsed response as the generator's return value.
gen = vqa(source=images[0], user_prompt="What color is the shape?", stream=True)
tokens = []
while True:
    try:
        tokens.append(next(gen))
    except StopIteration as stop:
        final = stop.value
        break
out["streamed"] = "".join(tokens)
out["streamed_raw"] = final.raw_output
out["streamed_answer"] = final.result.answer

# Guided decoding for structured output.
guided_params = NIMSamplingParams(temperature=0.2, guided_choice=["yes", "no", "maybe"])
out["guided"] = vqa(source=images[0], stream=False, sampling_params=guided_params).result

# The generic task: the model's text as is.
generic = NIMPredictor(task_type="generic", model_name="cosmos-reason2-2b", port=port)
text = generic(source=images[0], user_prompt="What is in the image?", stream=False)
out["generic"] = text.result
out["generic_is_str"] = isinstance(text.result, str)

print(json.dumps(out))
"""


def _scene(rng: random.Random, size: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Two or three solid rectangles of distinct colours in distinct columns."""
    w, h = size
    n = rng.choice((2, 3))
    colors = rng.sample(COLORS, n)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i, color in enumerate(colors):
        left, right = int(w * i / n), int(w * (i + 1) / n)
        x0 = rng.randint(left + 2, left + (right - left) // 4)
        x1 = rng.randint(left + (right - left) // 2, right - 2)
        y0 = rng.randint(2, h // 3)
        y1 = rng.randint(h // 2, h - 2)
        shapes.append((color, (x0, y0, x1, y1)))
    return shapes


async def _run_script(script: str, port: int, images: list[Path], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "visdk_script.py"
    path.write_text(script)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(path),
        str(port),
        *map(str, images),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, stderr.decode()[-4000:]
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


def _with_nim_async(script: str) -> str:
    changed = script.replace("from vi.deployment.nim import", "from nim_async import")
    assert changed.count("nim_async") == 1
    assert "vi." not in changed.replace("vi-sdk", "")
    return changed


async def test_visdk_script_runs_with_only_the_import_changed(
    start_emulator: Any, image_factory: Any, tmp_path: Path
) -> None:
    rng = random.Random(13)
    scenes = [_scene(rng, size) for size in SIZES]
    images = []
    for i, (size, shapes) in enumerate(zip(SIZES, scenes, strict=True)):
        path = tmp_path / f"scene{i}.png"
        path.write_bytes(image_factory(size=size, shapes=shapes, fmt="PNG"))
        images.append(path)
    async with start_emulator(
        served_model_name=MODEL, box_format=box_format_for_model(MODEL)
    ) as emu:
        out = await _run_script(_with_nim_async(VISDK_SCRIPT), emu.port, images, tmp_path)

    for (w, h), shapes, grounding, pixels in zip(
        SIZES, scenes, out["grounding"], out["pixels"], strict=True
    ):
        assert len(grounding["groundings"]) == len(shapes), grounding
        for color, truth in shapes:
            [index] = [i for i, g in enumerate(grounding["groundings"]) if color in g["phrase"]]
            phrase = grounding["groundings"][index]
            assert phrase["phrase"] in grounding["sentence"]
            [box] = phrase["grounding"]
            # vi-sdk's .grounding: the model's own 0-1000 coordinates, within 2 % of the truth
            assert all(0 <= v <= 1000 for v in box)
            as_pixels = (box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000)
            for got, want, side in zip(as_pixels, truth, (w, h, w, h), strict=True):
                assert abs(got - want) <= 0.02 * side, (color, box, truth, (w, h))
            # nim_async's richer field beside it: the same box in original-image pixels
            [pixel_box] = pixels[index]
            assert pixel_box == pytest.approx(as_pixels, abs=1e-6)

    assert out["prompt"]
    assert out["raw_output"].lstrip().startswith("{")
    assert out["thinking"] is None
    colors_of_first = {color for color, _ in scenes[0]}
    assert set(out["answer"].split()) & colors_of_first or out["answer"]
    assert out["streamed"] == out["streamed_raw"]
    assert out["streamed_answer"]
    assert out["guided"] in ("yes", "no", "maybe")
    assert out["generic_is_str"] is True
    assert out["generic"]


async def test_visdk_default_task_is_freeform(emulator: Any, image_factory: Any) -> None:
    # vi-sdk: no task_type and no run metadata naming one -> "freeform"
    from nim_async import FreeformCaption, NIMPredictor

    image = image_factory(shapes=[("blue", (10, 10, 200, 200))], fmt="PNG")

    def run() -> tuple[str, object]:
        with NIMPredictor(model_name="cosmos-reason1-7b", port=emulator.port) as predictor:
            return predictor.task_type, predictor(source=image, stream=False).result

    task_type, result = await asyncio.to_thread(run)
    assert task_type == "freeform"
    assert isinstance(result, FreeformCaption)
    assert "blue" in result.caption


async def test_visdk_freeform_caption(
    start_emulator: Any, image_factory: Any, tmp_path: Path
) -> None:
    script = """
import json, sys
from vi.deployment.nim import NIMPredictor
port = int(sys.argv[1])
predictor = NIMPredictor(task_type="freeform", model_name="cosmos-reason2-2b", port=port)
print(json.dumps({"caption": predictor(source=sys.argv[2], stream=False).result.caption}))
"""
    image = tmp_path / "one.png"
    image.write_bytes(image_factory(shapes=[("red", (10, 10, 200, 200))], fmt="PNG"))
    async with start_emulator(served_model_name=MODEL, box_format="norm1000") as emu:
        out = await _run_script(_with_nim_async(script), emu.port, [image], tmp_path)
    assert "red" in out["caption"]


VISDK_VIDEO_SCRIPT = """
import json
import sys

from vi.deployment.nim import NIMPredictor, NIMSamplingParams

port = int(sys.argv[1])
video = sys.argv[2]

# vi-sdk's documented video example for cosmos-reason2.
predictor = NIMPredictor(task_type="vqa", model_name="cosmos-reason2-2b", port=port)
video_params = NIMSamplingParams(
    temperature=0.2,
    max_tokens=4096,
    media_io_kwargs={"fps": 2.0},
    mm_processor_kwargs={"shortest_edge": 336, "longest_edge": 672},
)
result = predictor(source=video, stream=False, sampling_params=video_params)
out = {"answer": result.result.answer, "task_type": result.task_type}

# freeform (vi-sdk's default) given a video is asked as video-freeform
freeform = NIMPredictor(model_name="cosmos-reason2-2b", port=port)
caption = freeform(source=video, stream=False)
out["caption"] = caption.result.caption
out["caption_task"] = caption.task_type
print(json.dumps(out))
"""


async def test_visdk_video_with_cosmos_reason2_options(
    start_emulator: Any, video_factory: Any, tmp_path: Path
) -> None:
    video = tmp_path / "video.mp4"
    video.write_bytes(video_factory("mp4", size=(96, 64), frames=25, fps=10))
    async with start_emulator(served_model_name=MODEL, box_format="norm1000") as emu:
        out = await _run_script(_with_nim_async(VISDK_VIDEO_SCRIPT), emu.port, [video], tmp_path)
    assert out["task_type"] == "vqa"
    assert isinstance(out["answer"], str)
    assert out["answer"]
    assert out["caption_task"] == "video-freeform"
    # the emulator read the header of the video it was sent (it decodes no frames)
    assert "2.5-second MP4 video of 96x64" in out["caption"]


async def test_freeform_and_video_freeform_through_the_predictor(
    start_emulator: Any, image_factory: Any, video_factory: Any
) -> None:
    # With the task's own schema as the constraint the emulator writes a schema instance, so
    # the predictor -> registry -> freeform parser path runs end to end today.
    from nim_async import AsyncNIMPredictor, NIMSamplingParams
    from nim_async.protocol.tasks import get_task
    from nim_async.results import FreeformCaption, FreeformResponse

    image = image_factory(shapes=[("red", (10, 10, 90, 90))], fmt="PNG")
    video = video_factory("webm")
    async with start_emulator(served_model_name=MODEL, box_format="norm1000") as emu:
        for task_type, source in (("freeform", image), ("video-freeform", video)):
            params = NIMSamplingParams(guided_json=get_task(task_type).output_schema())
            async with AsyncNIMPredictor(MODEL, task_type, port=emu.port) as predictor:
                response = await predictor(source, "Describe it.", params)
            assert isinstance(response, FreeformResponse)
            assert response.task_type == task_type
            assert isinstance(response.result, FreeformCaption)
            assert response.result.caption
            assert response.usage is not None
            assert response.usage.prompt_tokens > 0


def test_visdk_result_types_are_public() -> None:
    # vi-sdk's .result shapes and the responses around them import from the top level
    import nim_async
    from nim_async import results

    names = [
        "PhraseGrounding",
        "GroundedPhrase",
        "VQAAnswer",
        "FreeformCaption",
        "FreeformResponse",
        "GenericResponse",
    ]
    for name in names:
        assert name in nim_async.__all__
        assert getattr(nim_async, name) is getattr(results, name)
    assert set(results.__all__) <= set(nim_async.__all__)
