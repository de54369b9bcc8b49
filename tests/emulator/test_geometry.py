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


# Qwen3-VL (cosmos-reason2), issue 13. Its processor rule (Qwen2VLImageProcessorFast with
# patch_size 16, merge_size 2): the same steps with F = 32, min_pixels 65536 (256x256) and the
# budget 16777216 (4096x4096). Tokens = (W/32)*(H/32). Derived by hand below; the same values
# came out of transformers 5.19's smart_resize(factor=32, min_pixels=65536, max_pixels=...) in
# the vLLM tier's venv when these were written (a one-off check, not run here).
QWEN3_MAX = 16777216

QWEN3_CASES = [
    # 641x479: 641/32 = 20.03 -> 20 -> 640; 479/32 = 14.97 -> 15 -> 480; 307200 in range;
    # 20*15 = 300 (Qwen2.5's rule gives 644x476 and 391 for nearly the same image)
    (641, 479, QWEN3_MAX, (640, 480), 300),
    # 333x1001: 10.41 -> 10 -> 320; 31.28 -> 31 -> 992; 317440 in range; 10*31 = 310
    (333, 1001, QWEN3_MAX, (320, 992), 310),
    # 1500x301: 46.875 -> 47 -> 1504; 9.406 -> 9 -> 288; 433152 in range; 47*9 = 423
    (1500, 301, QWEN3_MAX, (1504, 288), 423),
    # 777x777: 24.28 -> 24 -> 768 both; 24*24 = 576
    (777, 777, QWEN3_MAX, (768, 768), 576),
    # 100x80: 3.125 -> 3 -> 96; 2.5 -> 2 (half to even) -> 64; 6144 < 65536 -> beta =
    # sqrt(65536/8000) = 2.8622; 100*2.8622/32 = 8.94 -> ceil 9 -> 288; 80*2.8622/32 = 7.16 ->
    # ceil 8 -> 256; 9*8 = 72 (Qwen2.5-VL would keep 112x84... its minimum is only 3136)
    (100, 80, QWEN3_MAX, (288, 256), 72),
    # 8000x6000: 250 -> 8000; 187.5 -> 188 (even) -> 6016; 48.1e6 > 16777216 -> beta =
    # sqrt(48e6/16777216) = sqrt(2.8610) = 1.6915; 8000/1.6915/32 = 147.8 -> 147 -> 4704;
    # 6000/1.6915/32 = 110.85 -> 110 -> 3520; 147*110 = 16170
    (8000, 6000, QWEN3_MAX, (4704, 3520), 16170),
    # a smaller budget (262144 = 256 cells): 1920x1080 -> 60 -> 1920, 33.75 -> 34 -> 1088;
    # 2088960 > 262144 -> beta = sqrt(2073600/262144) = 2.8125; 1920/2.8125/32 = 21.33 -> 21
    # -> 672; 1080/2.8125/32 = 12.0 -> 12 -> 384; 21*12 = 252
    (1920, 1080, 262144, (672, 384), 252),
    # 64x48 at that budget: 2 -> 64; 1.5 -> 2 (even) -> 64; 4096 < 65536 -> beta =
    # sqrt(65536/3072) = 4.6188; 64*4.6188/32 = 9.24 -> 10 -> 320; 48*4.6188/32 = 6.93 -> 7
    # -> 224; 10*7 = 70
    (64, 48, 262144, (320, 224), 70),
]


@pytest.mark.parametrize(("w", "h", "max_pixels", "size", "tokens"), QWEN3_CASES)
def test_qwen3_vl_resize_and_tokens_match_hand_derivation(w, h, max_pixels, size, tokens):
    assert model_input_size(w, h, max_pixels, "qwen3-vl") == size
    assert image_tokens(w, h, max_pixels, "qwen3-vl") == tokens
    out_w, out_h = size
    assert out_w % 32 == 0
    assert out_h % 32 == 0
    assert tokens == (out_w // 32) * (out_h // 32)


def test_qwen3_vl_refuses_aspect_over_200_and_its_family_comes_from_the_name():
    from nim_async.emulator.geometry import vision_family_for
    from nim_async.emulator.settings import EmulatorSettings

    with pytest.raises(ValueError, match="aspect ratio"):
        model_input_size(3000, 10, QWEN3_MAX, "qwen3-vl")
    assert vision_family_for("cosmos-reason2-2b") == "qwen3-vl"
    assert vision_family_for("cosmos-reason2-8b") == "qwen3-vl"
    assert vision_family_for("my-cosmos-reason2-lora") == "qwen3-vl"
    assert vision_family_for("cosmos-reason1-7b") == "qwen2.5-vl"
    s = EmulatorSettings(served_model_name="cosmos-reason2-2b")
    facts = (s.vision_family, s.pixel_budget, s.box_convention)
    assert facts == ("qwen3-vl", QWEN3_MAX, "norm1000")
    s = EmulatorSettings()
    assert (s.vision_family, s.pixel_budget, s.box_convention) == (
        "qwen2.5-vl",
        DEFAULT_MAX,
        "qwen25-abs",
    )
    assert EmulatorSettings(served_model_name="x", box_format="norm1000").box_convention == (
        "norm1000"
    )
    s = EmulatorSettings(served_model_name="custom", vision="qwen3-vl", max_pixels=262144)
    assert (s.vision_family, s.pixel_budget) == ("qwen3-vl", 262144)


def test_qwen3_vl_abs_boxes_use_the_32_pixel_input():
    # qwen25-abs on a Qwen3-VL model refers to its own input: 641x479 -> 640x480;
    # 64*640/641 = 63.9 -> 64; 48*480/479 = 48.1 -> 48; 320*640/641 = 319.5 -> 320 (319.50 ->
    # round 320); 240*480/479 = 240.5 -> 241 (240.501)
    assert encode_box((64, 48, 320, 240), (641, 479), "qwen25-abs", QWEN3_MAX, "qwen3-vl") == [
        64,
        48,
        320,
        241,
    ]


# End to end: the same 512x384 PNG served as cosmos-reason2-2b. Qwen3-VL input: 512/32 = 16 ->
# 512; 384/32 = 12 -> 384 (196608 px, in range): 16*12 = 192 tokens + 2 markers = 194. Boxes
# 0-1000 of the image: 64/512 = 0.125 -> 125, 48/384 -> 125, 320/512 -> 625, 240/384 -> 625.
@pytest.mark.parametrize("name", ["cosmos-reason2-2b", "cosmos-reason2-8b"])
async def test_cosmos_reason2_counts_qwen3_vl_tokens_and_boxes_0_1000(start_emulator, api, name):
    import orjson

    png = _png_with_red_box((512, 384), (64, 48, 320, 240))
    # no box_format given: the served name picks norm1000 from the catalog, as the command does
    async with start_emulator(served_model_name=name) as emu:
        body = api.body(None, "Locate the red square.", model=name)
        body["messages"][0]["content"].insert(
            0, {"type": "image_url", "image_url": {"url": api.data_uri(png, "image/png")}}
        )
        with_image = (await api.post(emu.url, body)).json()
        plain = api.body(None, "Locate the red square.", model=name)
        without = (await api.post(emu.url, plain)).json()
    answer = orjson.loads(with_image["choices"][0]["message"]["content"])
    [grounding] = answer["phrase_grounding"]["groundings"]
    assert grounding["grounding"] == [[125, 125, 625, 625]]
    assert with_image["usage"]["prompt_tokens"] - without["usage"]["prompt_tokens"] == 194
