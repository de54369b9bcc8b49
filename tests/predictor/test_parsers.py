"""Output parsing as the predictor drives it: any model text gives a response or a parse error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nim_async.config import NIMSamplingParams
from nim_async.errors import GuidedDecodingError, PredictionParseError
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.protocol.guided import check_guided_output
from nim_async.protocol.tasks import ParseContext, get_task

from .conftest import MODEL, Recorder

_numbers = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)
_box = st.lists(_numbers, min_size=0, max_size=6)
_grounding = st.fixed_dictionaries(
    {},
    optional={
        "phrase": st.one_of(st.text(max_size=10), _numbers),
        "grounding": st.one_of(st.lists(_box, max_size=3), _box, _numbers),
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "sentence": st.one_of(st.text(max_size=20), _numbers),
        "groundings": st.one_of(st.lists(_grounding, max_size=3), _numbers),
        "answer": st.one_of(st.text(max_size=10), _numbers),
    },
)
_obj = st.one_of(
    st.builds(lambda b: {"phrase_grounding": b}, _body),
    st.builds(lambda b: {"vqa": b}, _body),
    _body,
)


def _render(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


_text = st.one_of(
    st.text(max_size=200),
    st.builds(_render, _obj),
    st.builds(
        lambda pre, obj, post, think: (
            (f"<think>{think}</think>" if think else "")
            + pre
            + "```json\n"
            + _render(obj)
            + "\n```"
            + post
        ),
        st.text(max_size=20),
        _obj,
        st.text(max_size=20),
        st.one_of(st.none(), st.text(max_size=20)),
    ),
    st.builds(lambda obj, cut: _render(obj)[:cut], _obj, st.integers(0, 80)),
)
_context = st.builds(
    ParseContext,
    prompt=st.just("p"),
    box_format=st.sampled_from(["norm1024", "qwen25-abs", "norm1000"]),
    original_size=st.one_of(st.none(), st.tuples(st.integers(1, 5000), st.integers(1, 5000))),
    model_input_size=st.one_of(st.none(), st.tuples(st.integers(1, 5000), st.integers(1, 5000))),
    finish_reason=st.sampled_from([None, "stop", "length"]),
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["phrase-grounding", "vqa"]), _text, _context)
def test_parser_raises_only_parse_errors(task: str, text: str, context: ParseContext) -> None:
    try:
        response = get_task(task).parse(text, context)
    except PredictionParseError as exc:
        assert exc.raw_output == text
    else:
        assert response.raw_output == text


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60),
    st.one_of(
        st.builds(lambda c: NIMSamplingParams(guided_choice=c), st.lists(st.text(), min_size=1)),
        st.builds(
            lambda r: NIMSamplingParams(guided_regex=r), st.sampled_from([r"\d+", "a|b", ".*"])
        ),
        st.just(NIMSamplingParams(guided_json={"type": "object"})),
    ),
    st.sampled_from([None, "stop", "length"]),
)
def test_guided_check_raises_only_its_errors(
    text: str, params: NIMSamplingParams, finish: str | None
) -> None:
    try:
        check_guided_output(text, params, finish_reason=finish)
    except (GuidedDecodingError, PredictionParseError) as exc:
        assert exc.raw_output == text


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(_text)
async def test_predictor_on_arbitrary_output(
    recorder: Recorder, image_factory: Any, text: str
) -> None:
    recorder.answer = text
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", base_url=recorder.url) as p:
        try:
            result = await p(image_factory(size=(32, 32), fmt="PNG"))
        except PredictionParseError as exc:
            assert exc.raw_output == text
        else:
            assert result.raw_output == text
