"""IO-free parts of the emulator: tokens, guided decoding, settings, scene analysis."""

from __future__ import annotations

import re

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nim_async.emulator import EmulatorSettings
from nim_async.emulator.guided import (
    GuidedError,
    check_regex,
    choose,
    regex_output,
    schema_instance,
)
from nim_async.emulator.responder import render_json
from nim_async.emulator.scene import analyse_bytes, analyse_image, decode_image
from nim_async.emulator.tokens import count_tokens, split_tokens


@given(st.text())
def test_tokens_concatenate_back(text):
    pieces = split_tokens(text)
    assert "".join(pieces) == text
    assert count_tokens(text) == len(pieces)
    assert all(pieces)


def test_tokens_are_word_piece_like():
    assert split_tokens("Hello world 42!") == ["Hell", "o", " worl", "d", " 4", "2", "!"]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_render_json_round_trips(value):
    import json

    assert json.loads(render_json(value)) == value


@pytest.mark.parametrize(
    "pattern",
    [
        r"[a-z]+",
        r"\d{4}-\d{2}-\d{2}",
        r"(red|green|blue)",
        r"x?y*z+",
        r"[^\d\s]{3}",
        r"\w+@\w+\.com",
        r"(?:ab){2,3}c",
        r"\s\S\W",
        r"[A-F0-9]{8}",
        r"a.b",
        r"\bword\b",
    ],
)
def test_regex_output_matches(pattern):
    check_regex(pattern)
    assert re.fullmatch(pattern, regex_output(pattern, []))
    assert re.fullmatch(
        pattern, regex_output(pattern, ["nope"], rng=__import__("random").Random(1))
    )


@pytest.mark.parametrize(
    "pattern", [r"(?=a)a", r"(?!b)a", r"(a)\1", r"(?<=a)b", r"(a", r"(?>a)", r"a++"]
)
def test_unsupported_regex_rejected(pattern):
    with pytest.raises(GuidedError):
        check_regex(pattern)


def test_regex_prefers_natural_answer():
    assert regex_output(r"(yes|no)", ["no"]) == "no"


def test_choose():
    assert choose(["Yes", "No"], ["no"]) == "No"
    assert choose(["cat", "red"], ["The image shows a red square."]) == "red"
    assert choose(["a", "b"], ["zzz"]) == "a"


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(
        [
            {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 5, "multipleOf": 3}},
            },
            {"type": "array", "items": {"type": "number", "exclusiveMaximum": -1}, "minItems": 3},
            {"type": ["string", "null"], "maxLength": 3},
            {"oneOf": [{"type": "null"}, {"type": "boolean"}]},
            {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"const": 2}}, "required": ["b"]},
                ]
            },
            {
                "type": "object",
                "properties": {"t": {"type": "string", "format": "uuid"}},
                "required": ["t"],
            },
            {"definitions": {"n": {"type": "integer"}}, "$ref": "#/definitions/n"},
            True,
        ]
    ),
    st.integers(0, 5),
)
def test_schema_instance_validates(schema, seed):
    import random

    value = schema_instance(schema, random.Random(seed))
    jsonschema.validate(value, schema if schema is not True else {})


def test_schema_bad_ref():
    with pytest.raises(GuidedError):
        schema_instance({"$ref": "http://example.com/x"})


@pytest.mark.parametrize(
    "field",
    [
        {"max_model_len": 0},
        {"box_format": "pixels"},
        {"ttft_ms": -1},
        {"max_num_seqs": -1},
        {"fail_rate": 1.5},
        {"fail_status": 200},
        {"disconnect_after": -1},
        {"exit_after": -1},
        {"sampling_fields": "x"},
        {"max_pixels": 10},
        {"served_model_name": ""},
    ],
)
def test_settings_validate(field):
    with pytest.raises(ValueError):  # noqa: PT011
        EmulatorSettings(**field)


def test_settings_replace():
    s = EmulatorSettings().replace(ttft_ms=3)
    assert s.ttft_ms == 3
    with pytest.raises(TypeError):
        EmulatorSettings().replace(nope=1)


def test_scene_ignores_jpeg_fringes_and_finds_black_background(image_factory):
    img, size = decode_image(image_factory(shapes=[("red", (10, 10, 200, 200))], quality=40))
    assert size == img.size == (640, 480)
    scene = analyse_image(img)
    assert [r.color for r in scene.regions] == ["red"]
    dark = image_factory(shapes=[("yellow", (10, 10, 200, 200))], background="black")
    scene = analyse_bytes(dark)
    assert scene.background == "black"
    assert [r.color for r in scene.regions] == ["yellow"]


def test_decode_rejects_garbage():
    with pytest.raises(ValueError, match="cannot identify"):
        decode_image(b"garbage")


def test_draft_decoding_keeps_boxes_in_original_pixels(image_factory):
    data = image_factory(size=(2400, 1600), shapes=[("blue", (600, 400, 1200, 1000))])
    img, size = decode_image(data, draft=True)
    assert size == (2400, 1600)
    assert img.size[0] < 2400  # decoded at reduced scale
    [region] = analyse_bytes(data).regions
    for got, want in zip(region.box, (600, 400, 1200, 1000), strict=True):
        assert abs(got - want) <= 0.01 * 2400


def test_exif_rotation_swaps_the_size():
    import io

    from PIL import Image

    img = Image.new("RGB", (300, 100), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    decoded, size = decode_image(buf.getvalue())
    assert size == decoded.size == (100, 300)


def test_busy_images_are_walked_on_a_grid_within_the_run_budget(monkeypatch):
    # Random noise has a colour change at nearly every cell (~58k row runs on the 256 grid);
    # the component walk is the only per-run Python work, so it must get a coarser grid.
    import io
    import random as _random

    from PIL import Image

    from nim_async.emulator import scene as scene_mod

    rng = _random.Random(7)
    noise = Image.frombytes(
        "RGB", (256, 256), bytes(rng.randrange(256) for _ in range(256 * 256 * 3))
    )
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    walked: list[int] = []
    real = scene_mod._components

    def spy(cls: bytes, gw: int, gh: int, background: int):
        comps = real(cls, gw, gh, background)
        walked.append(sum(1 for _ in re.finditer(rb"(.)\1*", cls, re.DOTALL)))
        return comps

    monkeypatch.setattr(scene_mod, "_components", spy)
    full_grid = scene_mod._runs(scene_mod._classify(noise))
    assert full_grid > scene_mod.RUN_BUDGET
    sc = analyse_bytes(buf.getvalue())
    assert sc.regions == ()
    assert walked
    assert walked[0] <= scene_mod.RUN_BUDGET + 256  # runs across row ends merge in the count


def test_solid_scene_keeps_the_full_grid(image_factory):
    img, size = decode_image(
        image_factory(size=(512, 512), shapes=[("red", (100, 100, 301, 301))], fmt="PNG")
    )
    sc = analyse_image(img, size=size)
    [region] = sc.regions
    # 512 px on a 256 grid: 2 px per cell, so the box is exact to 2 px
    assert region.box == pytest.approx((100, 100, 302, 302), abs=2)
