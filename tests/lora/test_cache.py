"""merged_checkpoint: keyed by both inputs' contents, reused, rebuilt on overwrite, pruned;
and what happens without numpy (a fresh interpreter where numpy cannot be imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.lora import (
    MERGE_MARKER,
    AdapterMergeError,
    MergeProgress,
    cache_key,
    merged_checkpoint,
)

P = "base_model.model."


def _pair(synth: ModuleType, root: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    base = synth.write_base(
        root / "model_full",
        [{"model.layers.0.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))}],
        {"tokenizer.json": "{}"},
    )
    adapter = synth.write_adapter(
        root / "model_adapter",
        {
            f"{P}model.layers.0.self_attn.q_proj.lora_A.weight": (
                "F32",
                rng.standard_normal((4, 16)).astype(np.float32),
            ),
            f"{P}model.layers.0.self_attn.q_proj.lora_B.weight": (
                "F32",
                rng.standard_normal((16, 4)).astype(np.float32),
            ),
        },
        target_modules=["q_proj"],
    )
    return base, adapter


def test_cached_reused_rebuilt_and_pruned(tmp_path: Path, synth: ModuleType) -> None:
    base, adapter = _pair(synth, tmp_path)
    cache = tmp_path / ".nim_async_merged"
    events: list[MergeProgress] = []
    first = merged_checkpoint(base, adapter, cache, on_progress=events.append)
    assert first.parent == cache
    assert first.name == cache_key(base, adapter, cache)
    assert (first / "model.safetensors").is_file()
    assert json.loads((first / MERGE_MARKER).read_text())["cache_key"] == first.name
    assert len(events) == 2
    inode = (first / "model.safetensors").stat().st_ino

    events.clear()
    again = merged_checkpoint(base, adapter, cache, on_progress=events.append)
    assert again == first
    assert events == []  # a cache hit merges nothing
    assert (first / "model.safetensors").stat().st_ino == inode

    rebuilt = merged_checkpoint(base, adapter, cache, overwrite=True, on_progress=events.append)
    assert rebuilt == first
    assert len(events) == 2
    assert (first / "model.safetensors").stat().st_ino != inode

    # another adapter (same names, new content): a new key, and the old entry is pruned
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_alpha"] = 16
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    other = merged_checkpoint(base, adapter, cache)
    assert other != first
    assert not first.exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [other.name]

    # the base's non-weight files are part of the key too
    (base / "tokenizer.json").write_text('{"changed": true}')
    assert cache_key(base, adapter, cache) != other.name


def test_key_does_not_depend_on_where_the_inputs_are(tmp_path: Path, synth: ModuleType) -> None:
    base1, adapter1 = _pair(synth, tmp_path / "one", seed=3)
    base2, adapter2 = _pair(synth, tmp_path / "two", seed=3)
    base3, _ = _pair(synth, tmp_path / "three", seed=4)
    cache = tmp_path / "cache"
    assert cache_key(base1, adapter1, cache) == cache_key(base2, adapter2, cache)
    assert cache_key(base3, adapter1, cache) != cache_key(base1, adapter1, cache)


def test_entry_without_marker_is_rebuilt(tmp_path: Path, synth: ModuleType) -> None:
    base, adapter = _pair(synth, tmp_path)
    cache = tmp_path / "cache"
    entry = cache / cache_key(base, adapter, cache)
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(b"half written by something else")
    out = merged_checkpoint(base, adapter, cache)
    assert out == entry
    assert (out / MERGE_MARKER).is_file()
    assert (out / "model.safetensors").stat().st_size > 100


def test_refused_adapter_leaves_no_entry(tmp_path: Path, synth: ModuleType) -> None:
    base, adapter = _pair(synth, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    cache = tmp_path / "cache"
    with pytest.raises(AdapterMergeError, match="DoRA"):
        merged_checkpoint(base, adapter, cache, image_name="cosmos-reason1-7b")
    assert [p.name for p in cache.iterdir() if p.name != ".hashes.json"] == []


def test_missing_inputs(tmp_path: Path, synth: ModuleType) -> None:
    base, _ = _pair(synth, tmp_path)
    with pytest.raises(AdapterMergeError, match=r"adapter .* is not a directory"):
        merged_checkpoint(base, tmp_path / "nope", tmp_path / "cache")


def test_config_field(tmp_path: Path) -> None:
    assert NIMConfig(nvidia_api_key="nvapi-x").merge_adapter is False
    merged = NIMConfig(nvidia_api_key="nvapi-x", merge_adapter=True, model_path=tmp_path)
    plain = NIMConfig(nvidia_api_key="nvapi-x", model_path=tmp_path)
    assert merged.merge_adapter is True
    assert merged.config_hash() != plain.config_hash()  # a merged container is another container


_NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # importing numpy now raises ImportError, as if not installed
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "numpy" else _find(name, *a)
import nim_async.deploy.lora as lora  # the package itself imports without numpy
from nim_async.errors import InvalidConfigError
assert not lora.merge_support_available()
for call in (lora.require_merge_support,
             lambda: lora.merge_adapter("b", "a", "o"),
             lambda: lora.merged_checkpoint("b", "a", "c")):
    try:
        call()
    except InvalidConfigError as exc:
        assert exc.field == "merge_adapter", exc.field
        print("ERR", exc)
    else:
        raise SystemExit("no error")
"""


def test_without_numpy_fails_early_naming_the_install_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NUMPY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    assert all("pip install 'nim-async[merge]'" in line for line in lines)
