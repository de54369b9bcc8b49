"""The closing note's table, kept true: each request form x (vLLM 0.32, emulator, legacy mode).

Runs ``scripts/wire_matrix.py`` (its two emulators are its own child processes, stopped at the
end; the tier's vLLM is only used) with 3 answers per form and server, and compares every cell
with the table measured for issue 12 (5 answers each, ``/work/notes/issue-12.md``). A change in
what a server does with a form, or in how the script tells it, fails here with the cell named.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)

SCRIPT = Path(__file__).parents[2] / "scripts" / "wire_matrix.py"

EXPECTED: dict[str, tuple[str, str, str]] = {
    "guided_choice (top level)": ("ignored", "ignored", "honoured"),
    "guided_regex (top level)": ("ignored", "ignored", "honoured"),
    "guided_json (top level)": ("ignored", "ignored", "honoured"),
    "guided_grammar (top level)": ("ignored", "ignored", "honoured"),
    "guided_choice (top level), streamed": ("ignored", "ignored", "honoured"),
    "structured_outputs.choice": ("honoured", "honoured", "honoured"),
    "structured_outputs.regex": ("honoured", "honoured", "honoured"),
    "structured_outputs.json": ("honoured", "honoured", "honoured"),
    "structured_outputs.grammar": ("honoured", "honoured", "honoured"),
    "structured_outputs.choice, streamed": ("honoured", "honoured", "honoured"),
    "response_format json_schema": ("honoured", "honoured", "honoured"),
    "response_format json_schema, streamed": ("honoured", "honoured", "honoured"),
    "response_format json_schema: vqa task schema": ("honoured", "honoured", "honoured"),
    "response_format json_object": ("honoured", "honoured", "honoured"),
    "nvext.guided_choice": ("ignored", "ignored", "honoured"),
    "nvext.guided_json": ("ignored", "ignored", "honoured"),
    "structured_outputs + response_format": ("rejected (400)", "rejected (400)", "rejected (400)"),
    "two kinds in structured_outputs": ("rejected (400)", "rejected (400)", "rejected (400)"),
    "top_k=1 (top level)": ("honoured", "accepted", "accepted"),
    "nvext.top_k=1": ("ignored", "ignored", "accepted"),
    "repetition_penalty=1.5 (top level)": ("accepted", "accepted", "accepted"),
    "ignore_eos (top level)": ("accepted", "honoured", "honoured"),
    "nvext.ignore_eos": ("ignored", "ignored", "honoured"),
    "min_tokens=20 (top level)": ("accepted", "honoured", "honoured"),
    "logprobs + top_logprobs": ("honoured", "ignored", "ignored"),
    "prompt_logprobs=1": ("honoured", "ignored", "ignored"),
    "mm_processor_kwargs max_pixels (image)": ("honoured", "ignored", "ignored"),
    "media_io_kwargs keyed {'image': {}} (image)": ("accepted", "accepted", "accepted"),
    "media_io_kwargs flat {'fps': 2} (image)": (
        "rejected (400)",
        "rejected (400)",
        "rejected (400)",
    ),
}


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("wire_matrix", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wire_matrix"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_request_form_does_on_each_server_what_the_table_says(
    vllm_server: Any, tmp_path: Path
) -> None:
    matrix = _script()
    assert list(EXPECTED) == [form.name for form in matrix.FORMS]
    state = os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")
    args = argparse.Namespace(
        vllm_env=f"{state}/vllm/env", tries=3, log_dir=str(tmp_path), out=None
    )
    table = matrix.run(args)
    wrong = {
        f"{form} on {server}": f"{table[form][server]['outcome']} (expected {want}): "
        f"{table[form][server].get('evidence')}"
        for form, row in EXPECTED.items()
        for server, want in zip(matrix.SERVERS, row, strict=True)
        if table[form][server]["outcome"] != want
    }
    assert not wrong, wrong
