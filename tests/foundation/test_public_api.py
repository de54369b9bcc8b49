"""The documented API (seed reference) exists under `nim_async` with the same names and defaults."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import nim_async
from nim_async import (
    ContainerExistsError,
    InvalidConfigError,
    ModelIncompatibilityError,
    NIMConfig,
    NIMDeployer,
    NIMDeploymentError,
    NIMDeploymentResult,
    NIMPredictor,
    NIMSamplingParams,
    ServiceNotReadyError,
)

SEED_NAMES = [
    "NIMDeployer",
    "NIMConfig",
    "NIMPredictor",
    "NIMSamplingParams",
    "NIMDeploymentResult",
    "NIMDeploymentError",
    "InvalidConfigError",
    "ContainerExistsError",
    "ServiceNotReadyError",
    "ModelIncompatibilityError",
    "APIError",
]


def _defaults(fn: object) -> dict[str, object]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return {
        name: (p.default if p.default is not inspect.Parameter.empty else "<required>")
        for name, p in sig.parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def test_every_seed_name_is_exported() -> None:
    for name in SEED_NAMES:
        assert name in nim_async.__all__
        assert getattr(nim_async, name) is not None


def test_public_names_resolve_and_unknown_names_fail() -> None:
    for name in nim_async.__all__:
        assert hasattr(nim_async, name)
    with pytest.raises(AttributeError):
        _ = nim_async.NoSuchThing  # type: ignore[attr-defined]


def test_import_is_light() -> None:
    code = (
        "import sys, nim_async; "
        "print(sorted(m for m in ('httpx', 'aiodocker', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_deployer_signatures() -> None:
    ctor = _defaults(NIMDeployer.__init__)
    assert list(ctor)[:2] == ["config", "quiet"]
    assert ctor["config"] is None
    assert ctor["quiet"] is False
    stop = _defaults(NIMDeployer.stop)
    assert list(stop)[:2] == ["container_name", "quiet"]
    assert stop["container_name"] == "<required>"
    assert stop["quiet"] is False
    assert isinstance(inspect.getattr_static(NIMDeployer, "stop"), classmethod)
    assert list(_defaults(NIMDeployer.deploy)) == []


def test_predictor_signatures() -> None:
    ctor = _defaults(NIMPredictor.__init__)
    assert list(ctor)[:3] == ["model_name", "task_type", "port"]
    assert ctor["port"] == 8000
    call = _defaults(NIMPredictor.__call__)
    assert list(call)[:4] == ["source", "user_prompt", "stream", "sampling_params"]
    assert call["source"] == "<required>"
    assert (call["user_prompt"], call["stream"], call["sampling_params"]) == (None, False, None)


def test_result_and_exception_properties() -> None:
    result = NIMDeploymentResult(
        container_id="abc",
        container_name="cosmos-reason1-7b",
        served_model_name=None,
        port=8000,
        available_models=["cosmos-reason1-7b"],
    )
    assert (result.container_id, result.container_name, result.port) == (
        "abc",
        "cosmos-reason1-7b",
        8000,
    )
    assert result.served_model_name is None
    assert result.available_models == ["cosmos-reason1-7b"]
    assert ContainerExistsError("x").container_name == "x"
    err = ServiceNotReadyError("x", 600)
    assert (err.container_name, err.timeout) == ("x", 600)
    inc = ModelIncompatibilityError("cosmos-reason1-7b", "wrong architecture")
    assert (inc.image_name, inc.details) == ("cosmos-reason1-7b", "wrong architecture")
    for cls in (
        InvalidConfigError,
        ContainerExistsError,
        ServiceNotReadyError,
        ModelIncompatibilityError,
        nim_async.APIError,
    ):
        assert issubclass(cls, NIMDeploymentError)


def test_config_and_sampling_field_names_match_the_seed() -> None:
    seed_config = [
        "nvidia_api_key",
        "image_name",
        "tag",
        "port",
        "shm_size",
        "max_model_len",
        "local_cache_dir",
        "use_existing_container",
        "auto_kill_existing_container",
        "stream_logs",
        "force_pull",
        "secret_key",
        "organization_id",
        "run_id",
        "ckpt",
        "model_save_path",
        "served_model_name",
        "overwrite",
    ]
    assert list(NIMConfig.model_fields)[: len(seed_config)] == seed_config
    seed_sampling = [
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "max_tokens",
        "min_tokens",
        "stop",
        "seed",
        "ignore_eos",
        "logprobs",
        "prompt_logprobs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
    ]
    # vi-sdk 0.1.0b7's two video fields follow the seed's (same names, same order).
    assert list(NIMSamplingParams.model_fields) == [
        *seed_sampling,
        "media_io_kwargs",
        "mm_processor_kwargs",
    ]
