"""Geometry: Qwen2.5-VL resize, token counting, box conventions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nim_async.catalog import BOX_FORMATS, box_format_for_model
from nim_async.protocol.geometry import (
    fit_within_budget,
    from_pixels,
    qwen_image_tokens,
    smart_resize,
    to_pixels,
)


@given(st.integers(1, 8000), st.integers(1, 8000))
def test_smart_resize_multiples_and_budget(w: int, h: int) -> None:
    if max(w, h) / min(w, h) > 150:
        return
    rw, rh = smart_resize(w, h)
    assert rw % 28 == 0
    assert rh % 28 == 0
    assert rw * rh <= 1280 * 28 * 28


def test_smart_resize_known_values() -> None:
    assert smart_resize(640, 480) == (644, 476)
    assert smart_resize(28, 28) == (56, 56)  # raised to min_pixels
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


def test_image_tokens_one_per_patch() -> None:
    assert qwen_image_tokens(640, 480) == (644 // 28) * (476 // 28)


def test_fit_within_budget_never_upscales() -> None:
    assert fit_within_budget(100, 50, 10_000) == (100, 50)
    w, h = fit_within_budget(4000, 3000, 1_000_000)
    assert w * h <= 1_000_000
    assert abs(w / h - 4 / 3) < 0.01


@pytest.mark.parametrize("fmt", BOX_FORMATS)
def test_box_round_trip(fmt: str) -> None:
    original, model_input = (1920, 1080), smart_resize(1280, 720)
    box = (100.0, 200.0, 900.0, 1000.0)
    there = from_pixels(box, fmt, original_size=original, model_input_size=model_input)  # type: ignore[arg-type]
    back = to_pixels(there, fmt, original_size=original, model_input_size=model_input)  # type: ignore[arg-type]
    assert back == pytest.approx(box)


def test_to_pixels_clamps_to_image() -> None:
    assert to_pixels(
        (-5, -5, 2000, 2000), "norm1000", original_size=(100, 100), model_input_size=(100, 100)
    ) == (0, 0, 100, 100)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("cosmos-reason1-7b", "qwen25-abs"),
        ("nvidia/Cosmos-Reason1-7B", "qwen25-abs"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen25-abs"),
        ("Qwen/Qwen3-VL-8B-Instruct", "norm1000"),
        ("cosmos-reason2-2b", "norm1000"),
        ("cosmos-reason2-8b", "norm1000"),
        ("nvidia/Cosmos-Reason2-8B", "norm1000"),
        ("my-vi-finetune", "norm1024"),
    ],
)
def test_default_box_format_by_model_name(name: str, fmt: str) -> None:
    assert box_format_for_model(name) == fmt


# Hand-derived (the derivations are in tests/emulator/test_geometry.py, which checks the
# emulator's own implementation against the same numbers): (w, h, max_pixels) -> model input.
@pytest.mark.parametrize(
    ("w", "h", "max_pixels", "expected"),
    [
        (640, 480, 1003520, (644, 476)),
        (320, 240, 50176, (252, 168)),
        (20, 15, 1003520, (84, 56)),
        (10, 900, 1003520, (28, 532)),
        (8000, 6000, 1003520, (1148, 840)),
        (5000, 30, 1003520, (5012, 28)),
        (5000, 30, 50176, (2884, 28)),
    ],
)
def test_smart_resize_matches_hand_derived_sizes(w: int, h: int, max_pixels: int, expected) -> None:
    assert smart_resize(w, h, max_pixels=max_pixels) == expected
    assert qwen_image_tokens(w, h, max_pixels=max_pixels) == (expected[0] // 28) * (
        expected[1] // 28
    )
