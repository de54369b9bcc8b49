"""Local checkpoints and the compatibility pre-flight (no network)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.weights import CONTAINER_MODEL_DIR, LORA_WARNING, RunMetadata, prepare_weights
from nim_async.errors import InvalidConfigError, ModelIncompatibilityError


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _config(model_path: Path, **overrides: object) -> NIMConfig:
    return NIMConfig(nvidia_api_key="nvapi-test", model_path=model_path, **overrides)


async def test_no_custom_weights_returns_none():
    assert await prepare_weights(NIMConfig(nvidia_api_key="nvapi-test")) is None


async def test_plain_hugging_face_directory(tmp_path, kit):
    root = _write(
        tmp_path / "ckpt",
        {
            "config.json": json.dumps(kit.QWEN_CONFIG).encode(),
            "model-00001-of-00002.safetensors": b"w1",
            "model-00002-of-00002.safetensors": b"w2",
        },
    )
    prepared = await prepare_weights(_config(root), quiet=True)

    assert prepared is not None
    assert prepared.host_dir == root.resolve()
    assert prepared.container_dir == CONTAINER_MODEL_DIR
    assert prepared.has_adapter is False
    assert prepared.run_metadata is None


async def test_vi_layout_directory_with_run_json(tmp_path, kit):
    root = _write(tmp_path / "vi", kit.model_files())
    prepared = await prepare_weights(_config(root), quiet=True)

    assert prepared is not None
    assert prepared.host_dir == root.resolve() / "model_full"
    assert prepared.run_metadata == RunMetadata("phrase-grounding", "You find things in pictures.")


async def test_pytorch_bin_weights_count(tmp_path, kit):
    root = _write(
        tmp_path / "ckpt",
        {"config.json": json.dumps(kit.QWEN_CONFIG).encode(), "pytorch_model.bin": b"w"},
    )
    assert await prepare_weights(_config(root), quiet=True) is not None


async def test_model_path_must_exist(tmp_path):
    with pytest.raises(InvalidConfigError) as info:
        await prepare_weights(_config(tmp_path / "nope"), quiet=True)
    assert info.value.field == "model_path"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
            "LlamaForCausalLM",
        ),
        ({"architectures": ["Qwen3VLForConditionalGeneration"]}, "Qwen3VL"),
        ({"model_type": "qwen2_vl"}, "qwen2_vl"),
        (
            {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "llava"},
            "llava",
        ),
        ({"hidden_size": 8}, "neither"),
    ],
)
async def test_architecture_mismatch(tmp_path, config, fragment):
    root = _write(
        tmp_path / "ckpt",
        {"config.json": json.dumps(config).encode(), "model.safetensors": b"w"},
    )
    with pytest.raises(ModelIncompatibilityError) as info:
        await prepare_weights(_config(root), quiet=True)

    assert info.value.image_name == "cosmos-reason1-7b"
    assert info.value.details is not None
    assert fragment in info.value.details
    assert "Qwen2_5_VLForConditionalGeneration" in info.value.details or fragment == "neither"


async def test_model_type_alone_is_enough(tmp_path):
    root = _write(
        tmp_path / "ckpt",
        {"config.json": b'{"model_type": "qwen2_5_vl"}', "model.safetensors": b"w"},
    )
    assert await prepare_weights(_config(root), quiet=True) is not None


async def test_unreadable_config_json(tmp_path):
    root = _write(tmp_path / "ckpt", {"config.json": b"{not json", "model.safetensors": b"w"})
    with pytest.raises(ModelIncompatibilityError, match="cannot read"):
        await prepare_weights(_config(root), quiet=True)


async def test_missing_weights(tmp_path, kit):
    root = _write(
        tmp_path / "ckpt",
        {
            "config.json": json.dumps(kit.QWEN_CONFIG).encode(),
            "training_args.bin": b"not weights",
            "tokenizer.json": b"{}",
        },
    )
    with pytest.raises(ModelIncompatibilityError, match="no model weights"):
        await prepare_weights(_config(root), quiet=True)


async def test_missing_config_json(tmp_path):
    root = _write(tmp_path / "ckpt", {"model.safetensors": b"w"})
    with pytest.raises(ModelIncompatibilityError, match=r"no config\.json"):
        await prepare_weights(_config(root), quiet=True)


async def test_adapter_only_is_an_error(tmp_path, kit):
    root = _write(tmp_path / "vi", kit.model_files(full=False, adapter=True))
    with pytest.raises(ModelIncompatibilityError, match="only a LoRA/PEFT adapter"):
        await prepare_weights(_config(root), quiet=True)


async def test_peft_directory_is_adapter_only(tmp_path):
    root = _write(
        tmp_path / "peft",
        {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"a"},
    )
    with pytest.raises(ModelIncompatibilityError, match="adapter"):
        await prepare_weights(_config(root), quiet=True)


async def test_full_plus_adapter_warns_that_nim_serves_base_weights(tmp_path, kit, caplog, capsys):
    root = _write(tmp_path / "vi", kit.model_files(adapter=True))

    with caplog.at_level(logging.WARNING, logger="nim_async.deploy.weights"):
        prepared = await prepare_weights(_config(root), quiet=False)

    assert prepared is not None
    assert prepared.has_adapter is True
    assert prepared.host_dir == root.resolve() / "model_full"
    assert LORA_WARNING in caplog.text
    assert "base model weights only" in capsys.readouterr().err.replace("\n", " ")


async def test_full_plus_adapter_quiet_logs_but_prints_nothing(tmp_path, kit, caplog, capsys):
    root = _write(tmp_path / "vi", kit.model_files(adapter=True))

    with caplog.at_level(logging.WARNING, logger="nim_async.deploy.weights"):
        prepared = await prepare_weights(_config(root), quiet=True)

    assert prepared is not None
    assert prepared.has_adapter
    assert LORA_WARNING in caplog.text
    assert capsys.readouterr().err == ""


async def test_downloaded_mismatch_fails_preflight(fake_vi, vi_config, kit):
    fake_vi.outputs["out-1"] = kit.model_archive(
        config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    )
    with pytest.raises(ModelIncompatibilityError) as info:
        await prepare_weights(vi_config(), quiet=True)
    assert "LlamaForCausalLM" in str(info.value)
    assert kit.SECRET not in str(info.value)


async def test_run_id_must_be_a_directory_name(vi_config):
    with pytest.raises(InvalidConfigError) as info:
        await prepare_weights(vi_config(run_id="../escape"), quiet=True)
    assert info.value.field == "run_id"
