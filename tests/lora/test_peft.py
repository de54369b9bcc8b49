"""The merge against peft's own ``merge_and_unload()`` on a tiny random-weight Qwen2.5-VL.

The base models, adapters and peft's merges are built locally by peft_fixtures.py in the vLLM
tier's Python (see conftest.py). Merged tensors must equal peft's within bfloat16 tolerance.

For float32 adapters on linear and conv layers they are bit-identical, except where the float32
delta lands next to a rounding boundary of the stored dtype: both sides compute ``B @ A`` in
float32, numpy's BLAS and torch's kernels each in their own summation order, which depends on
the CPU (on an AVX-512 AMD EPYC, 2 of 245,760 merged elements of ``mlp_rslora`` and 9 of
452,096 of ``sharded_all`` differed, the other cases none). So each element is within one step
of the stored dtype and almost all are identical.

For bfloat16 adapters and embedding LoRA peft rounds the delta to bfloat16 before adding it
(two roundings), the merge rounds once, so an element may differ by one bfloat16 step of
``|W| + |delta|``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from nim_async.deploy.lora import AdapterMergeError, merge_adapter, merged_checkpoint
from nim_async.deploy.lora.merge import f32_to_bf16_bits


def _cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lora_cases", Path(__file__).with_name("lora_cases.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _cases().CASES
MERGE_CASES = _cases().MERGE_CASES
BITWISE = {"bf16_adapter": False, "embedding": False}  # the cases where peft rounds twice


def _step(values: np.ndarray, dtype: str) -> np.ndarray:
    """One step (ulp) of the stored dtype at each value."""
    if dtype == "BF16":  # float32 with the lower 16 mantissa bits dropped
        return np.spacing(np.abs(values).astype(np.float32)).astype(np.float64) * 2.0**16
    if dtype == "F16":
        return np.spacing(np.abs(values).astype(np.float16)).astype(np.float64)
    return np.spacing(np.abs(values).astype(np.float32)).astype(np.float64)


@pytest.fixture(scope="module")
def merged_dirs(peft_built: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merged")
    return {
        case: merge_adapter(peft_built.base_of(case), peft_built.adapter(case), root / case)
        for case in MERGE_CASES
    }


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merged_tensors_equal_peft(
    case: str, peft_built: Any, merged_dirs: dict[str, Path], synth: ModuleType
) -> None:
    mine = synth.read_dir(merged_dirs[case])
    ref = synth.read_dir(peft_built.reference(case))
    base = synth.read_dir(peft_built.base_of(case))
    assert set(mine) == set(ref) == set(base)
    changed = 0
    for name, (dtype, ref_values) in ref.items():
        got_dtype, got = mine[name]
        assert got_dtype == dtype == base[name][0], name
        b = base[name][1]
        if np.array_equal(ref_values, b):
            assert np.array_equal(got, b), f"{name} should be untouched"
            continue
        changed += 1
        assert not np.array_equal(got, b), f"{name} was not merged"
        if BITWISE.get(case, True):
            # one step of the stored dtype, plus float32's error on the r-term sum (r <= 16 here;
            # relative to |W| + |delta|: it is what moves a value over a boundary; it matters
            # only where W + delta nearly cancels)
            step = np.maximum(_step(got, dtype), _step(ref_values, dtype))
            step += 64 * 2.0**-24 * (np.abs(b) + np.abs(ref_values - b))
            off = got != ref_values
            assert np.all(np.abs(got - ref_values)[off] <= step[off]), f"{name}: over one step"
            assert off.mean() <= 1e-3, f"{name} differs from peft in {off.sum()} of {off.size}"
        else:
            bound = 2.0**-7 * (np.abs(ref_values) + np.abs(b)) + 1e-6
            assert np.all(np.abs(got - ref_values) <= bound), name
            assert (got == ref_values).mean() > 0.5, name
    assert changed > 0


def test_expected_modules_were_merged(merged_dirs: dict[str, Path]) -> None:
    def marker(case: str) -> dict[str, Any]:
        return json.loads((merged_dirs[case] / ".nim_async_merge.json").read_text())

    lora = marker("mlp_rslora")["lora_modules"]
    assert any(m.startswith("model.language_model.layers.") for m in lora)
    assert any(m.startswith("model.visual.blocks.") for m in lora)  # the vision MLP too
    assert marker("saved_lm_head")["replaced"] == ["lm_head.weight"]
    vision = marker("vision_regex")["lora_modules"]
    assert vision
    assert all(m.startswith("model.visual.") for m in vision)
    assert "model.visual.patch_embed.proj" in marker("sharded_all")["lora_modules"]  # a Conv3d
    qwen3 = marker("qwen3vl_lang_vision")["lora_modules"]
    assert "model.language_model.layers.1.self_attn.v_proj" in qwen3
    assert "model.visual.blocks.1.attn.qkv" in qwen3
    assert "model.visual.merger.linear_fc1" in qwen3
    assert "model.visual.deepstack_merger_list.0.linear_fc1" in qwen3


def test_multi_shard_layout_is_kept(peft_built: Any, merged_dirs: dict[str, Path]) -> None:
    base = peft_built.base("qwen_sharded")
    out = merged_dirs["sharded_all"]
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) > 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert (
        index["weight_map"]
        == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    )
    for name in (
        "tokenizer.json",
        "config.json",
        "preprocessor_config.json",
        "chat_template.jinja",
    ):
        assert (out / name).read_bytes() == (base / name).read_bytes()


def test_real_libraries_read_the_output_and_bf16_matches_torch(
    peft_built: Any, merged_dirs: dict[str, Path], tmp_path: Path, synth: ModuleType
) -> None:
    request = {
        "load": [str(merged_dirs["sharded_all"]), str(merged_dirs["gpt2_fan_in_fan_out"])],
        "from_pretrained": [str(merged_dirs["sharded_all"]), str(merged_dirs["saved_lm_head"])],
        "bf16_bits": str(tmp_path / "bits.npz"),
    }
    (tmp_path / "req.json").write_text(json.dumps(request))
    proc = subprocess.run(
        [
            str(peft_built.python),
            str(Path(__file__).with_name("torch_check.py")),
            str(tmp_path / "req.json"),
            str(tmp_path / "res.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "res.json").read_text())
    loaded = result["load"][str(merged_dirs["sharded_all"])]
    assert loaded["model.layers.0.self_attn.q_proj.weight"] == ["torch.bfloat16", [128, 128]]
    assert set(loaded) == set(synth.read_dir(peft_built.base("qwen_sharded")))
    assert all(n > 1_000_000 for n in result["from_pretrained"].values())
    bits = np.load(tmp_path / "bits.npz")
    f32 = bits["f32_bits"].view(np.float32)
    mine = f32_to_bf16_bits(np, f32)
    nan = np.isnan(f32)
    assert np.array_equal(mine[~nan], bits["bf16_bits"][~nan])  # every non-NaN: torch's bits
    assert np.all((bits["bf16_bits"][nan] & 0x7F80) == 0x7F80)  # NaN stays NaN on both sides
    assert np.all((mine[nan] & 0x7F80) == 0x7F80)
    assert np.all(mine[nan] & 0x7F)


def test_dora_adapter_from_peft_is_refused(peft_built: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(AdapterMergeError, match="DoRA"):
        merge_adapter(peft_built.base("qwen"), peft_built.adapter("dora"), out)
    assert list(tmp_path.iterdir()) == []


def test_adapter_for_another_base_is_refused(peft_built: Any, tmp_path: Path) -> None:
    with pytest.raises(AdapterMergeError, match="no counterpart"):  # GPT-2 adapter, Qwen base
        merged_checkpoint(
            peft_built.base("qwen"), peft_built.adapter("gpt2_fan_in_fan_out"), tmp_path / "c"
        )
    # a Qwen adapter on a narrower Qwen: same names, other shapes
    narrow = tmp_path / "narrow"
    shutil.copytree(peft_built.base("qwen"), narrow)
    raw = (narrow / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].replace(
        b'"model.layers.0.self_attn.v_proj.weight":{"dtype":"BF16","shape":[64,128]',
        b'"model.layers.0.self_attn.v_proj.weight":{"dtype":"BF16","shape":[128,64]',
    )
    assert header != raw[8 : 8 + n]
    (narrow / "model.safetensors").write_bytes(raw[:8] + header + raw[8 + n :])
    with pytest.raises(AdapterMergeError, match="base mismatch") as info:
        merged_checkpoint(narrow, peft_built.adapter("lang_qv"), tmp_path / "c")
    assert "v_proj" in info.value.reason
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".hashes.json"]


def test_corrupt_peft_adapter_is_refused(peft_built: Any, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(peft_built.adapter("lang_qv"), adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterMergeError, match="not a valid safetensors file"):
        merged_checkpoint(peft_built.base("qwen"), adapter, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".hashes.json"]
