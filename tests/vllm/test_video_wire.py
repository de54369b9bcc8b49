"""Videos against the real vLLM 0.32 server (issue 13).

The tier's server takes one video per prompt and trusts per-request media options
(``--limit-mm-per-prompt '{"image": 4, "video": 1}' --trust-request-mm-kwargs``,
``scripts/vllm-env.sh``). vLLM decodes the test videos (Motion-JPEG in MP4 and WebM, built by the
``video_factory`` fixture) with its OpenCV loader and Qwen2.5-VL's video processor turns the
sampled frames into prompt tokens. The prompt-token count in ``usage`` is the witness: it grows
with the frames vLLM sampled, so it shows the ``video_url`` part was read as a video and that a
flat ``media_io_kwargs`` ``{"fps": N}``, which vLLM's schema refuses (``Input should be a valid
dictionary``), arrived keyed by modality and reached the loader. The random-weight model's text
is never read: ``guided_choice`` keeps its output parseable.
"""

from __future__ import annotations

from typing import Any

import pytest

from nim_async import AsyncNIMPredictor, NIMSamplingParams

CHOICE = NIMSamplingParams(max_tokens=8, guided_choice=["yes", "no"])


def _predictor(server: Any) -> AsyncNIMPredictor:
    return AsyncNIMPredictor(server.model, "video-freeform", base_url=server.url, timeout=120.0)


async def _prompt_tokens(server: Any, video: bytes, params: NIMSamplingParams) -> int:
    async with _predictor(server) as p:
        response = await p(video, "What happens?", params)
    assert response.usage is not None
    return response.usage.prompt_tokens


@pytest.mark.parametrize("container", ["mp4", "webm"])
async def test_a_video_is_answered_and_costs_tokens_by_its_length(
    vllm_server: Any, video_factory: Any, container: str
) -> None:
    """Both containers decode on the server; a longer video (at vLLM's default sampling rate)
    costs more prompt tokens than a short one, so the frames were read, not dropped."""
    short = await _prompt_tokens(vllm_server, video_factory(container, (128, 96), 10, 10), CHOICE)
    long = await _prompt_tokens(vllm_server, video_factory(container, (128, 96), 40, 10), CHOICE)
    assert long > short


async def test_flat_fps_arrives_keyed_and_sets_the_sampling_rate(
    vllm_server: Any, video_factory: Any
) -> None:
    """``media_io_kwargs={"fps": N}`` as vi-sdk users write it: sampled at 4 fps the same 4 s
    video costs more prompt tokens than at 1 fps (vLLM would refuse the flat form with a 400)."""
    video = video_factory("mp4", (128, 96), 40, 10)
    slow = await _prompt_tokens(
        vllm_server, video, CHOICE.model_copy(update={"media_io_kwargs": {"fps": 1.0}})
    )
    fast = await _prompt_tokens(
        vllm_server, video, CHOICE.model_copy(update={"media_io_kwargs": {"fps": 4.0}})
    )
    assert fast > slow


async def test_mm_processor_kwargs_reach_the_video_processor(
    vllm_server: Any, video_factory: Any
) -> None:
    """``mm_processor_kwargs`` ``max_pixels`` below the frames' size shrinks every frame."""
    video = video_factory("mp4", (128, 96), 10, 10)
    plain = await _prompt_tokens(vllm_server, video, CHOICE)
    capped = await _prompt_tokens(
        vllm_server, video, CHOICE.model_copy(update={"mm_processor_kwargs": {"max_pixels": 768}})
    )
    assert capped < plain
