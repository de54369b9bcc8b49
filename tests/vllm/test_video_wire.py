"""The video wire against the real vLLM 0.32 server (issue 13).

The tier's server runs with ``--limit-mm-per-prompt '{"image": 4, "video": 0}'`` and without
``--trust-request-mm-kwargs``, so it answers no video and no per-request media option. Its 400s
still show the wire is read as the client means it: a ``video_url`` part is counted as a video
(not dropped or taken for an image), and a flat ``media_io_kwargs`` ``{"fps": 2}``, which vLLM's
schema refuses (``body.media_io_kwargs.fps: Input should be a valid dictionary``), arrives keyed
by modality and passes the schema, to be stopped by the trust check. The random-weight model's
text is never read here.
"""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from nim_async import AsyncNIMPredictor, BadRequestError, NIMSamplingParams, TextResponse


def _predictor(server: Any, task: str) -> AsyncNIMPredictor:
    return AsyncNIMPredictor(server.model, task, base_url=server.url, timeout=120.0)


async def test_video_url_part_is_read_as_a_video(vllm_server: Any, video_factory: Any) -> None:
    async with _predictor(vllm_server, "video-freeform") as p:
        with pytest.raises(BadRequestError) as info:
            await p(video_factory("mp4"), "What happens?")
    assert "At most 0 video(s) may be provided in one prompt" in info.value.message


async def test_flat_media_io_kwargs_arrive_keyed_by_modality(vllm_server: Any) -> None:
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    params = NIMSamplingParams(max_tokens=4, media_io_kwargs={"fps": 2.0})
    async with _predictor(vllm_server, "generic") as p:
        with pytest.raises(BadRequestError) as info:
            await p(image, "Hi", params)
    message = info.value.message
    assert "valid dictionary" not in message  # past vLLM's schema: keyed ({"image": {...}})
    assert "Per-request media_io_kwargs are disabled" in message
    # an empty dict stays empty, which this server accepts ({"image": {}} it would refuse)
    empty = NIMSamplingParams(max_tokens=8, guided_choice=["yes", "no"], media_io_kwargs={})
    async with _predictor(vllm_server, "generic") as p:
        response = await p(image, "Hi", empty)
    assert isinstance(response, TextResponse)
    assert response.text in ("yes", "no")
