"""Image-token accounting: the client's Qwen2.5-VL resize rule against vLLM's real processor.

For each image the server counts (non-streamed chat completion, ``max_tokens=1``)::

    prompt_tokens(with image) - prompt_tokens(same text, no image)
        = image tokens + wrapper

The wrapper is what the chat template puts around each image besides the image tokens:
``<|vision_start|>`` and ``<|vision_end|>``, one token each (special tokens, so the text on
either side tokenizes the same with or without the image). It is determined here, not assumed:
vLLM's ``/tokenize`` with the same messages returns the expanded prompt's token ids, and the
wrapper is the difference minus the ``<|image_pad|>`` ids in it. It comes out as 2, and it must
equal the ``<|vision_start|>`` + ``<|vision_end|>`` ids in the prompt.

The image tokens must equal the client's own count: ``smart_resize`` of the image as sent, with
the server's pixel budget (min/max pixels from the model directory's preprocessor config), one
token per 28x28 block. That is the geometry ``qwen25-abs`` boxes are converted with.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from nim_async.protocol.geometry import qwen_image_tokens, smart_resize

FACTOR = 28
TEXT = "Describe the picture in one word."

# (width, height, format): tiny, exact, odd, extreme aspect, portrait, large, beyond max_pixels
CASES = [
    (20, 20, "PNG"),
    (1, 1, "PNG"),
    (28, 28, "JPEG"),
    (57, 29, "PNG"),
    (333, 77, "JPEG"),
    (97, 1001, "PNG"),
    (1000, 50, "PNG"),
    (50, 1000, "JPEG"),
    (320, 240, "JPEG"),
    (224, 224, "PNG"),
    (225, 223, "JPEG"),
    (640, 480, "PNG"),
    (2000, 1500, "JPEG"),
    (2000, 1500, "PNG"),
    (4000, 30, "JPEG"),
    (1000, 10, "PNG"),  # a side under 14 px: rounds to 0 in the processor's rule
    (13, 700, "PNG"),
]


def _image(width: int, height: int, fmt: str, mode: str = "RGB") -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _data_url(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(data).decode()}"


def _messages(image_url: str | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    content.append({"type": "text", "text": TEXT})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def budget(vllm_server: Any) -> tuple[int, int]:
    """The server's (min_pixels, max_pixels), read from the model's preprocessor config."""
    cfg = json.loads((vllm_server.model_dir / "preprocessor_config.json").read_text())
    if "min_pixels" in cfg and "max_pixels" in cfg:
        return int(cfg["min_pixels"]), int(cfg["max_pixels"])
    size = cfg["size"]  # transformers 5: {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return int(size["shortest_edge"]), int(size["longest_edge"])


@pytest.fixture(scope="module")
def special_ids(vllm_server: Any) -> dict[str, int]:
    tok = json.loads((vllm_server.model_dir / "tokenizer.json").read_text())
    return {t["content"]: int(t["id"]) for t in tok["added_tokens"]}


@pytest.fixture(scope="module")
def client(vllm_server: Any) -> Any:
    with httpx.Client(base_url=vllm_server.url, timeout=120.0) as c:
        yield c


def _prompt_tokens(client: httpx.Client, model: str, image_url: str | None) -> int:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": _messages(image_url),
            "max_tokens": 1,
            "temperature": 0.0,
        },
    )
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens"])


@pytest.fixture(scope="module")
def text_only_tokens(client: httpx.Client, vllm_server: Any) -> int:
    return _prompt_tokens(client, vllm_server.model, None)


def test_budget_is_the_tiny_models(budget: tuple[int, int]) -> None:
    # 4..64 image tokens per image (scripts/vllm_tiny_model.py); the cases below span it
    assert budget == (4 * FACTOR * FACTOR, 64 * FACTOR * FACTOR)


@pytest.mark.parametrize(("width", "height", "fmt"), CASES, ids=lambda v: str(v))
def test_image_tokens_match_client_resize_rule(
    client: httpx.Client,
    vllm_server: Any,
    budget: tuple[int, int],
    special_ids: dict[str, int],
    text_only_tokens: int,
    width: int,
    height: int,
    fmt: str,
) -> None:
    min_pixels, max_pixels = budget
    url = _data_url(_image(width, height, fmt), fmt)
    with_image = _prompt_tokens(client, vllm_server.model, url)
    delta = with_image - text_only_tokens

    # the server's own expansion of the prompt: its token ids
    r = client.post("/tokenize", json={"model": vllm_server.model, "messages": _messages(url)})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert len(ids) == with_image  # /tokenize and the completion's usage agree
    server_image_tokens = ids.count(special_ids["<|image_pad|>"])
    wrapper = delta - server_image_tokens
    assert wrapper == 2, f"wrapper tokens: {wrapper}"
    assert ids.count(special_ids["<|vision_start|>"]) == 1
    assert ids.count(special_ids["<|vision_end|>"]) == 1

    w, h = smart_resize(width, height, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    client_tokens = (w // FACTOR) * (h // FACTOR)
    assert client_tokens == server_image_tokens, (
        f"{width}x{height} {fmt}: client smart_resize -> {w}x{h} = {client_tokens} tokens, "
        f"vLLM's processor used {server_image_tokens}"
    )
    counted = qwen_image_tokens(
        width, height, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )
    assert counted == client_tokens


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_image_mode_does_not_change_the_count(
    client: httpx.Client,
    vllm_server: Any,
    budget: tuple[int, int],
    text_only_tokens: int,
    mode: str,
) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    url = _data_url(_image(321, 123, fmt, mode=mode), fmt)
    w, h = smart_resize(321, 123, factor=FACTOR, min_pixels=budget[0], max_pixels=budget[1])
    expected = (w // FACTOR) * (h // FACTOR) + 2
    assert _prompt_tokens(client, vllm_server.model, url) - text_only_tokens == expected


def test_aspect_ratio_over_200_is_rejected_by_server_and_client(
    client: httpx.Client, vllm_server: Any, budget: tuple[int, int]
) -> None:
    # Qwen2.5-VL's processor refuses an aspect ratio over 200 (transformers' smart_resize
    # raises); vLLM answers 400. The client's rule should refuse it too, before sending.
    url = _data_url(_image(3000, 10, "PNG"), "PNG")
    r = client.post(
        "/v1/chat/completions",
        json={"model": vllm_server.model, "messages": _messages(url), "max_tokens": 1},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "BadRequestError"
    with pytest.raises(ValueError, match="200"):
        smart_resize(3000, 10, factor=FACTOR, min_pixels=budget[0], max_pixels=budget[1])
