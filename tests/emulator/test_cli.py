"""The command line and the NIM container contract, run as a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from nim_async.emulator.cli import add_arguments, build_settings

PY = [sys.executable, "-m", "nim_async.emulator"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    env.update(extra)
    return env


async def _spawn(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *PY, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(300):
            assert proc.returncode is None, "the emulator exited early"
            try:
                if (await c.get("/v1/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the emulator never became ready")


def test_help_documents_every_option():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    out = subprocess.run([*PY, "--help"], capture_output=True, text=True, check=True).stdout
    for opt in options:
        assert opt in out, opt
    for action in parser._actions:
        assert action.help, action.option_strings
    assert "emulator" in out
    assert "NOT a model" in out
    for var in (
        "NIM_SERVER_PORT",
        "NIM_SERVED_MODEL_NAME",
        "NIM_MAX_MODEL_LEN",
        "NIM_MODEL_NAME",
        "NIM_CACHE_PATH",
    ):
        assert var in out


def test_env_contract_maps_to_settings(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("NIM_"):
            monkeypatch.delenv(k)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings, host, port = build_settings(parser.parse_args([]))
    assert (settings.served_model_name, settings.max_model_len, port) == (
        "cosmos-reason1-7b",
        8192,
        8000,
    )
    assert settings.box_format == "qwen25-abs"
    monkeypatch.setenv("NIM_SERVER_PORT", "9123")
    monkeypatch.setenv("NIM_SERVED_MODEL_NAME", "my-vi-model")
    monkeypatch.setenv("NIM_MAX_MODEL_LEN", "4096")
    monkeypatch.setenv("NIM_MODEL_NAME", str(tmp_path))
    settings, host, port = build_settings(parser.parse_args(["--host", "0.0.0.0"]))
    assert (host, port) == ("0.0.0.0", 9123)
    assert settings.served_model_name == "my-vi-model"
    assert settings.max_model_len == 4096
    assert settings.model_path == str(tmp_path)
    assert settings.box_format == "norm1024"
    # options win over the environment
    settings, _, port = build_settings(parser.parse_args(["--port", "1", "--max-model-len", "77"]))
    assert (port, settings.max_model_len) == (1, 77)


def test_guided_handling_flags():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default, _, _ = build_settings(parser.parse_args([]))
    assert (default.legacy_guided, default.effective_sampling_fields, default.vllm_version) == (
        False,
        "openai",
        "0.32.0",
    )
    legacy, _, _ = build_settings(parser.parse_args(["--legacy-guided"]))
    assert (legacy.legacy_guided, legacy.effective_sampling_fields, legacy.vllm_version) == (
        True,
        "both",
        "0.11.0",
    )
    nvext, _, _ = build_settings(
        parser.parse_args(["--legacy-guided", "--sampling-fields", "nvext"])
    )
    assert nvext.effective_sampling_fields == "nvext"


async def test_container_contract_and_sigterm(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    port = _free_port()
    env = _env(
        NIM_SERVER_PORT=str(port),
        NIM_SERVED_MODEL_NAME="custom-vlm",
        NIM_MAX_MODEL_LEN="2048",
        NIM_MODEL_NAME=str(weights),
        NIM_CACHE_PATH=str(tmp_path / "cache"),
    )
    proc = await _spawn(["--host", "127.0.0.1"], env)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, proc)
        async with httpx.AsyncClient(base_url=url) as c:
            card = (await c.get("/v1/models")).json()["data"][0]
            r = await c.post(
                "/v1/chat/completions",
                json={"model": "custom-vlm", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert card["id"] == "custom-vlm"
        assert card["root"] == str(weights)
        assert card["max_model_len"] == 2048
        assert r.status_code == 200
        assert (tmp_path / "cache").is_dir()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    log = out.decode()
    assert "emulator" in log
    assert "not a model" in log


async def test_port_zero_logs_the_bound_port():
    proc = await _spawn(["--port", "0"], _env())
    try:
        assert proc.stdout is not None
        port = None
        for _ in range(50):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port
        await _wait_ready(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


def test_missing_custom_weights_exit_nonzero(tmp_path):
    env = _env(NIM_MODEL_NAME=str(tmp_path / "absent"), NIM_SERVER_PORT=str(_free_port()))
    p = subprocess.run(PY, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "config.json" in p.stdout
    assert str(tmp_path / "absent") in p.stdout


def test_unwritable_cache_exits_with_permission_denied(tmp_path):
    cache = tmp_path / "ro"
    cache.mkdir()
    env = _env(NIM_CACHE_PATH=str(cache / "nim"), NIM_SERVER_PORT=str(_free_port()))
    cmd = list(PY)
    if os.geteuid() == 0:
        # root writes anywhere, so run as nobody (65534). Nobody may not be able to read the
        # checkout, the venv or tmp_path (a clone in a 0700 directory): keep exactly one
        # capability, CAP_DAC_READ_SEARCH (read and traverse, never write), so the interpreter
        # and the package load wherever they live and the write to the cache still fails.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a directory unwritable")
        cmd = [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            *cmd,
        ]
    else:
        cache.chmod(0o500)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    finally:
        cache.chmod(0o700)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Permission denied" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr  # the package loaded: the cache check failed


def test_laptop_run_skips_the_cache_check(tmp_path):
    # without NIM_CACHE_PATH / --nim-container the default /opt/nim/.cache is not required
    port = _free_port()
    proc = subprocess.Popen(
        [*PY, "--port", str(port)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.05)
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()


def test_exit_after_kills_the_process():
    p = subprocess.run(
        [*PY, "--port", "0", "--exit-after", "0.3"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "exit-after" in p.stdout


def test_invalid_env_value_exits_nonzero():
    p = subprocess.run(
        PY, env=_env(NIM_MAX_MODEL_LEN="lots"), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 1
    assert "NIM_MAX_MODEL_LEN" in p.stdout
