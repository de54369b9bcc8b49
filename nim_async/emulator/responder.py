"""The emulator's deterministic answers from a :class:`Scene`: grounding, VQA, captions, text.

This is a test double standing in for a vision-language model; what it returns is emulator
output, never a model's. No IO.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from nim_async.catalog import BoxFormat
from nim_async.emulator.geometry import VisionFamily, encode_box
from nim_async.emulator.scene import COLOR_NAMES, Region, Scene
from nim_async.emulator.video import VideoInfo

__all__ = [
    "answer_vqa",
    "caption",
    "describe",
    "detect_task",
    "freeform_output",
    "grounding_output",
    "model_boxes",
    "render_json",
    "video_caption",
    "vqa_output",
]

_NUMBER_WORDS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_PLURAL = {
    "square": "squares",
    "rectangle": "rectangles",
    "circle": "circles",
    "ellipse": "ellipses",
    "shape": "shapes",
}
# noun in a question -> shapes it covers
_NOUNS: dict[str, tuple[str, ...] | None] = {
    "square": ("square",),
    "rectangle": ("square", "rectangle"),
    "box": ("square", "rectangle"),
    "circle": ("circle", "ellipse"),
    "ellipse": ("circle", "ellipse"),
    "oval": ("circle", "ellipse"),
    "disc": ("circle", "ellipse"),
    "shape": None,
    "object": None,
    "thing": None,
    "region": None,
    "item": None,
}
_WORD = re.compile(r"[a-z]+")
_OPENERS = ("The image shows ", "This image contains ", "In the image there is ")
_YES_NO_STARTS = ("is", "are", "does", "do", "can", "has", "have", "was", "were")


def render_json(obj: Any) -> str:
    """Serialise ``obj`` the way a model writes JSON: ``", "`` and ``": "`` separators."""
    return json.dumps(obj, ensure_ascii=False)


def detect_task(schema_key: str | None, texts: str, *, system: bool = True) -> str:
    """Decide which task a request asks for.

    In order: the JSON schema's top-level key; the key a prompt asks for
    (``phrase_grounding``, ``"vqa"``, ``"freeform"``); grounding words (bounding box, locate,
    detect); then a request without any system text whose last line is not a question is
    ``generic`` (plain text, as a chat template with no format asked for); anything else VQA.

    Args:
        schema_key: Top-level key of the requested JSON schema, if any.
        texts: System and user text of the request.
        system: Whether the request has system text (``False``: a bare chat).

    Returns:
        ``"phrase_grounding"``, ``"vqa"``, ``"freeform"``, ``"generic"``, or ``"other"`` for a
        schema of another shape.
    """
    if schema_key is not None:
        known = ("phrase_grounding", "vqa", "freeform")
        return schema_key if schema_key in known else "other"
    low = texts.lower()
    if "phrase_grounding" in low:
        return "phrase_grounding"
    if '"vqa"' in low:
        return "vqa"
    if '"freeform"' in low:
        return "freeform"
    if any(w in low for w in ("bounding box", "locate", "grounding", "detect")):
        return "phrase_grounding"
    if not system and not low.rstrip().endswith("?"):
        return "generic"
    return "vqa"


def _groups(regions: tuple[Region, ...] | list[Region]) -> list[tuple[str, list[Region]]]:
    """Group regions by colour and shape; each group becomes one phrase."""
    order: dict[tuple[str, str], list[Region]] = {}
    for r in regions:
        order.setdefault((r.color, r.shape), []).append(r)
    out: list[tuple[str, list[Region]]] = []
    for (color, shape), members in order.items():
        n = len(members)
        if n == 1:
            article = "an" if color[0] in "aeiou" else "a"
            phrase = f"{article} {color} {shape}"
        else:
            count = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
            phrase = f"{count} {color} {_PLURAL[shape]}"
        out.append((phrase, members))
    return out


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _mentioned_colors(prompt: str) -> set[str]:
    words = set(_WORD.findall(prompt.lower().replace("grey", "gray").replace("colour", "color")))
    return {c for c in COLOR_NAMES if c in words}


def describe(scene: Scene | None, rng: random.Random | None = None) -> str:
    """One sentence naming the regions of ``scene``.

    Args:
        scene: The image's scene, or ``None`` without an image.
        rng: Varies the wording (``None``: the fixed, greedy wording).
    """
    opener = _OPENERS[rng.randrange(len(_OPENERS))] if rng is not None else _OPENERS[0]
    if scene is None:
        return "There is no image in the request."
    groups = _groups(scene.regions)
    if not groups:
        return f"{opener}a plain {scene.background} background."
    return opener + _join([p for p, _ in groups]) + "."


def _where(region: Region, size: tuple[int, int]) -> str:
    """``top left`` / ``centre`` / ``bottom`` ... of the region's centre, by thirds."""
    x = (region.box[0] + region.box[2]) / 2 / max(size[0], 1)
    y = (region.box[1] + region.box[3]) / 2 / max(size[1], 1)
    row = ("top", "middle", "bottom")[min(int(y * 3), 2)]
    col = ("left", "centre", "right")[min(int(x * 3), 2)]
    if row == "middle":
        return "centre" if col == "centre" else f"middle {col}"
    return row if col == "centre" else f"{row} {col}"


def caption(scene: Scene | None, rng: random.Random | None = None) -> str:
    """A free-form description of ``scene``: what it shows and where.

    The sentence of :func:`describe`, then one sentence per colour / shape group saying where
    in the image (by thirds) its members are, then the background.

    Args:
        scene: The image's scene, or ``None`` without an image.
        rng: Varies the opening wording.
    """
    head = describe(scene, rng)
    if scene is None or not scene.regions:
        return head
    parts = [head]
    for phrase, members in _groups(scene.regions):
        places = _join(list(dict.fromkeys(_where(r, scene.size) for r in members)))
        verb = "is" if len(members) == 1 else "are"
        parts.append(f"{phrase[0].upper()}{phrase[1:]} {verb} at the {places}.")
    parts.append(f"The background is {scene.background}.")
    return " ".join(parts)


def video_caption(info: VideoInfo) -> str:
    """A caption for a video from its container header (the emulator decodes no frames).

    Args:
        info: What the container header says (or the fallbacks).
    """
    if not info.measured:
        return (
            f"A {info.container.upper()} video; its header gives no complete size and "
            "duration, and the emulator does not decode frames."
        )
    return (
        f"A {info.seconds:g}-second {info.container.upper()} video of {info.width}x{info.height} "
        "pixels; the emulator reads its header only and does not decode frames."
    )


def freeform_output(
    scene: Scene | None, video: VideoInfo | None = None, rng: random.Random | None = None
) -> dict[str, Any]:
    """Build ``{"freeform": {"caption": ...}}`` (a video's caption when one is given)."""
    text = video_caption(video) if video is not None else caption(scene, rng)
    return {"freeform": {"caption": text}}


def model_boxes(
    region_boxes: list[tuple[float, float, float, float]],
    size: tuple[int, int],
    box_format: BoxFormat,
    max_pixels: int,
    family: VisionFamily = "qwen2.5-vl",
) -> list[list[int]]:
    """Convert pixel boxes of the image as sent to the model convention, as integers.

    Args:
        region_boxes: Boxes in pixels of the image as sent.
        size: ``(width, height)`` of the image as sent.
        box_format: Target convention.
        max_pixels: Vision pixel budget (for the ``qwen25-abs`` resize).
        family: The vision processor (for the ``qwen25-abs`` resize).
    """
    return [encode_box(box, size, box_format, max_pixels, family) for box in region_boxes]


def grounding_output(
    scene: Scene | None,
    prompt: str,
    box_format: BoxFormat,
    max_pixels: int,
    rng: random.Random | None = None,
    family: VisionFamily = "qwen2.5-vl",
) -> dict[str, Any]:
    """Build ``{"phrase_grounding": {...}}`` for ``scene``.

    Colours named in ``prompt`` restrict the answer to regions of those colours (when any
    exist); otherwise every region is grounded.
    """
    if scene is None:
        return {"phrase_grounding": {"sentence": describe(None), "groundings": []}}
    regions = list(scene.regions)
    wanted = _mentioned_colors(prompt)
    if wanted and any(r.color in wanted for r in regions):
        regions = [r for r in regions if r.color in wanted]
    groups = _groups(regions)
    opener = _OPENERS[rng.randrange(len(_OPENERS))] if rng is not None else _OPENERS[0]
    if not groups:
        sentence = f"{opener}a plain {scene.background} background."
    else:
        sentence = opener + _join([p for p, _ in groups]) + "."
    groundings = [
        {
            "phrase": phrase,
            "grounding": model_boxes(
                [r.box for r in members], scene.size, box_format, max_pixels, family
            ),
        }
        for phrase, members in groups
    ]
    return {"phrase_grounding": {"sentence": sentence, "groundings": groundings}}


def answer_vqa(scene: Scene | None, question: str, rng: random.Random | None = None) -> str:
    """Answer a simple colour / count / presence question about ``scene``.

    Args:
        scene: The image's scene, or ``None``.
        question: The user's question.
        rng: Varies the wording of descriptions.

    Returns:
        ``"yes"``/``"no"`` for presence, digits for counts, colour names for colour
        questions, else a one-sentence description.
    """
    if scene is None:
        return describe(None)
    low = question.lower().replace("grey", "gray").replace("colour", "color")
    words = _WORD.findall(low)
    wordset = set(words)
    colors = {c for c in COLOR_NAMES if c in wordset}
    shapes: set[str] | None = None
    noun_given = False
    for w in words:
        base = w[:-2] if w.endswith("es") and w[:-2] in _NOUNS else w.rstrip("s")
        if base in _NOUNS:
            noun_given = True
            covered = _NOUNS[base]
            if covered is not None:
                shapes = (shapes or set()) | set(covered)
    regions = [r for r in scene.regions if shapes is None or r.shape in shapes]
    if "background" in wordset and "color" in wordset:
        return scene.background
    if "how" in wordset and ("many" in wordset or "much" in wordset):
        return str(sum(1 for r in regions if not colors or r.color in colors))
    if words and words[0] in _YES_NO_STARTS and (colors or noun_given):
        hit = any(not colors or r.color in colors for r in regions)
        return "yes" if hit else "no"
    if "color" in wordset or "colors" in wordset:
        names = list(dict.fromkeys(r.color for r in regions))
        return _join(names) if names else scene.background
    return describe(scene, rng)


def vqa_output(
    scene: Scene | None, question: str, rng: random.Random | None = None
) -> dict[str, Any]:
    """Build ``{"vqa": {"answer": ...}}``."""
    return {"vqa": {"answer": answer_vqa(scene, question, rng)}}
