"""The emulator's own geometry against numbers derived by hand (issue 10).

The rule (Qwen2.5-VL's processor, transformers' ``smart_resize``): 14-pixel patches merged 2×2,
so sides are multiples of F = 28; round each side to the nearest multiple of 28; if the area
then exceeds max_pixels, divide by beta = sqrt(w*h / max_pixels) and FLOOR each side to a
multiple of 28 (at least 28); if it is below min_pixels (3136), multiply by
beta = sqrt(3136 / (w*h)) and CEIL; refuse an aspect ratio over 200. Tokens = (W/28)*(H/28).
The arithmetic in the comments was done by hand, to the precision shown (the closest call is
6000/6.916/28 = 30.98, floored to 30); none of it calls the client's geometry.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from nim_async.emulator.geometry import encode_box, image_tokens, model_input_size

DEFAULT_MAX = 1280 * 28 * 28  # 1003520
VLLM_TIER_MAX = 50176  # the tiny model's max_pixels in tests/vllm

RESIZE_CASES = [
    # 640x480: 640/28 = 22.86 -> 23 -> 644; 480/28 = 17.14 -> 17 -> 476; 644*476 = 306544 is
    # inside [3136, 1003520] -> (644, 476), 23*17 = 391 tokens
    (640, 480, DEFAULT_MAX, (644, 476), 391),
    # 320x240 at 50176 (vLLM measured 54 tokens): 11.43 -> 11 -> 308, 8.57 -> 9 -> 252;
    # 308*252 = 77616 > 50176 -> beta = sqrt(76800/50176) = sqrt(1.5306) = 1.2372;
    # 320/1.2372/28 = 9.238 -> 9 -> 252; 240/1.2372/28 = 6.928 -> 6 -> 168; 9*6 = 54
    (320, 240, VLLM_TIER_MAX, (252, 168), 54),
    # tiny 20x15: 0.714 -> 1 -> 28, 0.536 -> 1 -> 28; 784 < 3136 -> beta = sqrt(3136/300) =
    # 3.2332; 20*3.2332/28 = 2.309 -> ceil 3 -> 84; 15*3.2332/28 = 1.732 -> ceil 2 -> 56; 3*2 = 6
    (20, 15, DEFAULT_MAX, (84, 56), 6),
    # tiny side 10x900: 10/28 = 0.357 -> 0 (no floor of 28 in this step), 900/28 = 32.14 -> 896;
    # 0*896 = 0 < 3136 -> beta = sqrt(3136/9000) = 0.5903; 10*0.5903/28 = 0.211 -> ceil 1 -> 28;
    # 900*0.5903/28 = 18.97 -> ceil 19 -> 532; 1*19 = 19 tokens
    (10, 900, DEFAULT_MAX, (28, 532), 19),
    # huge 8000x6000: 8008 x 5992 > max -> beta = sqrt(48e6/1003520) = sqrt(47.83) = 6.916;
    # 8000/6.916/28 = 41.31 -> 41 -> 1148; 6000/6.916/28 = 30.98 -> 30 -> 840; 41*30 = 1230
    (8000, 6000, DEFAULT_MAX, (1148, 840), 1230),
    # extreme aspect 5000x30 (166.7 <= 200): 178.57 -> 179 -> 5012; 1.071 -> 1 -> 28;
    # 5012*28 = 140336 in range -> (5012, 28), 179 tokens
    (5000, 30, DEFAULT_MAX, (5012, 28), 179),
    # the same at 50176: 140336 > 50176 -> beta = sqrt(150000/50176) = sqrt(2.9895) = 1.7290;
    # 5000/1.7290/28 = 103.3 -> 103 -> 2884; 30/1.7290/28 = 0.620 -> 0 -> at least 28; 103*1 = 103
    (5000, 30, VLLM_TIER_MAX, (2884, 28), 103),
    # exactly square on the grid: 56x56 -> (56, 56), 4 tokens (the minimum area itself)
    (56, 56, DEFAULT_MAX, (56, 56), 4),
]


@pytest.mark.parametrize(("w", "h", "max_pixels", "size", "tokens"), RESIZE_CASES)
def test_resize_and_image_tokens_match_hand_derivation(w, h, max_pixels, size, tokens):
    assert model_input_size(w, h, max_pixels) == size
    assert image_tokens(w, h, max_pixels) == tokens


def test_aspect_ratio_over_200_is_refused():
    # 3000/10 = 300 > 200: transformers' processor raises, so the emulator does too
    with pytest.raises(ValueError, match="aspect ratio"):
        model_input_size(3000, 10, DEFAULT_MAX)
    with pytest.raises(ValueError, match="positive"):
        model_input_size(0, 10, DEFAULT_MAX)


BOX_CASES = [
    # image 640x480, box (64, 48, 320, 240)
    # norm1000: 64/640*1000 = 100, 48/480*1000 = 100, 320/640*1000 = 500, 240/480*1000 = 500
    ((640, 480), (64, 48, 320, 240), "norm1000", DEFAULT_MAX, [100, 100, 500, 500]),
    # norm1024: 0.1*1024 = 102.4 -> 102 (both axes), 0.5*1024 = 512
    ((640, 480), (64, 48, 320, 240), "norm1024", DEFAULT_MAX, [102, 102, 512, 512]),
    # qwen25-abs: model input (644, 476): 64*644/640 = 64.4 -> 64; 48*476/480 = 47.6 -> 48;
    # 320*644/640 = 322; 240*476/480 = 238
    ((640, 480), (64, 48, 320, 240), "qwen25-abs", DEFAULT_MAX, [64, 48, 322, 238]),
    # the whole image in qwen25-abs is the whole model input
    ((640, 480), (0, 0, 640, 480), "qwen25-abs", DEFAULT_MAX, [0, 0, 644, 476]),
    # 320x240 at 50176 -> input (252, 168): 32*252/320 = 25.2 -> 25; 24*168/240 = 16.8 -> 17;
    # 160*252/320 = 126; 120*168/240 = 84
    ((320, 240), (32, 24, 160, 120), "qwen25-abs", VLLM_TIER_MAX, [25, 17, 126, 84]),
    # the same box normalised does not depend on the budget: 0.1, 0.1, 0.5, 0.5 of 1000
    ((320, 240), (32, 24, 160, 120), "norm1000", VLLM_TIER_MAX, [100, 100, 500, 500]),
]


@pytest.mark.parametrize(("size", "box", "fmt", "max_pixels", "expected"), BOX_CASES)
def test_box_encoding_matches_hand_derivation(size, box, fmt, max_pixels, expected):
    assert encode_box(box, size, fmt, max_pixels) == expected


def _png_with_red_box(size, box) -> bytes:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill="red")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# End to end over HTTP: a 512x384 PNG with a red box at (64, 48, 320, 240). The analysis grid
# is 256x192 (2 px a cell, box edges on cell edges), so the box is found exactly.
# qwen25-abs input: 512/28 = 18.29 -> 18 -> 504; 384/28 = 13.71 -> 14 -> 392 (197568 px, in
# range). Box: 64*504/512 = 63, 48*392/384 = 49, 320*504/512 = 315, 240*392/384 = 245.
# norm1000: 125, 125, 625, 625; norm1024: 128, 128, 640, 640.
# Image tokens: 18*14 = 252, plus the vision start/end markers = 254 prompt tokens.
@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("qwen25-abs", [63, 49, 315, 245]),
        ("norm1000", [125, 125, 625, 625]),
        ("norm1024", [128, 128, 640, 640]),
    ],
)
async def test_emulator_answers_with_hand_derived_boxes_and_tokens(
    start_emulator, api, fmt, expected
):
    import orjson

    png = _png_with_red_box((512, 384), (64, 48, 320, 240))
    async with start_emulator(box_format=fmt) as emu:
        body = api.body(None, "Locate the red square.")
        body["messages"][0]["content"].insert(
            0, {"type": "image_url", "image_url": {"url": api.data_uri(png, "image/png")}}
        )
        with_image = (await api.post(emu.url, body)).json()
        without = (await api.post(emu.url, api.body(None, "Locate the red square."))).json()
    answer = orjson.loads(with_image["choices"][0]["message"]["content"])
    [grounding] = answer["phrase_grounding"]["groundings"]
    assert grounding["grounding"] == [expected]
    assert with_image["usage"]["prompt_tokens"] - without["usage"]["prompt_tokens"] == 254
