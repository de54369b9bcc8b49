"""Issue 17 end to end on the real Docker engine: ``NIMConfig(replicas=3)`` of the emulator image
(an emulator, not a model), one predictor over ``result.endpoints``; each replica's own
``/v1/metrics`` says what it served; one replica is ``docker kill``ed mid-batch and the batch
output still has every input exactly once, all ok."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient
from nim_async.deploy.spec import DEPLOYMENT_LABEL
from nim_async.predict.journal import BatchJournal
from nim_async.predict.predictor import AsyncNIMPredictor

pytestmark = pytest.mark.docker

MakeConfig = Callable[..., NIMConfig]
COLOURS = ["red", "blue", "green", "orange"]
QUESTION = "How many shapes are there?"
N = 200


async def _served(url: str) -> int:
    """Requests the server finished (stop or length), from its own ``/v1/metrics``."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        text = (await client.get(f"{url}/v1/metrics")).text
    total = 0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total") and "abort" not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.fixture
def images(tmp_path: Path, image_factory: Any) -> dict[str, str]:
    """200 small PNGs; image i has 1 + i % 3 shapes. Maps each path to its answer."""
    folder = tmp_path / "images"
    folder.mkdir()
    truth: dict[str, str] = {}
    for i in range(N):
        count = 1 + i % 3
        shapes = [
            (COLOURS[(i + k) % 4], (4 + 30 * k, 6 + i % 7, 28 + 30 * k, 40)) for k in range(count)
        ]
        path = folder / f"img{i:03d}.png"
        path.write_bytes(image_factory(size=(100, 64), shapes=shapes, fmt="PNG"))
        truth[str(path)] = str(count)
    return truth


async def test_three_replicas_share_a_batch_and_one_killed_mid_batch_loses_nothing(
    nim_config: MakeConfig,
    free_ports: Callable[[int], int],
    derived_image: Any,
    docker_client: DockerClient,
    images: dict[str, str],
    tmp_path: Path,
) -> None:
    # a few ms per token, so that a batch is still running when a replica is killed
    tag = await derived_image("--itl-ms", "3")
    config = nim_config(tag=tag, port=free_ports(3), replicas=3)
    result = await AsyncNIMDeployer(config, quiet=True).deploy()
    assert len(set(result.endpoints)) == 3
    paths = list(images)

    async with AsyncNIMPredictor(task_type="vqa", endpoints=result) as p:
        assert p.model_name == config.served_model_name
        # 1) 200 predictions over the three replicas: all correct, a fair share each
        answers: dict[int, str] = {}
        async for item in p.predict_many(paths, concurrency=12, user_prompt=QUESTION):
            assert item.ok, item.error
            assert item.response is not None
            answers[item.index] = item.response.plain_result
        assert [answers[i] for i in range(N)] == [images[path] for path in paths]
        served = [await _served(url) for url in result.endpoints]
        assert sum(served) == N
        assert min(served) >= N // 3 * 0.6, served  # least-outstanding: about 67 each

        # 2) the same 200 again, replica 1 docker-killed mid-batch: every input ok exactly once
        out = tmp_path / "results.jsonl"
        victim = f"{config.container_name}-r1"
        written = 0
        with BatchJournal(out) as journal:
            async for item in p.predict_many(
                journal.pending(paths), concurrency=12, user_prompt=QUESTION
            ):
                journal.record(item)
                written += 1
                if written == 60:
                    kill = await asyncio.create_subprocess_exec(
                        "docker",
                        "kill",
                        victim,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    assert await kill.wait() == 0
            assert journal.ok == N
            assert journal.failed == 0
        status = p.endpoint_status()
    info = await docker_client.inspect_container(victim)
    assert info is not None
    assert not info["State"]["Running"]  # it really died while the batch ran
    assert info["State"]["ExitCode"] == 137
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == N  # one line per input: nothing lost, nothing twice
    assert Counter(r["key"] for r in records) == Counter(paths)
    assert sorted(r["index"] for r in records) == list(range(N))
    assert all(r["status"] == "ok" for r in records)
    assert not status[1].up
    assert status[1].failed >= 1  # it had requests in flight when it died
    after = [await _served(url) for i, url in enumerate(result.endpoints) if i != 1]
    assert sum(after) - (served[0] + served[2]) >= N - 60  # the rest went to the live two

    assert await AsyncNIMDeployer.stop(config.container_name, quiet=True, grace=5)
    assert (
        await docker_client.list_containers(labels={DEPLOYMENT_LABEL: config.container_name}) == []
    )
