"""Against ``python -m nim_async.emulator --fail-rate 1 --fail-status 503`` (a separate process):
a blocking script's single call and batch send exactly the documented attempts per input."""

from __future__ import annotations

from pathlib import Path

from .conftest import assert_clean, run_script


async def test_sends_per_input_for_a_call_and_inside_a_batch(
    failing_emulator: int, tmp_path: Path
) -> None:
    ended = await run_script(
        f"""
import urllib.request
from PIL import Image
from nim_async import NIMPredictor
from nim_async.bench.server_metrics import parse_prometheus
from nim_async.errors import ServerError

Image.new("RGB", (64, 64), (220, 20, 20)).save("image.png")
URL = "http://127.0.0.1:{failing_emulator}"

def errors_503():
    text = urllib.request.urlopen(URL + "/v1/metrics").read().decode()
    counters = parse_prometheus(text)
    return int(sum(v for k, v in counters.items() if k.endswith(":request_error_total")))

p = NIMPredictor(model_name="cosmos-reason1-7b", task_type="vqa", port={failing_emulator})
try:
    p(source="image.png")
except ServerError as e:
    print("call", e.status_code, errors_503())
results = list(p.predict_many(["image.png"] * 3, concurrency=3))
print("batch", [r.error.status_code for r in results], errors_503())
""",
        tmp_path,
    )
    assert ended.returncode == 0, ended.stderr
    assert_clean(ended)
    call, batch = ended.stdout.splitlines()
    assert call == "call 503 4"  # NIMPredictor's documented retries=3: 4 sends
    assert batch == "batch [503, 503, 503] 16"  # 4 more per input, not 4 x 3
