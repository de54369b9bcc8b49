"""cosmos-reason2's geometry: the client's Qwen3-VL resize against transformers' processor.

cosmos-reason2-2b / -8b are Qwen3-VL models. Their processor config
(``preprocessor_config.json``: ``Qwen3VLProcessor`` with ``Qwen2VLImageProcessorFast``,
``patch_size`` 16, ``merge_size`` 2, ``size`` {shortest_edge 65536, longest_edge 16777216}) is
rebuilt here in the real vLLM tier's venv (``NIM_VLLM_PYTHON`` from the tier's env file), and
for each size the resized image is read two ways, both compared with
:func:`nim_async.protocol.geometry.qwen3_vl_resize`:

* the processor itself, run on a blank image of that size: ``image_grid_thw`` x 16;
* transformers' ``smart_resize`` with ``factor=32``, the function vLLM's Qwen3-VL model code
  calls (``vllm/model_executor/models/qwen3_vl.py``) to count image tokens; used for the sizes
  too large to push through the processor on a CPU here.

Without the env file those tests skip (they fail under ``$CI``), like ``tests/vllm``; the
hand-derived values at the end run everywhere.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from nim_async.catalog import (
    KNOWN_IMAGES,
    QWEN3_VL_FACTOR,
    QWEN3_VL_MAX_PIXELS,
    QWEN3_VL_MIN_PIXELS,
    box_format_for_model,
)
from nim_async.protocol.geometry import qwen3_vl_resize, qwen_image_tokens, smart_resize

# Small, exact, odd, thin, portrait, around the 65536 floor, large (run through the processor).
PROCESSOR_SIZES = [
    (1, 1),
    (16, 16),
    (20, 20),
    (31, 33),
    (255, 257),
    (256, 256),
    (257, 255),
    (300, 200),
    (333, 77),
    (97, 1001),
    (640, 480),
    (480, 640),
    (1000, 10),
    (1000, 50),
    (1280, 720),
    (1920, 1080),
    (2000, 1500),
    (4000, 30),
    (1024, 3000),
]
# Beyond the 16777216 budget and odd sizes near it (rule only: too large for the processor here).
RULE_SIZES = [
    (4096, 4096),
    (4097, 4095),
    (5000, 4000),
    (6000, 4000),
    (8000, 6000),
    (12000, 9000),
    (4096, 4112),
    (20000, 100),
    (8191, 2049),
    *[(w, h) for w in (17, 45, 129, 511, 777, 1999, 3333) for h in (23, 64, 350, 1201, 2900)],
]

_SCRIPT = r"""
import json, sys
import numpy as np
from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
    Qwen2VLImageProcessor, smart_resize,
)
spec = json.loads(sys.stdin.read())
proc = Qwen2VLImageProcessor(
    patch_size=16, merge_size=2, temporal_patch_size=2,
    size={"shortest_edge": spec["min_pixels"], "longest_edge": spec["max_pixels"]},
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
)
out = {"processor": [], "rule": []}
for w, h in spec["processor"]:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    feats = proc(images=[img], return_tensors="np", input_data_format="channels_last")
    t, gh, gw = (int(v) for v in feats["image_grid_thw"][0])
    out["processor"].append([gw * 16, gh * 16, gh * gw // 4])
for w, h in spec["rule"]:
    rh, rw = smart_resize(h, w, factor=32, min_pixels=spec["min_pixels"],
                          max_pixels=spec["max_pixels"])
    out["rule"].append([rw, rh])
print(json.dumps(out))
"""


def _venv_python() -> Path:
    state = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env"))
    env_file = state / "vllm" / "env"
    reason = f"the real vLLM tier's env file {env_file} is missing (scripts/vllm-env.sh up)"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if line.startswith("export NIM_VLLM_PYTHON="):
                parts = shlex.split(line.partition("=")[2])
                if parts and Path(parts[0]).is_file():
                    return Path(parts[0])
        reason = f"{env_file} names no existing NIM_VLLM_PYTHON"
    if os.environ.get("CI"):
        pytest.fail(reason + " ($CI is set: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def reference() -> dict[str, list[list[int]]]:
    """Resized sizes from transformers' Qwen2VLImageProcessor configured as cosmos-reason2's."""
    spec = {
        "min_pixels": QWEN3_VL_MIN_PIXELS,
        "max_pixels": QWEN3_VL_MAX_PIXELS,
        "processor": PROCESSOR_SIZES,
        "rule": RULE_SIZES,
    }
    done = subprocess.run(
        [str(_venv_python()), "-c", _SCRIPT],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, list[list[int]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_cosmos_reason2_catalog_matches_the_processor_config() -> None:
    for name in ("cosmos-reason2-2b", "cosmos-reason2-8b"):
        spec = KNOWN_IMAGES[name]
        assert spec.patch_size == QWEN3_VL_FACTOR == 16 * 2
        assert (spec.min_pixels, spec.max_pixels) == (65536, 16777216)
        assert spec.box_format == box_format_for_model(name) == "norm1000"
        assert spec.model_types == ("qwen3_vl",)


@pytest.mark.vllm
def test_resize_matches_the_processor(reference: dict[str, list[list[int]]]) -> None:
    mismatches = []
    for (w, h), (pw, ph, tokens) in zip(PROCESSOR_SIZES, reference["processor"], strict=True):
        got = qwen3_vl_resize(w, h)
        count = qwen_image_tokens(
            w, h, factor=32, min_pixels=QWEN3_VL_MIN_PIXELS, max_pixels=QWEN3_VL_MAX_PIXELS
        )
        if got != (pw, ph) or count != tokens:
            mismatches.append(f"{w}x{h}: client {got} ({count} tokens), processor {pw}x{ph}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.vllm
def test_resize_matches_transformers_rule(reference: dict[str, list[list[int]]]) -> None:
    mismatches = [
        f"{w}x{h}: client {qwen3_vl_resize(w, h)}, transformers {tuple(ref)}"
        for (w, h), ref in zip(RULE_SIZES, reference["rule"], strict=True)
        if qwen3_vl_resize(w, h) != tuple(ref)
    ]
    assert not mismatches, "\n".join(mismatches)
    over_budget = [s for s in RULE_SIZES if s[0] * s[1] > QWEN3_VL_MAX_PIXELS]
    assert over_budget, "the cases must include images beyond the pixel budget"


def test_resize_known_values_without_the_venv() -> None:
    # Hand-derived from the processor's rule (factor 32, min 65536, max 16777216).
    assert qwen3_vl_resize(640, 480) == (640, 480)
    assert qwen3_vl_resize(1920, 1080) == (1920, 1088)
    assert qwen3_vl_resize(100, 100) == (256, 256)  # raised to 65536 pixels
    assert qwen3_vl_resize(8000, 6000) == (4704, 3520)  # down to the 4096 x 4096 budget
    assert smart_resize(1000, 10, factor=28, min_pixels=3136) == (560, 28)
    with pytest.raises(ValueError, match="200"):
        qwen3_vl_resize(3000, 10)
