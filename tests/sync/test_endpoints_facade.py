"""The blocking NIMPredictor over several endpoints, in a plain script that must exit cleanly.

The scripts run in a fresh interpreter against in-process emulators (real HTTP); one endpoint
refuses connections, so a background health check is running when the script ends.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import assert_clean, run_script

SCRIPT = """
import sys
from PIL import Image
from nim_async import NIMPredictor
from nim_async.errors import EndpointsUnavailableError

Image.new("RGB", (96, 64), (220, 20, 20)).save("image.jpg")
URLS = {urls!r}

predictor = NIMPredictor(task_type="vqa", model_name="cosmos-reason1-7b", endpoints=URLS)
print("endpoints", len(predictor.endpoints))
answers = [predictor(source="image.jpg").answer for _ in range(6)]
print("calls", len(answers), all(answers))
tokens = list(predictor(source="image.jpg", stream=True))
print("streamed", bool(tokens))
items = list(predictor.predict_many(["image.jpg"] * 8, concurrency=4))
print("batch", sum(item.ok for item in items))
status = predictor.endpoint_status()
print("down", [s.url for s in status if not s.up] == [URLS[0]], status[0].reason)
print("served", sum(s.served for s in status))
{ending}
"""

ALL_DOWN = """
import sys
from nim_async import NIMPredictor
from nim_async.errors import EndpointsUnavailableError
from PIL import Image

Image.new("RGB", (32, 32), (0, 0, 200)).save("image.jpg")
predictor = NIMPredictor("cosmos-reason1-7b", "vqa", endpoints={urls!r}, retries=1)
try:
    predictor(source="image.jpg")
except EndpointsUnavailableError as exc:
    print("down", sorted(exc.endpoints) == sorted({urls!r}))
    sys.exit(3)
"""


def _dead() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "ending",
    ["predictor.close()", "pass  # never closed", "sys.exit(0)"],
    ids=["closed", "never-closed", "sys-exit"],
)
async def test_a_script_over_several_endpoints_exits_cleanly(
    start_emulator: Any, tmp_path: Path, ending: str
) -> None:
    async with start_emulator(itl_ms=1) as a, start_emulator(itl_ms=1) as b:
        urls = [_dead(), a.url, b.url]
        ended = await run_script(SCRIPT.format(urls=urls, ending=ending), tmp_path)
        assert ended.returncode == 0, ended.stderr
        assert_clean(ended)
        assert ended.stderr == ""
        lines = ended.stdout.splitlines()
        assert lines[:4] == ["endpoints 3", "calls 6 True", "streamed True", "batch 8"]
        assert lines[4] == "down True connection refused"
        assert lines[5] == "served 15"
        served = [sum(emu.metrics.success.values()) for emu in (a, b)]
        assert sum(served) == 15
        assert min(served) >= 5  # both live endpoints took a share


async def test_a_script_whose_endpoints_are_all_down_gets_a_clear_error(tmp_path: Path) -> None:
    urls = [_dead(), _dead()]
    ended = await run_script(ALL_DOWN.format(urls=urls), tmp_path)
    assert ended.returncode == 3, ended.stderr
    assert_clean(ended)
    assert ended.stdout.strip() == "down True"
