"""Plain blocking scripts end promptly, with the right status and a clean stderr, on every path.

Each test runs a script in a fresh interpreter (``sys.executable``) against the in-process
emulator over real HTTP, then checks the exit status, a generous time bound (a hang fails) and
that stderr carries no ``Unclosed``, ``Exception ignored`` or traceback.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import Ended, assert_clean, run_script

PRELUDE = """
import sys
from PIL import Image
Image.new("RGB", (96, 64), (220, 20, 20)).save("image.jpg")
PORT = {port}
"""

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def _tracebacks(stderr: str) -> int:
    """Uncaught errors printed: tracebacks minus those chained to another (``from exc``)."""
    chained = stderr.count("direct cause of the following exception") + stderr.count(
        "During handling of the above exception"
    )
    return stderr.count("Traceback (most recent call last)") - chained


def _ok(ended: Ended) -> None:
    assert ended.returncode == 0, ended.stderr
    assert_clean(ended)


async def test_seed_inference_examples_as_written(emulator: Any, tmp_path: Path) -> None:
    # The seed's "Run Inference", "Guided Decoding" and "__call__()" examples, never closed.
    ended = await run_script(
        PRELUDE.format(port=emulator.port)
        + """
from nim_async import NIMPredictor, NIMSamplingParams

predictor = NIMPredictor(
    model_name="cosmos-reason1-7b",
    task_type="phrase-grounding",
    port=PORT
)

# Simple inference
result = predictor(source="image.jpg", stream=False)

# With sampling params
params = NIMSamplingParams(temperature=0.7, max_tokens=512)
result = predictor(source="image.jpg", stream=False, sampling_params=params)

# Constrain output to choices
params = NIMSamplingParams(
    guided_choice=["yes", "no", "maybe"]
)
result = predictor(
    source="image.jpg",
    user_prompt="Is there a person?",
    stream=False,
    sampling_params=params
)

# Non-streaming
result = predictor(
    source="image.jpg",
    user_prompt="Describe this image",
    stream=False,
    sampling_params=None
)

# Streaming
gen = predictor(source="image.jpg", stream=True)
for token in gen:
    print(token, end="", flush=True)
print()
print("END")
""",
        tmp_path,
    )
    _ok(ended)
    assert ended.stdout.rstrip().endswith("END")


async def test_seed_deploy_failure_pattern_exits(tmp_path: Path) -> None:
    # The hang of issue 11: a failed deploy, the deployer still referenced at exit.
    ended = await run_script(
        """
from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError
deployer = NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True)
try:
    deployer.deploy()
except NIMDeploymentError as e:
    print("failed:", type(e).__name__)
print("end of script")
""",
        tmp_path,
        env=NO_DOCKER,
    )
    _ok(ended)
    assert ended.stdout.splitlines() == ["failed: DockerUnavailableError", "end of script"]


SEED_DEPLOYER_SETUP = """
from nim_async import NIMDeployer, NIMConfig

# Default deployment (uses NGC_API_KEY env var)
deployer = NIMDeployer()

# With custom config
config = NIMConfig(nvidia_api_key="nvapi-...", port=8000)
deployer = NIMDeployer(config)
"""

SEED_DEPLOY_ERROR = """
from nim_async import NIMDeploymentError

try:
    deployer.deploy()
except NIMDeploymentError as e:
    print(f"Deployment failed: {e}")
"""


async def test_seed_deployer_and_error_handling_examples_as_written(tmp_path: Path) -> None:
    # The seed's "Initialize" and "Error Handling" blocks, verbatim (vi.deployment.nim ->
    # nim_async), Docker unreachable: once with console output, once in quiet mode.
    ended = await run_script(
        SEED_DEPLOYER_SETUP
        + SEED_DEPLOY_ERROR
        + """
# Quiet mode (no console output)
deployer = NIMDeployer(config, quiet=True)
"""
        + SEED_DEPLOY_ERROR,
        tmp_path,
        env={**NO_DOCKER, "NGC_API_KEY": "nvapi-not-a-real-key"},
    )
    _ok(ended)
    lines = ended.stdout.splitlines()
    assert len(lines) == 2
    assert all(
        line.startswith("Deployment failed: Cannot reach the Docker daemon") for line in lines
    )


@pytest.mark.parametrize(
    "example",
    [
        # "Quick Deploy", verbatim: the deploy raises, uncaught.
        """
from nim_async import NIMDeployer, NIMConfig

config = NIMConfig(nvidia_api_key="nvapi-...")
deployer = NIMDeployer(config)
result = deployer.deploy()

print(f"Running on port {result.port}")
""",
        # "Stop Container", verbatim: the stop raises, uncaught.
        """
from nim_async import NIMDeployer

success = NIMDeployer.stop("cosmos-reason1-7b")

if success:
    print("Container stopped")
else:
    print("Container not found")
""",
    ],
    ids=["quick-deploy", "stop"],
)
async def test_seed_deploy_examples_as_written_fail_with_status_1(
    tmp_path: Path, example: str
) -> None:
    # Docker unreachable: the error ends the script (status 1, its one traceback), no hang.
    ended = await run_script(example, tmp_path, env=NO_DOCKER)
    assert ended.returncode == 1, ended.stderr
    assert _tracebacks(ended.stderr) == 1
    assert (
        ended.stderr.rstrip().splitlines()[-1].startswith("nim_async.errors.DockerUnavailableError")
    )
    assert "Unclosed" not in ended.stderr
    assert "Exception ignored" not in ended.stderr
    assert ended.stdout == ""


@pytest.mark.parametrize("style", ["with", "close"])
async def test_closed_explicitly(emulator: Any, tmp_path: Path, style: str) -> None:
    body = {
        "with": """
with NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT) as p:
    p(source="image.jpg")
    list(p(source="image.jpg", stream=True))
with NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True) as d:
    try:
        d.deploy()
    except NIMDeploymentError:
        pass
""",
        "close": """
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
p(source="image.jpg")
list(p(source="image.jpg", stream=True))
p.close()
p.close()
try:
    p(source="image.jpg")
except RuntimeError:
    print("closed")
d = NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True)
try:
    d.deploy()
except NIMDeploymentError:
    pass
d.close()
""",
    }[style]
    ended = await run_script(
        PRELUDE.format(port=emulator.port)
        + "from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError, NIMPredictor\n"
        + body,
        tmp_path,
        env=NO_DOCKER,
    )
    _ok(ended)


async def test_temporary_objects(emulator: Any, tmp_path: Path) -> None:
    ended = await run_script(
        PRELUDE.format(port=emulator.port)
        + """
from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError, NIMPredictor
print(NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)(source="image.jpg").task_type)
print(len("".join(NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)(
    source="image.jpg", stream=True))) > 0)
try:
    NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True).deploy()
except NIMDeploymentError as e:
    print(type(e).__name__)
""",
        tmp_path,
        env=NO_DOCKER,
    )
    _ok(ended)
    assert ended.stdout.splitlines() == ["vqa", "True", "DockerUnavailableError"]


async def test_objects_kept_alive_by_a_caught_exception(tmp_path: Path) -> None:
    # The saved exceptions' tracebacks hold the frames, so the objects live until shutdown.
    ended = await run_script(
        PRELUDE.format(port=9)
        + """
from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError, NIMPredictor
from nim_async.errors import ServiceUnavailableError
saved = []
try:
    NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT, retries=0)(source="image.jpg")
except ServiceUnavailableError as e:
    saved.append(e)
try:
    NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True).deploy()
except NIMDeploymentError as e:
    saved.append(e)
cycle = {"errors": saved}
cycle["self"] = cycle  # collected only at interpreter shutdown
print([type(e).__name__ for e in saved])
""",
        tmp_path,
        env=NO_DOCKER,
    )
    _ok(ended)
    assert "ServiceUnavailableError" in ended.stdout
    assert "DockerUnavailableError" in ended.stdout


async def test_twenty_repetitions_in_one_process(emulator: Any, tmp_path: Path) -> None:
    ended = await run_script(
        PRELUDE.format(port=emulator.port)
        + """
from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError, NIMPredictor
for i in range(20):
    p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
    p(source="image.jpg")
    for _ in p(source="image.jpg", stream=True):
        pass
    d = NIMDeployer(NIMConfig(nvidia_api_key="nvapi-x", gpus=None), quiet=True)
    try:
        d.deploy()
    except NIMDeploymentError:
        pass
print("done")
""",
        tmp_path,
        env=NO_DOCKER,
    )
    _ok(ended)
    assert ended.stdout.strip() == "done"


async def test_predictors_dropped_in_other_threads(emulator: Any, tmp_path: Path) -> None:
    ended = await run_script(
        PRELUDE.format(port=emulator.port)
        + """
import gc, threading
from nim_async import NIMPredictor

def work():
    p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
    p(source="image.jpg")
    del p          # finalized in this thread
    gc.collect()

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
keep = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
keep(source="image.jpg")

def busy():
    # A daemon thread still calling at exit gets an error (never a hang), which it handles.
    try:
        while True:
            keep(source="image.jpg")
    except Exception:
        pass

threading.Thread(target=busy, daemon=True).start()
print("done")
""",
        tmp_path,
    )
    _ok(ended)


async def test_server_down(tmp_path: Path) -> None:
    ended = await run_script(
        PRELUDE.format(port=9)
        + """
from nim_async import NIMPredictor
from nim_async.errors import ServiceUnavailableError
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
try:
    p(source="image.jpg")
except ServiceUnavailableError:
    print("unavailable")
try:
    for _ in p(source="image.jpg", stream=True):
        pass
except ServiceUnavailableError:
    print("unavailable")
print(list(p.predict_many(["image.jpg"] * 3, concurrency=2))[0].error.__class__.__name__)
""",
        tmp_path,
    )
    _ok(ended)
    assert ended.stdout.split() == ["unavailable", "unavailable", "ServiceUnavailableError"]


async def test_an_uncaught_error_gives_status_1_and_only_its_traceback(tmp_path: Path) -> None:
    ended = await run_script(
        PRELUDE.format(port=9)
        + """
from nim_async import NIMPredictor
NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT, retries=0)(source="image.jpg")
""",
        tmp_path,
    )
    assert ended.returncode == 1
    assert _tracebacks(ended.stderr) == 1
    assert (
        ended.stderr.rstrip()
        .splitlines()[-1]
        .startswith("nim_async.errors.ServiceUnavailableError")
    )
    assert "Unclosed" not in ended.stderr
    assert "Exception ignored" not in ended.stderr


STREAM_INTERRUPTED = """
from nim_async import NIMPredictor, NIMSamplingParams
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
try:
    for i, token in enumerate(p(source="image.jpg", stream=True,
                                sampling_params=NIMSamplingParams(max_tokens=4000))):
        if i == 2:
            print("STREAMING", flush=True)
    print("stream ended without the interrupt")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""

BATCH_INTERRUPTED = """
import itertools
from nim_async import NIMPredictor
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
try:
    for i, result in enumerate(p.predict_many(itertools.repeat("image.jpg"), concurrency=4)):
        if i == 2:
            print("BATCHING", flush=True)
    print("batch ended without the interrupt")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


@pytest.mark.parametrize(
    ("script", "marker"), [(STREAM_INTERRUPTED, "STREAMING"), (BATCH_INTERRUPTED, "BATCHING")]
)
async def test_ctrl_c_during_a_blocking_stream_or_batch(
    start_emulator: Any, tmp_path: Path, script: str, marker: str
) -> None:
    async with start_emulator(itl_ms=20, ttft_ms=20) as emu:
        ended = await run_script(
            PRELUDE.format(port=emu.port) + script, tmp_path, interrupt_on=marker
        )
        assert ended.returncode == 130, ended.stderr
        assert_clean(ended)
        assert ended.stdout.splitlines()[-1] == "interrupted"
        if marker == "STREAMING":  # the stream was closed, so the server saw it aborted
            assert emu.metrics.success.get("abort", 0) >= 1


async def test_uncaught_ctrl_c_ends_by_sigint(start_emulator: Any, tmp_path: Path) -> None:
    async with start_emulator(itl_ms=20) as emu:
        ended = await run_script(
            PRELUDE.format(port=emu.port)
            + """
from nim_async import NIMPredictor, NIMSamplingParams
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
for i, token in enumerate(p(source="image.jpg", stream=True,
                            sampling_params=NIMSamplingParams(max_tokens=4000))):
    if i == 2:
        print("STREAMING", flush=True)
""",
            tmp_path,
            interrupt_on="STREAMING",
        )
    assert ended.returncode in (-signal.SIGINT, 128 + signal.SIGINT)
    assert _tracebacks(ended.stderr) == 1
    assert ended.stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    assert "Unclosed" not in ended.stderr
    assert "Exception ignored" not in ended.stderr


async def test_abandoned_generators(start_emulator: Any, tmp_path: Path) -> None:
    # Left mid-way: one by break (closed at once), the others never closed (collected or left
    # to the exit), while their requests are still in flight.
    async with start_emulator(itl_ms=5) as emu:
        ended = await run_script(
            PRELUDE.format(port=emu.port)
            + """
import itertools
from nim_async import NIMPredictor, NIMSamplingParams
p = NIMPredictor("cosmos-reason1-7b", "vqa", port=PORT)
long = NIMSamplingParams(max_tokens=2000)
for token in p(source="image.jpg", stream=True, sampling_params=long):
    break
kept = p(source="image.jpg", stream=True, sampling_params=long)
next(kept)
batch = p.predict_many(itertools.repeat("image.jpg"), concurrency=4)
next(batch)
next(p.predict_many(itertools.repeat("image.jpg"), concurrency=4))
print("done")
""",
            tmp_path,
        )
    _ok(ended)
    assert ended.stdout.strip() == "done"
