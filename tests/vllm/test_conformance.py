"""The client against the real vLLM 0.32 server: what the server guarantees, never the text.

The model has random weights, so every assertion is about what the server and the client
guarantee: constraints satisfied by the output (choice, regex, grammar, JSON schema), streamed and
not; a task's own schema parsing into that task's response type; typed errors carrying the
server's reason; usage and finish reasons; streamed tokens joining to ``raw_output``.

After the requests of each test, the server's DEBUG log must not say that a request field was
ignored ("fields were present in the request but ignored") nor warn about removed ``guided_*``
fields: no field the client sends may be dropped silently. The log is server-wide, so these tests
assume nobody else sends requests to this server meanwhile (true in CI: the suite runs serially).

To see these tests fail on the old wire format (top-level ``guided_*``, the default before issue
12), force a dialect: ``NIM_CONFORMANCE_DIALECT=guided pytest tests/vllm/test_conformance.py``
(or ``=nvext``): the constraints are ignored, the log witness and the constraint checks fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nim_async import (
    AsyncNIMPredictor,
    BadRequestError,
    ModelNotFoundError,
    NIMPredictor,
    NIMSamplingParams,
    PredictionParseError,
)
from nim_async.errors import GuidedDecodingError
from nim_async.protocol.guided import validate_json_schema
from nim_async.protocol.tasks import get_task
from nim_async.results import PhraseGroundingResponse, TextResponse, VQAResponse
from tests.vllm.conftest import LogWitness

DIALECT: Any = os.environ.get("NIM_CONFORMANCE_DIALECT", "auto")
CHOICES = ["yes", "no", "maybe"]
REGEX = r"[0-9]{1,3}"
GRAMMAR = 'root ::= "cat" | "dog" | "bird"'
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
# Seeds tried at once for JSON outputs: a random model may fill a JSON document with whitespace
# until max_tokens; a few seeds in one batch make it near certain that some finish with "stop".
JSON_SEEDS = (6, 0, 4, 7)


@pytest.fixture
def witness(vllm_server: Any) -> Iterator[LogWitness]:
    """A :class:`LogWitness`; also checked once more when the test ends."""
    w = LogWitness(vllm_server)
    yield w
    w.check()


@pytest.fixture
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((96, 64)).convert("RGB")


def _predictor(server: Any, task: str = "vqa", **kwargs: Any) -> AsyncNIMPredictor:
    return AsyncNIMPredictor(
        server.model, task, base_url=server.url, dialect=DIALECT, timeout=120.0, **kwargs
    )


# ---------------------------------------------------------------- the seed's examples, as written


def test_seed_run_inference_example(
    vllm_server: Any, witness: LogWitness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.linear_gradient("L").resize((128, 96)).convert("RGB").save("image.jpg")
    predictor = NIMPredictor(
        model_name="cosmos-reason1-7b", task_type="phrase-grounding", port=vllm_server.port
    )
    try:
        outcomes = []
        # Simple inference
        for kwargs in ({}, {"sampling_params": NIMSamplingParams(temperature=0.7, max_tokens=512)}):
            try:
                result = predictor(source="image.jpg", stream=False, **kwargs)
            except PredictionParseError as exc:  # random weights: the text need not parse
                assert exc.raw_output
                outcomes.append("unparsable text")
            else:
                assert isinstance(result, PhraseGroundingResponse)
                assert result.usage is not None
                outcomes.append("parsed")
            witness.check()
        assert len(outcomes) == 2
        assert predictor.health_ready()  # vLLM's /health (the NIM path is 404 there)
    finally:
        predictor.close()


def test_seed_guided_decoding_example(
    vllm_server: Any, witness: LogWitness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.linear_gradient("L").resize((128, 96)).convert("RGB").save("image.jpg")
    predictor = NIMPredictor(
        model_name="cosmos-reason1-7b", task_type="phrase-grounding", port=vllm_server.port
    )
    try:
        # Constrain output to choices
        params = NIMSamplingParams(guided_choice=["yes", "no", "maybe"])
        result = predictor(
            source="image.jpg",
            user_prompt="Is there a person?",
            stream=False,
            sampling_params=params,
        )
        witness.check()
    finally:
        predictor.close()
    assert isinstance(result, TextResponse)
    assert result.text in ("yes", "no", "maybe")
    assert result.finish_reason == "stop"


# ---------------------------------------------------------------- constraints, streamed and not


def _satisfies(kind: str, text: str) -> bool:
    if kind == "choice":
        return text in CHOICES
    if kind == "regex":
        return re.fullmatch(REGEX, text) is not None
    return text in ("cat", "dog", "bird")


CONSTRAINTS = {
    "choice": NIMSamplingParams(guided_choice=CHOICES, max_tokens=16),
    "regex": NIMSamplingParams(guided_regex=REGEX, max_tokens=16),
    "grammar": NIMSamplingParams(guided_grammar=GRAMMAR, max_tokens=16),
}


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
async def test_constraint_is_enforced(
    vllm_server: Any, witness: LogWitness, image: Image.Image, kind: str
) -> None:
    params = CONSTRAINTS[kind]
    async with _predictor(vllm_server) as p:
        for seed in (1, 2, 3):
            result = await p(image, "Answer.", params.model_copy(update={"seed": seed}))
            witness.check()
            assert isinstance(result, TextResponse)
            assert _satisfies(kind, result.text), result.text
            assert result.finish_reason == "stop"
            assert result.usage is not None
            assert result.usage.completion_tokens >= 1
            assert result.usage.total_tokens == (
                result.usage.prompt_tokens + result.usage.completion_tokens
            )


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
async def test_constraint_is_enforced_streamed(
    vllm_server: Any, witness: LogWitness, image: Image.Image, kind: str
) -> None:
    async with _predictor(vllm_server) as p:
        async with p.stream(image, "Answer.", CONSTRAINTS[kind]) as stream:
            tokens = [token async for token in stream]
            result = await stream.get_final_response()
        witness.check()
    assert isinstance(result, TextResponse)
    assert _satisfies(kind, result.text), result.text
    assert "".join(tokens) == result.raw_output  # no reasoning parser: content is everything
    assert stream.finish_reason == "stop"
    assert stream.usage is not None
    assert stream.usage == result.usage
    assert stream.usage.completion_tokens >= 1


async def _json_results(
    p: AsyncNIMPredictor, image: Image.Image, schema: dict[str, Any], max_tokens: int
) -> list[Any]:
    async def one(seed: int) -> Any:
        params = NIMSamplingParams(guided_json=schema, max_tokens=max_tokens, seed=seed)
        try:
            return await p(image, "Answer in JSON.", params)
        except PredictionParseError as exc:  # cut off at max_tokens (whitespace runs)
            assert "cut off" in str(exc)
            return exc

    return await asyncio.gather(*(one(seed) for seed in JSON_SEEDS))


async def test_json_schema_is_enforced(
    vllm_server: Any, witness: LogWitness, image: Image.Image
) -> None:
    async with _predictor(vllm_server) as p:
        results = await _json_results(p, image, SMALL_SCHEMA, max_tokens=300)
    witness.check()
    done = [r for r in results if isinstance(r, TextResponse)]
    assert done, f"no JSON answer finished within max_tokens: {results}"
    for r in done:
        assert validate_json_schema(json.loads(r.text), SMALL_SCHEMA) is None
        assert r.finish_reason == "stop"


async def test_json_schema_is_enforced_streamed(
    vllm_server: Any, witness: LogWitness, image: Image.Image
) -> None:
    finished = 0
    async with _predictor(vllm_server) as p:
        for seed in JSON_SEEDS:
            params = NIMSamplingParams(guided_json=SMALL_SCHEMA, max_tokens=300, seed=seed)
            async with p.stream(image, "Answer in JSON.", params) as stream:
                tokens = [token async for token in stream]
                try:
                    result = await stream.get_final_response()
                except PredictionParseError:
                    assert stream.finish_reason == "length"
                    continue
            witness.check()
            assert "".join(tokens) == result.raw_output
            assert isinstance(result, TextResponse)
            assert validate_json_schema(json.loads(result.text), SMALL_SCHEMA) is None
            finished += 1
            break
    assert finished, "no streamed JSON answer finished within max_tokens"


@pytest.mark.parametrize(
    ("task", "response_type", "max_tokens"),
    [("vqa", VQAResponse, 400), ("phrase-grounding", PhraseGroundingResponse, 600)],
)
async def test_task_schema_parses_into_the_task_response(
    vllm_server: Any,
    witness: LogWitness,
    image: Image.Image,
    task: str,
    response_type: type,
    max_tokens: int,
) -> None:
    schema = get_task(task).output_schema()
    async with _predictor(vllm_server, task) as p:
        results = await _json_results(p, image, schema, max_tokens=max_tokens)
    witness.check()
    parsed = [r for r in results if not isinstance(r, Exception)]
    assert parsed, f"no {task} answer finished within max_tokens: {results}"
    for r in parsed:
        assert type(r) is response_type
        assert r.finish_reason == "stop"


# ---------------------------------------------------------------- errors, usage, finish reasons


async def test_unknown_model_is_model_not_found(
    vllm_server: Any, witness: LogWitness, image: Image.Image
) -> None:
    async with AsyncNIMPredictor("no-such-model", "vqa", base_url=vllm_server.url) as p:
        with pytest.raises(ModelNotFoundError) as info:
            await p(image, "Q?", NIMSamplingParams(max_tokens=4))
        assert "cosmos-reason1-7b" in await p.list_models()
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.message


async def test_prompt_over_max_model_len_is_a_bad_request_with_the_reason(
    vllm_server: Any, witness: LogWitness, image: Image.Image
) -> None:
    async with _predictor(vllm_server) as p:
        with pytest.raises(BadRequestError) as info:
            await p(image, "word " * 5000, NIMSamplingParams(max_tokens=4))
        witness.lines()  # a rejected request is not a dropped field; move the mark on
    assert info.value.status_code == 400
    assert "maximum context length" in info.value.message
    assert "4096" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_and_finish_reason_length(
    vllm_server: Any, witness: LogWitness, image: Image.Image, stream: bool
) -> None:
    params = NIMSamplingParams(max_tokens=7, ignore_eos=True, top_k=20, min_p=0.01, seed=5)
    async with _predictor(vllm_server, "generic") as p:
        if stream:
            async with p.stream(image, "Say something.", params) as s:
                tokens = [token async for token in s]
                result = await s.get_final_response()
            assert "".join(tokens) == result.raw_output
            assert s.usage == result.usage
        else:
            result = await p(image, "Say something.", params)
    witness.check()
    assert result.finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7


# ---------------------------------------------------------------- the witness itself


@pytest.mark.parametrize("legacy", ["guided", "nvext"])
async def test_the_log_witness_sees_fields_the_old_wire_format_lost(
    vllm_server: Any, image: Image.Image, legacy: Any
) -> None:
    """The old default (top-level guided_*) and nvext are dropped by vLLM 0.32; witness sees it."""
    w = LogWitness(vllm_server)
    params = NIMSamplingParams(guided_choice=CHOICES, max_tokens=8, seed=1)
    async with AsyncNIMPredictor(
        vllm_server.model, "vqa", base_url=vllm_server.url, dialect=legacy
    ) as p:
        with pytest.raises((GuidedDecodingError, PredictionParseError)):
            await p(image, "Answer.", params)
    with pytest.raises(AssertionError, match="ignored request fields"):
        w.check()


def test_dialects_learnt_from_this_server(vllm_server: Any) -> None:
    async def learn() -> Any:
        async with AsyncNIMPredictor(vllm_server.model, "vqa", base_url=vllm_server.url) as p:
            return await p.wire_format(), await p.health_ready()

    wire, ready = asyncio.run(learn())
    assert ready
    assert wire.guided == "structured_outputs"
    assert not wire.extensions_in_nvext
    assert wire.server == f"vLLM {vllm_server.version}"


async def test_deployer_readiness_probe_accepts_vllm_health(vllm_server: Any) -> None:
    from nim_async.http.health import ReadinessProbe

    async with ReadinessProbe(vllm_server.url) as probe:
        assert await probe.is_ready()  # /v1/health/ready is 404 here; /health is 200
        assert vllm_server.model in await probe.models()


async def test_multimodal_kwargs_reach_the_server(
    vllm_server: Any, witness: LogWitness, image: Image.Image
) -> None:
    """vi-sdk's media options are sent where vLLM reads them, not dropped: the tier's server
    trusts per-request media options (``--trust-request-mm-kwargs``), so they take effect.

    ``mm_processor_kwargs`` ``max_pixels`` of 16 merged patches (12,544 px) makes Qwen2.5-VL's
    processor resize it smaller, so the prompt costs fewer image tokens; ``media_io_kwargs``
    for the image modality is accepted as vLLM's schema wants it (keyed by modality).
    """
    big = image.resize((448, 336))
    grounded = NIMSamplingParams(max_tokens=8, guided_choice=["yes", "no"])
    async with _predictor(vllm_server, "generic") as p:
        plain = await p(big, "Hi", grounded)
        capped = await p(
            big, "Hi", grounded.model_copy(update={"mm_processor_kwargs": {"max_pixels": 12544}})
        )
        keyed = await p(big, "Hi", grounded.model_copy(update={"media_io_kwargs": {"image": {}}}))
    assert plain.usage is not None
    assert capped.usage is not None
    assert keyed.usage is not None
    assert capped.usage.prompt_tokens < plain.usage.prompt_tokens  # the cap reached the processor
    assert keyed.usage.prompt_tokens == plain.usage.prompt_tokens
    witness.check()
