"""The emulator image builder: offline build through the real engine, image metadata, CLI."""

from __future__ import annotations

import re
import uuid

import pytest

from nim_async.deploy.docker import DockerClient
from nim_async.devtools.emulator_image import (
    CMD,
    IMAGE_LABEL,
    build_emulator_image,
    emulator_image_fingerprint,
    main,
)


def test_fingerprint_is_stable_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    first = emulator_image_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert emulator_image_fingerprint() == first
    assert main(["--fingerprint"]) == 0
    assert capsys.readouterr().out.strip() == first


def test_cli_requires_a_tag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "--tag" in capsys.readouterr().err


@pytest.mark.docker
@pytest.mark.slow
async def test_build_emulator_image_offline(docker_env: object) -> None:
    tag = f"nim-async-image-test:{uuid.uuid4().hex[:8]}"
    image_id = await build_emulator_image(tag, quiet=True)
    try:
        async with DockerClient() as docker:
            info = await docker.image_info(tag)
        assert info["Id"] == image_id
        config = info["Config"]
        assert config["Cmd"] == CMD
        assert "8000/tcp" in config["ExposedPorts"]
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["NIM_CACHE_PATH"] == "/opt/nim/.cache"
        assert env["PYTHONUNBUFFERED"] == "1"
        assert config["Labels"][IMAGE_LABEL] == "true"
        assert config["Labels"][f"{IMAGE_LABEL}.fingerprint"] == emulator_image_fingerprint()
        assert len(info["RootFS"]["Layers"]) == 3  # runtime, dependencies, nim_async
    finally:
        async with DockerClient() as docker:
            await docker.remove_image(tag, force=True)
