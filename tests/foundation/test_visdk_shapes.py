"""vi-sdk parity in the IO-free layers: its task types, result shapes and error attribute.

vi-sdk 0.1.0b7 (``vi/inference/task_types/``) answers with ``r.result`` of type
``PhraseGrounding(sentence, groundings=[GroundedPhrase(phrase, grounding)])`` (boxes as the model
wrote them), ``VQAAnswer(answer)``, ``FreeformCaption(caption)``, or ``str`` for generic.
"""

from __future__ import annotations

import json

import pytest

from nim_async.errors import ModelIncompatibilityError, PredictionParseError
from nim_async.protocol.tasks import TASKS, ParseContext, get_task, task_for_key
from nim_async.results import (
    FreeformCaption,
    FreeformResponse,
    GenericResponse,
    GroundedPhrase,
    PhraseGrounding,
    Usage,
)

FREEFORM = get_task("freeform")
GENERIC = get_task("generic")
VIDEO = get_task("video-freeform")


def _ctx(**kw: object) -> ParseContext:
    base: dict[str, object] = {"prompt": "p", "model": "m", "original_size": (640, 480)}
    base.update(kw)
    return ParseContext(**base)  # type: ignore[arg-type]


def test_the_five_vi_sdk_task_types_are_registered() -> None:
    assert set(TASKS) == {"phrase-grounding", "vqa", "freeform", "generic", "video-freeform"}
    assert get_task("video_freeform") is VIDEO
    assert task_for_key("freeform") is FREEFORM
    assert VIDEO.media == "video"
    assert {t.media for n, t in TASKS.items() if n != "video-freeform"} == {"image"}


def test_prompts_and_schemas() -> None:
    for task in (FREEFORM, VIDEO):
        assert task.system_prompt is not None
        assert '"freeform"' in task.system_prompt
        assert set(task.output_schema()["properties"]) == {"freeform"}
    assert "video" in VIDEO.default_prompt
    assert "video" in (VIDEO.system_prompt or "")
    assert GENERIC.system_prompt is None
    assert GENERIC.build_prompt(None) == GENERIC.default_prompt
    assert GENERIC.build_prompt("Count the cars.") == "Count the cars."


@pytest.mark.parametrize(
    "text",
    [
        '{"freeform": {"caption": "A red square on white."}}',
        '{"freeform":{"caption":"A red square on white."}}',
        '<think>I see one shape.</think>\n{"freeform": {"caption": "A red square on white."}}',
        'Here it is:\n```json\n{"caption": "A red square on white."}\n```',
        "A red square on white.",  # prose, no JSON at all: the prose is the caption
        "<think>one shape</think>A red square on white.",
    ],
)
def test_freeform_parses_common_shapes(text: str) -> None:
    response = FREEFORM.parse(text, _ctx(usage=Usage(prompt_tokens=7), finish_reason="stop"))
    assert isinstance(response, FreeformResponse)
    assert response.task_type == "freeform"
    assert response.caption == "A red square on white."
    assert response.result == FreeformCaption(caption="A red square on white.")
    assert response.result.caption == response.plain_result
    assert response.raw_output == text
    assert response.usage == Usage(prompt_tokens=7)
    assert response.image_size == (640, 480)
    if "<think>" in text:
        assert response.thinking in ("I see one shape.", "one shape")


@pytest.mark.parametrize(
    ("text", "finish_reason", "message"),
    [
        ('{"vqa": {"answer": "red"}}', "stop", "caption"),
        ('{"freeform": {"caption": 3}}', "stop", "caption"),
        ('{"freeform": {"caption": "A red sq', "length", "max_tokens"),
        ('{"freeform": {"caption": "A red sq', "stop", "no complete JSON"),
        ("A red square and", "length", "max_tokens"),
        ("", "stop", "no complete JSON"),
        ("<think>only thinking</think>", "stop", "no complete JSON"),
    ],
)
def test_freeform_errors_carry_the_text(text: str, finish_reason: str, message: str) -> None:
    with pytest.raises(PredictionParseError, match=message) as info:
        FREEFORM.parse(text, _ctx(finish_reason=finish_reason))
    assert info.value.raw_output == text


def test_video_freeform_answers_like_freeform_under_its_own_name() -> None:
    response = VIDEO.parse('{"freeform": {"caption": "A ball rolls left."}}', _ctx())
    assert isinstance(response, FreeformResponse)
    assert response.task_type == "video-freeform"
    assert response.result.caption == "A ball rolls left."


def test_generic_returns_the_text_unparsed() -> None:
    text = '<think>look</think>\n  Two squares: {"not": "parsed"}  '
    response = GENERIC.parse(text, _ctx(finish_reason="length"))
    assert isinstance(response, GenericResponse)
    assert response.task_type == "generic"
    assert response.result == response.text == 'Two squares: {"not": "parsed"}'
    assert isinstance(response.result, str)
    assert response.thinking == "look"
    assert response.raw_output == text
    assert response.finish_reason == "length"
    with pytest.raises(PredictionParseError, match="no text"):
        GENERIC.parse("  ", _ctx())


def test_phrase_grounding_result_is_vi_sdks_shape_in_model_coordinates() -> None:
    payload = {
        "phrase_grounding": {
            "sentence": "A red square and two blue circles.",
            "groundings": [
                {"phrase": "A red square", "grounding": [[100, 200, 300, 400]]},
                {"phrase": "two blue circles", "grounding": [[500, 0, 600, 100.5], [0, 0, 9, 9]]},
            ],
        }
    }
    response = get_task("phrase-grounding").parse(
        json.dumps(payload),
        _ctx(box_format="norm1000", original_size=(2000, 1000), model_input_size=(2000, 1000)),
    )
    result = response.result
    assert isinstance(result, PhraseGrounding)
    assert result.sentence == "A red square and two blue circles."
    assert result.groundings[0] == GroundedPhrase(
        phrase="A red square", grounding=[[100, 200, 300, 400]]
    )
    assert [type(v) for v in result.groundings[0].grounding[0]] == [int] * 4
    assert result.groundings[1].grounding == [[500, 0, 600, 100.5], [0, 0, 9, 9]]
    # the richer fields beside it: boxes in original-image pixels
    assert response.groundings[0].boxes[0].pixels == pytest.approx((200, 200, 600, 400))
    assert response.plain_result["groundings"][0]["grounding"] == [
        pytest.approx([200, 200, 600, 400])
    ]
    assert result.model_dump() == {
        "sentence": "A red square and two blue circles.",
        "groundings": [
            {"phrase": "A red square", "grounding": [[100, 200, 300, 400]]},
            {"phrase": "two blue circles", "grounding": [[500, 0, 600, 100.5], [0, 0, 9, 9]]},
        ],
    }


def test_model_incompatibility_error_has_vi_sdks_attribute() -> None:
    err = ModelIncompatibilityError("cosmos-reason2-2b", "model_type qwen2_5_vl")
    assert err.details == err.incompatibility_details == "model_type qwen2_5_vl"
    assert "qwen2_5_vl" in str(err)
    by_visdk_name = ModelIncompatibilityError(
        "cosmos-reason2-2b", incompatibility_details="architecture X"
    )
    assert by_visdk_name.details == by_visdk_name.incompatibility_details == "architecture X"
    bare = ModelIncompatibilityError("cosmos-reason1-7b")
    assert bare.details is None
    assert bare.incompatibility_details is None
