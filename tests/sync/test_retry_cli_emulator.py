"""Against ``python -m nim_async.emulator --fail-rate 1 --fail-status 503`` (a separate process):
a blocking script's single call and batch, and the ``nim-async predict`` / ``nim-async batch``
commands, send exactly the documented attempts per input, counted by the emulator's own
``/v1/metrics``. Each retry is a record on the ``nim_async`` logger, never a line on stderr.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from nim_async.bench.server_metrics import parse_prometheus

from .conftest import assert_clean, run_script

NIM_ASYNC = Path(sys.executable).parent / "nim-async"
COMMAND = [str(NIM_ASYNC)] if NIM_ASYNC.exists() else [sys.executable, "-m", "nim_async.cli"]


async def _errors_503(port: int) -> int:
    def read() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", None, 10) as answer:
            return str(answer.read().decode())

    counters = parse_prometheus(await asyncio.to_thread(read))
    return int(sum(v for k, v in counters.items() if k.endswith(":request_error_total")))


async def test_sends_per_input_for_a_call_and_inside_a_batch(
    failing_emulator: int, tmp_path: Path
) -> None:
    ended = await run_script(
        f"""
import logging, urllib.request
from PIL import Image
from nim_async import NIMPredictor
from nim_async.bench.server_metrics import parse_prometheus
from nim_async.errors import ServerError

Image.new("RGB", (64, 64), (220, 20, 20)).save("image.png")
URL = "http://127.0.0.1:{failing_emulator}"

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.retries = []
    def emit(self, record):
        if record.getMessage().startswith("retrying "):
            self.retries.append(record.name)

def errors_503():
    text = urllib.request.urlopen(URL + "/v1/metrics").read().decode()
    counters = parse_prometheus(text)
    return int(sum(v for k, v in counters.items() if k.endswith(":request_error_total")))

p = NIMPredictor(model_name="cosmos-reason1-7b", task_type="vqa", port={failing_emulator})
try:
    p(source="image.png")  # no logging set up: a retry must print nothing
except ServerError as e:
    print("call", e.status_code, errors_503())
records = Records()
logging.getLogger("nim_async").addHandler(records)
logging.getLogger("nim_async").setLevel(logging.INFO)
results = list(p.predict_many(["image.png"] * 3, concurrency=3))
print("batch", [r.error.status_code for r in results], errors_503())
print("logged", len(records.retries), sorted(set(records.retries)))
""",
        tmp_path,
    )
    assert ended.returncode == 0, ended.stderr
    assert_clean(ended)
    assert "retrying" not in ended.stderr  # logged, never printed
    call, batch, logged = ended.stdout.splitlines()
    assert call == "call 503 4"  # NIMPredictor's documented retries=3: 4 sends
    assert batch == "batch [503, 503, 503] 16"  # 4 more per input, not 4 x 3
    assert logged == "logged 9 ['nim_async']"  # 3 retries per input, each one record


async def _cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"nim-async {' '.join(args)} did not end within 90 s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_predict_and_batch_send_the_documented_attempts(
    failing_emulator: int, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 20, 20)).save(images / f"img{i}.png")
    url = f"http://127.0.0.1:{failing_emulator}"

    # nim-async predict: the predictor's default retries=3, so 4 sends (a stream that never
    # started is retried like a plain call).
    rc, _, err = await _cli(tmp_path, "predict", str(images / "img0.png"), "--url", url)
    assert rc == 1, err
    assert "HTTP 503" in err
    assert "retrying" not in err
    assert "Traceback" not in err
    assert await _errors_503(failing_emulator) == 4

    # nim-async batch: --retries is the batch's (the predictor gets 0): 1 + RETRIES sends.
    batch = ["batch", str(images), "--task", "vqa", "--url", url, "--no-progress"]
    rc, _, err = await _cli(tmp_path, *batch, "--out", "a.jsonl", "--retries", "1")
    assert rc == 1, err
    assert "0 ok, 3 failed" in err, err
    assert await _errors_503(failing_emulator) == 4 + 3 * 2

    rc, _, err = await _cli(tmp_path, *batch, "--out", "b.jsonl")  # default --retries 2
    assert rc == 1, err
    assert "retrying" not in err
    assert "Traceback" not in err
    assert await _errors_503(failing_emulator) == 4 + 3 * 2 + 3 * 3
