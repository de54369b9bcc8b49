"""No field the client sends is dropped by the real vLLM 0.32: every request form, one witness.

vLLM logs (DEBUG, every request) "The following fields were present in the request but ignored:
{...}" for each top-level key its request model does not read, and warns about removed
``guided_*`` fields (:mod:`tests.vllm.conftest`). Each request form the client can send goes
through the real client (the default ``dialect="auto"``, which learns vLLM 0.32 from
``/version``; and ``dialect="openai"``) to the tier's server, and the server's log must have
neither line afterwards:

* the constraint kinds: choice, regex, grammar, a JSON schema, each task's own schema
  (phrase grounding, VQA, freeform), streamed and not;
* every sampling field of :class:`~nim_async.NIMSamplingParams` set away from its default
  (``top_k``, ``repetition_penalty``, ``ignore_eos``, ``min_tokens``, ``stop``, ``logprobs``,
  ``prompt_logprobs``, ...), streamed and not;
* the media options (``media_io_kwargs`` flat and keyed, ``mm_processor_kwargs``) with an image
  and with a video, every task type, and the body ``nim-async bench`` sends.

:func:`test_the_forms_cover_every_sampling_field_and_task` fails when a field or task is added to
the client without a form here, so the witness keeps covering everything the client can send.
Random weights: the text is never read, only whether the server dropped a field (a JSON answer
cut off at ``max_tokens`` is fine here; constraint satisfaction is tested in
``test_conformance.py``).

The advice of a :class:`~nim_async.errors.GuidedDecodingError` (the constraint was ignored) is
followed on the real server: a dialect it names for vLLM >= 0.10.2, and the default, get the
constraint enforced.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from PIL import Image

from nim_async import AsyncNIMPredictor, BadRequestError, NIMSamplingParams, PredictionParseError
from nim_async.bench.client import build_body
from nim_async.errors import GuidedDecodingError
from nim_async.protocol.tasks import TASKS, get_task
from tests.vllm.conftest import LogWitness

SMALL_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
DEFAULTS = NIMSamplingParams()
BASE = NIMSamplingParams(max_tokens=8, seed=3)

# Every sampling field away from its default, in one request (the constraint aside).
EVERY_FIELD = NIMSamplingParams(
    temperature=0.8,
    top_p=0.9,
    top_k=20,
    min_p=0.05,
    presence_penalty=0.5,
    frequency_penalty=0.5,
    repetition_penalty=1.3,
    max_tokens=9,
    min_tokens=2,
    stop=["\n\n\n"],
    seed=11,
    ignore_eos=True,
    logprobs=2,
    prompt_logprobs=1,
    guided_choice=["yes", "no"],
    media_io_kwargs={"image": {}},
    mm_processor_kwargs={"max_pixels": 50176},
)

# name -> (task type, sampling parameters, media kind)
FORMS: dict[str, tuple[str, NIMSamplingParams, str]] = {
    "choice": ("vqa", BASE.model_copy(update={"guided_choice": ["yes", "no"]}), "image"),
    "regex": ("vqa", BASE.model_copy(update={"guided_regex": r"[0-9]{1,3}"}), "image"),
    "grammar": ("vqa", BASE.model_copy(update={"guided_grammar": 'root ::= "a" | "b"'}), "image"),
    "json schema": ("vqa", BASE.model_copy(update={"guided_json": SMALL_SCHEMA}), "image"),
    "json schema as text": (
        "vqa",
        BASE.model_copy(update={"guided_json": '{"type": "object"}'}),
        "image",
    ),
    "task schema phrase-grounding": (
        "phrase-grounding",
        BASE.model_copy(update={"guided_json": get_task("phrase-grounding").output_schema()}),
        "image",
    ),
    "task schema vqa": (
        "vqa",
        BASE.model_copy(update={"guided_json": get_task("vqa").output_schema()}),
        "image",
    ),
    "task schema freeform": (
        "freeform",
        BASE.model_copy(update={"guided_json": get_task("freeform").output_schema()}),
        "image",
    ),
    "task generic, defaults": ("generic", NIMSamplingParams(max_tokens=8), "image"),
    "every sampling field": ("generic", EVERY_FIELD, "image"),
    "top_k, repetition_penalty, ignore_eos": (
        "generic",
        BASE.model_copy(update={"top_k": 5, "repetition_penalty": 1.5, "ignore_eos": True}),
        "image",
    ),
    "media_io_kwargs flat (image)": (
        "generic",
        BASE.model_copy(update={"media_io_kwargs": {}}),
        "image",
    ),
    "video, media_io_kwargs flat fps, mm_processor_kwargs": (
        "video-freeform",
        BASE.model_copy(
            update={
                "media_io_kwargs": {"fps": 2.0},
                "mm_processor_kwargs": {"max_pixels": 12544},
                "guided_choice": ["yes", "no"],
            }
        ),
        "video",
    ),
}

# vLLM answers a streamed prompt_logprobs with 400 (test_streamed_prompt_logprobs_is_refused...).
FORMS["every streamable field"] = (
    "generic",
    EVERY_FIELD.model_copy(update={"prompt_logprobs": None}),
    "image",
)
STREAMED = (
    "choice",
    "regex",
    "grammar",
    "json schema",
    "task schema vqa",
    "every streamable field",
)


@pytest.fixture
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((96, 64)).convert("RGB")


def _media(kind: str, image: Image.Image, video_factory: Any) -> Any:
    return video_factory("mp4", (64, 48), 8, 4) if kind == "video" else image


async def _send(p: AsyncNIMPredictor, media: Any, params: NIMSamplingParams, stream: bool) -> None:
    try:
        if stream:
            async with p.stream(media, "Answer.", params) as s:
                async for _ in s:
                    pass
                await s.get_final_response()
        else:
            await p(media, "Answer.", params)
    except (PredictionParseError, GuidedDecodingError):
        pass  # random weights: an answer cut off at max_tokens (the text is not checked here)


def test_the_forms_cover_every_sampling_field_and_task() -> None:
    """A field or task added to the client without a form here fails this test."""
    changed: set[str] = set()
    for _, params, _ in FORMS.values():
        changed |= {
            name
            for name in NIMSamplingParams.model_fields
            if getattr(params, name) != getattr(DEFAULTS, name)
        }
    assert changed == set(NIMSamplingParams.model_fields), (
        f"no request form sets {sorted(set(NIMSamplingParams.model_fields) - changed)}"
    )
    assert {task for task, _, _ in FORMS.values()} == set(TASKS)
    assert {kind for _, _, kind in FORMS.values()} == {"image", "video"}


@pytest.mark.parametrize("dialect", ["auto", "openai"])
@pytest.mark.parametrize(
    ("name", "stream"),
    [(name, False) for name in FORMS] + [(name, True) for name in STREAMED],
)
async def test_no_request_field_is_ignored(
    vllm_server: Any,
    image: Image.Image,
    video_factory: Any,
    name: str,
    stream: bool,
    dialect: Any,
) -> None:
    task, params, kind = FORMS[name]
    witness = LogWitness(vllm_server)
    async with AsyncNIMPredictor(
        vllm_server.model, task, base_url=vllm_server.url, dialect=dialect, timeout=120.0
    ) as p:
        await _send(p, _media(kind, image, video_factory), params, stream)
    assert witness.dropped() == [], f"vLLM dropped fields of the {name!r} request"


async def test_the_bench_request_drops_no_field(vllm_server: Any, image: Image.Image) -> None:
    """``nim-async bench`` builds its own streaming body (ignore_eos, max_tokens, temperature)."""
    import io

    buf = io.BytesIO()
    image.save(buf, "JPEG")
    prepared = build_body(
        buf.getvalue(), mime="image/jpeg", model=vllm_server.model, task_type="vqa", max_tokens=4
    )
    witness = LogWitness(vllm_server)
    async with httpx.AsyncClient(base_url=vllm_server.url, timeout=120.0) as client:
        headers = {"content-type": "application/json"}
        response = await client.post("/v1/chat/completions", content=prepared.body, headers=headers)
    assert response.status_code == 200, response.text
    assert "data: [DONE]" in response.text
    assert witness.dropped() == []


async def test_streamed_prompt_logprobs_is_refused_not_dropped(
    vllm_server: Any, image: Image.Image
) -> None:
    """vLLM 0.32 refuses ``prompt_logprobs`` on a stream with 400 naming it: loud, not silent."""
    witness = LogWitness(vllm_server)
    async with AsyncNIMPredictor(
        vllm_server.model, "generic", base_url=vllm_server.url, timeout=120.0
    ) as p:
        with pytest.raises(BadRequestError, match="prompt_logprobs"):
            await _send(p, image, BASE.model_copy(update={"prompt_logprobs": 1}), stream=True)
    assert witness.dropped() == []


# Stop strings that unconstrained random text meets within a few tokens, so an ignored
# constraint ends with finish_reason "stop" (a GuidedDecodingError) rather than at max_tokens;
# the choices contain none of them.
STOPS = [" ", "e", "t", "_"]  # vLLM takes at most 4
DIGITS = ["1", "2", "3"]


async def _ignored_error(server: Any, image: Image.Image, dialect: Any) -> GuidedDecodingError:
    async with AsyncNIMPredictor(
        server.model, "vqa", base_url=server.url, dialect=dialect, timeout=120.0
    ) as p:
        for seed in range(8):
            params = NIMSamplingParams(guided_choice=DIGITS, max_tokens=24, stop=STOPS, seed=seed)
            try:
                await p(image, "Pick a digit.", params)
            except GuidedDecodingError as exc:
                return exc
            except PredictionParseError:
                continue  # ran to max_tokens without meeting a stop string: try another seed
    raise AssertionError(f"dialect={dialect!r}: no GuidedDecodingError in 8 seeds")


async def _enforced(server: Any, image: Image.Image, dialect: Any) -> bool:
    async with AsyncNIMPredictor(
        server.model, "vqa", base_url=server.url, dialect=dialect, timeout=120.0
    ) as p:
        for seed in (1, 2, 3):
            params = NIMSamplingParams(guided_choice=DIGITS, max_tokens=24, stop=STOPS, seed=seed)
            try:
                result = await p(image, "Pick a digit.", params)
            except (GuidedDecodingError, PredictionParseError):
                return False
            if getattr(result, "text", None) not in DIGITS:
                return False
    return True


@pytest.mark.parametrize("legacy", ["guided", "nvext"])
async def test_the_ignored_constraint_advice_names_a_fix_that_works(
    vllm_server: Any, image: Image.Image, legacy: Any
) -> None:
    """On vLLM 0.32 the old forms are ignored; the error's advice says what to pass instead."""
    error = await _ignored_error(vllm_server, image, legacy)
    message = str(error)
    named = re.findall(r"dialect='(\w+)' \(([^)]*)\)", message)
    assert named, message
    assert legacy not in {d for d, _ in named}, message
    for_current_vllm = [d for d, use in named if "vLLM >= 0.10.2" in use]
    assert for_current_vllm == ["openai"], message
    assert "dialect='auto'" in message, message
    for fix in (*for_current_vllm, "auto"):
        assert await _enforced(vllm_server, image, fix), f"dialect={fix!r} (from the advice)"
