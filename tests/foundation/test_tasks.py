"""Task registry and output parsers (no IO)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nim_async.errors import PredictionParseError
from nim_async.protocol.geometry import smart_resize
from nim_async.protocol.tasks import TASKS, ParseContext, get_task, register_task, task_for_key
from nim_async.protocol.tasks.parsing import find_final_json_object, split_thinking
from nim_async.protocol.tasks.vqa import VQATask
from nim_async.results import PhraseGroundingResponse, Usage, VQAAnswer, VQAResponse

PG = get_task("phrase-grounding")
VQA = get_task("vqa")


def _ctx(**kw: object) -> ParseContext:
    base: dict[str, object] = {"prompt": "p", "model": "m"}
    base.update(kw)
    return ParseContext(**base)  # type: ignore[arg-type]


def test_registry_lookup() -> None:
    assert get_task("phrase_grounding") is PG
    assert task_for_key("vqa") is VQA
    assert task_for_key("nope") is None
    with pytest.raises(
        ValueError,
        match="'freeform', 'generic', 'phrase-grounding', 'video-freeform', 'vqa'",
    ):
        get_task("detection")


def test_register_rejects_a_second_task_with_the_same_name() -> None:
    class Other(VQATask):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_task(Other())
    assert TASKS["vqa"] is VQA


def test_schemas_have_the_task_key() -> None:
    assert set(PG.output_schema()["properties"]) == {"phrase_grounding"}
    assert set(VQA.output_schema()["properties"]) == {"vqa"}


def test_default_prompt_used_when_none() -> None:
    assert VQA.build_prompt(None) == VQA.default_prompt
    assert VQA.build_prompt("How many?") == "How many?"


@pytest.mark.parametrize(
    "text",
    [
        '{"vqa": {"answer": "red"}}',
        'Sure! Here is the answer:\n```json\n{"vqa": {"answer": "red"}}\n```',
        '<think>the square is red</think>\n{"vqa": {"answer": "red"}}',
        'first {"vqa": {"answer": "blue"}} then {"vqa": {"answer": "red"}}',
    ],
)
def test_vqa_parses_common_shapes(text: str) -> None:
    result = VQA.parse(text, _ctx(usage=Usage(prompt_tokens=3), finish_reason="stop"))
    assert isinstance(result, VQAResponse)
    assert result.answer == "red"
    assert result.result == VQAAnswer(answer="red")  # vi-sdk's shape
    assert result.result.answer == result.plain_result == "red"
    assert result.raw_output == text
    assert result.usage == Usage(prompt_tokens=3)
    assert result.finish_reason == "stop"


def test_thinking_is_split_out() -> None:
    result = VQA.parse('<think>\nlooking closely\n</think>{"vqa":{"answer":"2"}}', _ctx())
    assert result.thinking == "looking closely"
    assert split_thinking("reasoning only</think> answer") == ("reasoning only", "answer")
    assert split_thinking("<think>unclosed") == ("unclosed", "")
    assert split_thinking("plain") == (None, "plain")


def test_truncated_output_says_so() -> None:
    text = '{"vqa": {"answ'
    with pytest.raises(PredictionParseError, match="max_tokens") as info:
        VQA.parse(text, _ctx(finish_reason="length"))
    assert info.value.raw_output == text


def test_wrong_shape_is_a_parse_error() -> None:
    with pytest.raises(PredictionParseError):
        VQA.parse('{"vqa": {"reply": "x"}}', _ctx())
    with pytest.raises(PredictionParseError):
        PG.parse(
            '{"phrase_grounding": {"sentence": "a", "groundings": [{"phrase": "a", '
            '"grounding": [[1, 2, 3]]}]}}',
            _ctx(),
        )


def test_phrase_grounding_converts_boxes_per_convention() -> None:
    original = (1000, 500)
    sent = original
    model_input = smart_resize(*sent)
    payload = {
        "phrase_grounding": {
            "sentence": "A red square.",
            "groundings": [{"phrase": "red square", "grounding": [[512, 256, 1024, 1024]]}],
        }
    }
    res = PG.parse(
        json.dumps(payload),
        _ctx(box_format="norm1024", original_size=original, model_input_size=model_input),
    )
    assert isinstance(res, PhraseGroundingResponse)
    box = res.groundings[0].boxes[0]
    assert box.model_coords == (512, 256, 1024, 1024)
    assert box.pixels == pytest.approx((500, 125, 1000, 500))
    # qwen25-abs: absolute pixels of the resized model input
    mw, mh = model_input
    payload["phrase_grounding"]["groundings"][0]["grounding"] = [[mw / 2, 0, mw, mh / 2]]  # type: ignore[index]
    res = PG.parse(
        json.dumps(payload),
        _ctx(box_format="qwen25-abs", original_size=original, model_input_size=model_input),
    )
    assert res.groundings[0].boxes[0].pixels == pytest.approx((500, 0, 1000, 250))
    # vi-sdk's shape keeps the model's own coordinates; plain_result has pixels
    assert res.result.groundings[0].phrase == "red square"
    assert res.result.groundings[0].grounding == [[mw / 2, 0, mw, mh / 2]]
    assert res.plain_result["groundings"][0]["grounding"] == [pytest.approx([500, 0, 1000, 250])]


def test_single_box_without_outer_list_and_swapped_corners() -> None:
    text = (
        '{"phrase_grounding": {"sentence": "a cat", "groundings": '
        '[{"phrase": "a cat", "grounding": [100, 80, 10, 8]}]}}'
    )
    res = PG.parse(
        text, _ctx(box_format="norm1000", original_size=(1000, 1000), model_input_size=(1000, 1000))
    )
    assert res.groundings[0].boxes[0].model_coords == (10, 8, 100, 80)


def test_find_final_json_object_none() -> None:
    with pytest.raises(PredictionParseError):
        find_final_json_object("no json here [1, 2]")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parsers_raise_only_parse_errors_on_any_text(text: str) -> None:
    for task in (PG, VQA):
        try:
            task.parse(
                text,
                _ctx(
                    box_format="qwen25-abs", original_size=(640, 480), model_input_size=(644, 476)
                ),
            )
        except PredictionParseError as exc:
            assert exc.raw_output == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["", "<think>x</think>", "Answer: ", "```json\n"]))
def test_parsers_raise_only_parse_errors_on_any_json(value: object, prefix: str) -> None:
    for wrapper in ({"phrase_grounding": value}, {"vqa": value}, value):
        text = prefix + json.dumps(wrapper)
        for task in (PG, VQA):
            with contextlib.suppress(PredictionParseError):
                task.parse(text, _ctx(original_size=(10, 10), model_input_size=(28, 28)))
