"""The merged checkpoint served by a real vLLM: the adapter demonstrably applies.

A second ``vllm serve`` (the tier's venv, the tier's flags, another port) serves the checkpoint
merged by :func:`merged_checkpoint` from the tiny random Qwen2.5-VL and the ``served`` adapter
(every language linear layer). With temperature 0 and the same prompt token ids, its first
tokens must equal what transformers generates greedily for peft's own merged model, and differ
from the base model's (transformers, and the tier's server, which serves the base).
Random weights: the tokens are meaningless; only their equality is the point.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nim_async.deploy.lora import merged_checkpoint

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]

SERVED = "merged-lora"
FIRST = 4  # tokens compared: vLLM's CPU kernels and transformers' agree on the first few


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def merged_server(
    peft_built: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    vllm_bin = peft_built.env.get("NIM_VLLM_BIN")
    if not vllm_bin or not Path(vllm_bin).exists():
        pytest.fail(f"NIM_VLLM_BIN missing in the tier's env: {peft_built.env}")
    cache = tmp_path_factory.mktemp("served") / ".nim_async_merged"
    merged = merged_checkpoint(peft_built.base("qwen"), peft_built.adapter("served"), cache)
    port = _free_port()
    log = cache.parent / "vllm.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }
    cmd = [
        vllm_bin, "serve", str(merged), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED, "--max-model-len", "4096", "--dtype", "bfloat16",
        "--enforce-eager", "--limit-mm-per-prompt", '{"image": 4, "video": 0}',
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not up in 300 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url, merged
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _greedy(url: str, model: str, prompt: list[int], n: int) -> list[int]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": n,
        "min_tokens": n,
        "temperature": 0,
        "return_token_ids": True,
    }
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return [int(t) for t in response.json()["choices"][0]["token_ids"]]


def test_merged_model_served_by_vllm_is_the_fine_tune(
    merged_server: tuple[str, Path], peft_built: Any
) -> None:
    url, merged = merged_server
    gen = peft_built.generate("served")
    prompt, n = gen["prompt_ids"], len(gen["merged"])
    assert gen["merged"][:FIRST] != gen["base"][:FIRST]  # the adapter changes the greedy output
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert models["data"][0]["root"] == str(merged)
    served = _greedy(url, SERVED, prompt, n)
    print(  # evidence for the closing note (pytest -rP shows it)
        f"greedy ids: merged on vLLM {served}; peft-merged on transformers {gen['merged']}; "
        f"base on transformers {gen['base']}"
    )
    assert served[:FIRST] == gen["merged"][:FIRST]
    assert served[:FIRST] != gen["base"][:FIRST]


def test_tier_server_serves_the_base_tokens(peft_built: Any) -> None:
    """The same comparison on the base: vLLM and transformers agree there too."""
    url, model = peft_built.env.get("NIM_VLLM_URL"), peft_built.env.get("NIM_VLLM_MODEL")
    try:
        up = bool(url) and httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        up = False
    if not up:
        pytest.skip("the tier's vLLM server is not running (scripts/vllm-env.sh up)")
    gen = peft_built.generate("served")
    served = _greedy(str(url), str(model), gen["prompt_ids"], len(gen["base"]))
    assert served[:FIRST] == gen["base"][:FIRST]
