"""Every example runs: on the emulator it starts itself, and against a given ``--url``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_the_four_examples_exist() -> None:
    assert {"async_service.py", "sync_script.py", "batch_scoring.py", "streaming.py"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
async def test_example_runs_on_its_own_emulator(run_example: Any, name: str) -> None:
    rc, out, err = await run_example(name)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "emulator, not a model" in out


@pytest.mark.parametrize("name", ALL)
async def test_example_runs_against_url(run_example: Any, emulator: Any, name: str) -> None:
    rc, out, err = await run_example(name, "--url", emulator.url)
    assert rc == 0, err
    assert "Traceback" not in err
    # Given a URL, it starts no emulator of its own.
    assert "Using the embedded emulator" not in out


async def test_async_service_answers_and_rejects_bad_uploads(run_example: Any) -> None:
    rc, out, _ = await run_example("async_service.py")
    assert rc == 0
    assert out.count("'status': 200, 'answer': '4'") == 4
    assert "an invalid upload -> {'status': 400" in out


async def test_sync_script_grounds_streams_and_answers(run_example: Any) -> None:
    rc, out, _ = await run_example("sync_script.py")
    assert rc == 0
    assert re.search(r"^  a red square: \[\[\d+, \d+, \d+, \d+\]\]$", out, re.M)
    assert re.search(r"^streaming: \{\"phrase_grounding\"", out, re.M)
    assert "answer: 4" in out


async def test_batch_scoring_writes_one_line_per_image(run_example: Any, tmp_path: Path) -> None:
    out_file = tmp_path / "scores.jsonl"
    rc, out, _ = await run_example("batch_scoring.py", "--count", "15", "--out", str(out_file))
    assert rc == 0
    assert "15 scored, 0 failed" in out
    records = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(15))
    assert {r["status"] for r in records} == {"ok"}
    # img0000 has one rectangle, img0001 two, img0002 three.
    by_name = {Path(r["source"]).name: r["result"] for r in records}
    assert (by_name["img0000.png"], by_name["img0001.png"], by_name["img0002.png"]) == (
        "1",
        "2",
        "3",
    )


async def test_streaming_prints_tokens_then_the_parse(run_example: Any) -> None:
    rc, out, _ = await run_example("streaming.py")
    assert rc == 0
    match = re.search(r"^(\d+) pieces; first after", out, re.M)
    assert match
    assert int(match.group(1)) > 10
    assert "phrases: ['a blue circle', 'a red square', 'an orange circle'" in out
