"""Phrase grounding: a sentence about the image and boxes for its phrases."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from nim_async.errors import PredictionParseError
from nim_async.protocol.geometry import Box, to_pixels
from nim_async.protocol.tasks.base import ParseContext, Task, keyed_object_schema
from nim_async.protocol.tasks.parsing import keyed_json_body, split_thinking
from nim_async.results import BoundingBox, Grounding, PhraseGroundingResponse

__all__ = ["PhraseGroundingTask"]


class PhraseGroundingTask(Task):
    """Describe the image in one sentence and locate each object phrase with boxes."""

    name: ClassVar[str] = "phrase-grounding"
    key: ClassVar[str] = "phrase_grounding"
    accepts: ClassVar[frozenset[str]] = frozenset({"image"})
    refusal: ClassVar[dict[str, str]] = {
        "video": "its boxes are pixels of one picture, and a video has many frames; send one "
        "frame as an image (e.g. ffmpeg -i VIDEO -frames:v 1 frame.png), or ask about the "
        "video with task_type='video-freeform' or 'vqa'"
    }
    default_prompt: ClassVar[str] = (
        "Write one sentence that names the distinct objects in this image, then give the "
        "bounding boxes of every object phrase in that sentence."
    )
    system_prompt: ClassVar[str | None] = (
        "You locate objects in images. Reply with JSON only, in the form "
        '{"phrase_grounding": {"sentence": "<one sentence>", "groundings": '
        '[{"phrase": "<exact words from the sentence>", "grounding": '
        "[[xmin, ymin, xmax, ymax], ...]}]}}. Every phrase is copied exactly from the sentence "
        "and has one box per instance of the object."
    )

    def output_schema(self) -> dict[str, Any]:
        """Return the JSON schema of the phrase grounding output."""
        box = {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 4,
            "maxItems": 4,
        }
        grounding = {
            "type": "object",
            "properties": {
                "phrase": {"type": "string"},
                "grounding": {"type": "array", "items": box},
            },
            "required": ["phrase", "grounding"],
        }
        return keyed_object_schema(
            self.key,
            {"sentence": {"type": "string"}, "groundings": {"type": "array", "items": grounding}},
            ["sentence", "groundings"],
        )

    def parse(self, text: str, context: ParseContext) -> PhraseGroundingResponse:
        """Parse the grounding JSON and convert boxes to original-image pixels.

        Raises:
            PredictionParseError: for missing JSON, a wrong shape, or boxes that are not four
                finite numbers.
        """
        thinking, answer_text = split_thinking(text)
        body = keyed_json_body(
            text, answer_text, context.finish_reason, "phrase grounding", "phrase_grounding"
        )
        if not isinstance(body, dict):
            raise PredictionParseError('"phrase_grounding" is not an object', raw_output=text)
        sentence = body.get("sentence", "")
        raw_groundings = body.get("groundings")
        if not isinstance(sentence, str) or not isinstance(raw_groundings, list):
            raise PredictionParseError(
                'the phrase grounding output needs "sentence" (text) and "groundings" (a list)',
                raw_output=text,
            )
        groundings = [self._grounding(item, context, text) for item in raw_groundings]
        return PhraseGroundingResponse(
            **context.response_fields(text, thinking),
            sentence=sentence,
            groundings=groundings,
        )

    def _grounding(self, item: object, context: ParseContext, text: str) -> Grounding:
        if not isinstance(item, dict) or not isinstance(item.get("phrase"), str):
            raise PredictionParseError(
                f"grounding entry {item!r:.80} lacks a text 'phrase'", raw_output=text
            )
        raw_boxes = item.get("grounding", [])
        if (
            isinstance(raw_boxes, list)
            and len(raw_boxes) == 4
            and all(_is_number(v) for v in raw_boxes)
        ):
            raw_boxes = [raw_boxes]  # a single box written without the outer list
        if not isinstance(raw_boxes, list):
            raise PredictionParseError(
                f"grounding of {item['phrase']!r} is not a list of boxes", raw_output=text
            )
        boxes = [self._box(raw, context, text) for raw in raw_boxes]
        return Grounding(phrase=item["phrase"], boxes=boxes)

    def _box(self, raw: object, context: ParseContext, text: str) -> BoundingBox:
        if not (isinstance(raw, list) and len(raw) == 4 and all(_is_number(v) for v in raw)):
            raise PredictionParseError(
                f"box {raw!r:.80} is not four finite numbers [xmin, ymin, xmax, ymax]",
                raw_output=text,
            )
        x0, y0, x1, y1 = (float(v) for v in raw)
        coords: Box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        original = context.original_size
        model_input = context.model_input_size or original
        if original is None or model_input is None:
            pixels = coords
        else:
            pixels = to_pixels(
                coords, context.box_format, original_size=original, model_input_size=model_input
            )
        return BoundingBox(model_coords=coords, pixels=pixels, box_format=context.box_format)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
