"""How long does ``deploy()`` of ``NIMConfig(replicas=N)`` take, against one replica?

Needs the real Docker engine and local registry of ``scripts/test-env.sh up`` (root). The NIM
image is the emulator's (an emulator, not a model), started with ``--startup-seconds S`` (its
readiness answers 503 for S seconds, a stand-in for loading a model). Replicas start and are
waited for concurrently, so with a loading time the deploy of N replicas should take about as
long as one (goal: ratio <= 1.5 at S = 2), not N times. Runs alternate (1, N, 1, N, ...) so that
drift of the shared machine hits both alike; the peer is one replica in the same run. ``stop``
of the whole set is timed too (every replica at once).

    .venv/bin/python benchmarks/deploy_replicas.py [--replicas 3] [--runs 3] [--startup-seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uuid

from deploy_latency import derived, free_port, load_env

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.ports import port_taken

RATIO_GOAL = 1.5


def free_ports(n: int) -> int:
    while True:
        base = free_port()
        if base + n <= 65536 and not any(port_taken("127.0.0.1", base + i) for i in range(n)):
            return base


async def one_run(env: dict[str, str], tag: str, cache: str, replicas: int) -> tuple[float, float]:
    cfg = NIMConfig(
        nvidia_api_key=env["NIM_TEST_NGC_KEY"],
        registry=env["NIM_TEST_REGISTRY_PATH"],
        image_name=env["NIM_TEST_IMAGE_NAME"],
        tag=tag,
        served_model_name=f"bench-{uuid.uuid4().hex[:8]}",
        port=free_ports(replicas),
        replicas=replicas,
        gpus=None,
        shm_size="64MB",
        local_cache_dir=cache,
        startup_timeout=120,
        stream_logs=False,
    )
    started = time.perf_counter()
    try:
        result = await AsyncNIMDeployer(cfg, quiet=True).deploy()
        deployed = time.perf_counter() - started
        assert len(result.endpoints) == replicas
    finally:
        stop_started = time.perf_counter()
        await AsyncNIMDeployer.stop(cfg.container_name, quiet=True, grace=2)
        stopped = time.perf_counter() - stop_started
    return deployed, stopped


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--startup-seconds", type=float, default=2.0)
    args = parser.parse_args()
    env = load_env()
    tag = await derived(env, "--startup-seconds", f"{args.startup_seconds:g}")
    times: dict[int, list[tuple[float, float]]] = {1: [], args.replicas: []}
    with tempfile.TemporaryDirectory() as cache:
        await one_run(env, tag, cache, 1)  # warm-up (page cache, first container of the image)
        for _ in range(args.runs):
            for n in (1, args.replicas):
                times[n].append(await one_run(env, tag, cache, n))
    print(f"emulator image, --startup-seconds {args.startup_seconds:g}, {args.runs} runs each")
    for n, values in times.items():
        deploys = [d for d, _ in values]
        stops = [s for _, s in values]
        print(
            f"replicas={n}: deploy median {statistics.median(deploys):6.2f} s "
            f"(min {min(deploys):.2f}, max {max(deploys):.2f}); "
            f"stop median {statistics.median(stops):5.2f} s"
        )
    ratio = statistics.median(d for d, _ in times[args.replicas]) / statistics.median(
        d for d, _ in times[1]
    )
    verdict = "PASS" if ratio <= RATIO_GOAL else "FAIL"
    print(
        f"deploy time replicas={args.replicas} / replicas=1: {ratio:.2f}x  goal <= 1.5x  {verdict}"
    )
    return 0 if ratio <= RATIO_GOAL else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
