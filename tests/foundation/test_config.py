"""NIMConfig and NIMSamplingParams: documented defaults, validation, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from nim_async.config import NIMConfig, NIMSamplingParams, parse_memory_size
from nim_async.errors import InvalidConfigError

KEY = "nvapi-test-secret-value-123"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NGC_API_KEY",
        "DATATURE_VI_SECRET_KEY",
        "DATATURE_VI_ORGANIZATION_ID",
        "DATATURE_VI_API_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_documented_defaults() -> None:
    config = NIMConfig(nvidia_api_key=KEY)
    assert config.image_name == "cosmos-reason1-7b"
    assert config.tag == "latest"
    assert config.port == 8000
    assert config.shm_size == "32GB"
    assert config.max_model_len == 8192
    assert config.local_cache_dir is None
    assert config.cache_dir == Path("~/.cache/nim").expanduser()
    assert config.use_existing_container is True
    assert config.auto_kill_existing_container is False
    assert config.stream_logs is True
    assert config.force_pull is False
    assert config.secret_key is None
    assert config.organization_id is None
    assert config.run_id is None
    assert config.ckpt is None
    assert config.model_save_path == "~/.vi/models"
    assert config.served_model_name is None
    assert config.overwrite is False
    assert config.registry == "nvcr.io/nim/nvidia"
    assert config.gpus == "all"
    assert config.host == "127.0.0.1"
    assert config.startup_timeout == 600


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGC_API_KEY", KEY)
    assert NIMConfig().nvidia_api_key.get_secret_value() == KEY


def test_missing_key_names_field_and_fix() -> None:
    with pytest.raises(InvalidConfigError) as info:
        NIMConfig()
    assert info.value.field == "nvidia_api_key"
    assert "NGC_API_KEY" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nvidia_api_key": "sk-wrong-prefix"}, "nvidia_api_key"),
        ({"image_name": "llama-9000"}, "image_name"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"shm_size": "lots"}, "shm_size"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"tag": "bad tag"}, "tag"),
        ({"gpus": 0}, "gpus"),
        ({"gpus": []}, "gpus"),
        ({"registry": "https://nvcr.io"}, "registry"),
        ({"served_model_name": "has space"}, "served_model_name"),
        ({"startup_timeout": 0}, "startup_timeout"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    data: dict[str, object] = {"nvidia_api_key": KEY, **kwargs}
    with pytest.raises(InvalidConfigError) as info:
        NIMConfig(**data)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_secrets_never_in_repr_or_errors() -> None:
    config = NIMConfig(
        nvidia_api_key=KEY,
        secret_key="vi-secret-value-456",
        organization_id="org",
        run_id="run",
    )
    text = repr(config) + str(config) + str(config.model_dump())
    assert KEY not in text
    assert "vi-secret-value-456" not in text
    with pytest.raises(InvalidConfigError) as info:
        NIMConfig(nvidia_api_key="wrong-" + KEY)
    assert KEY not in str(info.value)
    assert info.value.__cause__ is None  # pydantic's error (which echoes input) is not chained


def test_vi_fields_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", "vi-secret")
    monkeypatch.setenv("DATATURE_VI_ORGANIZATION_ID", "org-1")
    monkeypatch.setenv("DATATURE_VI_API_ENDPOINT", "http://127.0.0.1:9/")
    config = NIMConfig(nvidia_api_key=KEY, run_id="run-1")
    assert isinstance(config.secret_key, SecretStr)
    assert config.secret_key.get_secret_value() == "vi-secret"
    assert config.organization_id == "org-1"
    assert config.endpoint == "http://127.0.0.1:9/"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"run_id": "r"}, "secret_key"),
        ({"run_id": "r", "secret_key": "s"}, "organization_id"),
        ({"ckpt": "c"}, "ckpt"),
        (
            {"run_id": "r", "secret_key": "s", "organization_id": "o", "model_path": "/m"},
            "not both",
        ),
    ],
)
def test_weights_source_rules(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidConfigError, match=needle):
        NIMConfig(nvidia_api_key=KEY, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32GB", 32 * 1024**3),
        ("32gb", 32 * 1024**3),
        ("16g", 16 * 1024**3),
        ("512m", 512 * 1024**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("2048", 2048),
        ("64k", 64 * 1024),
    ],
)
def test_memory_sizes_read_like_docker_cli(text: str, expected: int) -> None:
    assert parse_memory_size(text) == expected


def test_derived_values() -> None:
    config = NIMConfig(
        nvidia_api_key=KEY,
        registry="127.0.0.1:5555/nim/nvidia/",
        tag="emu",
        served_model_name="my-model",
        port=9001,
    )
    assert config.image_ref == "127.0.0.1:5555/nim/nvidia/cosmos-reason1-7b:emu"
    assert config.registry_server == "127.0.0.1:5555"
    assert config.container_name == "my-model"
    assert config.base_url == "http://127.0.0.1:9001"
    assert NIMConfig(nvidia_api_key=KEY).container_name == "cosmos-reason1-7b"
    assert NIMConfig(nvidia_api_key=KEY).registry_server == "nvcr.io"


def test_config_hash_tracks_container_shaping_fields_only() -> None:
    base = NIMConfig(nvidia_api_key=KEY)
    assert base.config_hash() == NIMConfig(nvidia_api_key=KEY + "x").config_hash()
    assert base.config_hash() == NIMConfig(nvidia_api_key=KEY, stream_logs=False).config_hash()
    assert base.config_hash() != NIMConfig(nvidia_api_key=KEY, port=8001).config_hash()


def test_ensure_cache_dir_creates_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    config = NIMConfig(nvidia_api_key=KEY, local_cache_dir=str(target))
    assert config.ensure_cache_dir() == target
    assert target.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = NIMConfig(nvidia_api_key=KEY, local_cache_dir=str(blocker / "sub"))
    with pytest.raises(InvalidConfigError) as info:
        bad.ensure_cache_dir()
    assert info.value.field == "local_cache_dir"


# ----------------------------------------------------------------------------- sampling


def test_sampling_documented_defaults() -> None:
    p = NIMSamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 50, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.05)
    assert (p.max_tokens, p.min_tokens, p.stop, p.seed, p.ignore_eos) == (
        1024,
        0,
        None,
        None,
        False,
    )
    assert (p.logprobs, p.prompt_logprobs) == (None, None)
    assert (p.guided_json, p.guided_regex, p.guided_choice, p.guided_grammar) == (None,) * 4
    assert len(NIMSamplingParams.model_fields) == 18 + 2  # the seed's 18, vi-sdk's two video fields
    assert (p.media_io_kwargs, p.mm_processor_kwargs) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": 2.1}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_regex, guided_choice"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_regex": "("}, "guided_regex"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"temperatur": 1.0}, "temperatur"),
    ],
)
def test_sampling_ranges_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        NIMSamplingParams(**kwargs)  # type: ignore[arg-type]


def test_sampling_boundaries_accepted() -> None:
    NIMSamplingParams(temperature=0.0, top_p=1.0, top_k=-1, min_p=1.0, repetition_penalty=2.0)
    NIMSamplingParams(min_tokens=5, max_tokens=5, presence_penalty=-2.0, frequency_penalty=2.0)


def test_guided_helpers() -> None:
    assert NIMSamplingParams().guided_field is None
    p = NIMSamplingParams(guided_json='{"type": "object"}')
    assert p.guided_field == "guided_json"
    assert p.guided_json_schema() == {"type": "object"}
    assert NIMSamplingParams(guided_choice=["yes", "no", "maybe"]).guided_field == "guided_choice"


@pytest.mark.parametrize("image", ["cosmos-reason2-2b", "cosmos-reason2-8b"])
def test_cosmos_reason2_images_are_accepted(image: str) -> None:
    config = NIMConfig(nvidia_api_key=KEY, image_name=image)
    assert config.image_ref == f"nvcr.io/nim/nvidia/{image}:latest"
    assert config.container_name == image


def test_unknown_image_names_the_supported_ones() -> None:
    with pytest.raises(InvalidConfigError, match="cosmos-reason2-2b") as info:
        NIMConfig(nvidia_api_key=KEY, image_name="cosmos-reason3-1b")
    assert info.value.field == "image_name"


def test_video_passthrough_options_are_kept_as_given() -> None:
    params = NIMSamplingParams(
        media_io_kwargs={"fps": 2.0},
        mm_processor_kwargs={"shortest_edge": 336, "longest_edge": 672, "extra": [1, "a", None]},
    )
    assert params.media_io_kwargs == {"fps": 2.0}
    assert params.mm_processor_kwargs == {
        "shortest_edge": 336,
        "longest_edge": 672,
        "extra": [1, "a", None],
    }
    assert NIMSamplingParams().media_io_kwargs is None
    assert NIMSamplingParams().mm_processor_kwargs is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fps=2", "must be a dict"),
        ({"fps": float("nan")}, "finite"),
        ({"fps": float("inf")}, "finite"),
        ({1: 2}, "keys must be strings"),
        ({"nested": {"a": object()}}, "JSON data"),
        ({"frames": [1, {2: 3}]}, "keys must be strings"),
    ],
)
@pytest.mark.parametrize("field", ["media_io_kwargs", "mm_processor_kwargs"])
def test_video_passthrough_options_must_be_json_data(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        NIMSamplingParams(**{field: value})
    assert field in str(info.value)


def test_media_io_kwargs_keyed_by_modality_for_vllm() -> None:
    flat = NIMSamplingParams(media_io_kwargs={"fps": 2.0})
    assert flat.media_io_kwargs_by_modality() == {"video": {"fps": 2.0}}
    assert flat.media_io_kwargs_by_modality("image") == {"image": {"fps": 2.0}}
    keyed = NIMSamplingParams(media_io_kwargs={"video": {"num_frames": 16}})
    assert keyed.media_io_kwargs_by_modality() == {"video": {"num_frames": 16}}
    assert NIMSamplingParams().media_io_kwargs_by_modality() is None
