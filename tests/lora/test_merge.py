"""The merge on synthetic numpy checkpoints: arithmetic, dtypes, files, atomicity, refusals.

The expected weights are computed here in float64 from the formula (W + s * B @ A, rounded
once to the stored dtype), independently of the code under test; the files are written and
read back with the test's own safetensors helpers (lora_synth.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from nim_async.deploy.lora import (
    MERGE_MARKER,
    AdapterMergeError,
    MergeProgress,
    merge_adapter,
)
from nim_async.errors import ModelIncompatibilityError, WeightsError

P = "base_model.model."


def _round(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> the stored dtype (nearest even) -> float64, without the code under test."""
    if dtype == "F32":
        return values.astype(np.float32).astype(np.float64)
    if dtype == "F16":
        return values.astype(np.float16).astype(np.float64)
    if dtype == "F64":
        return values
    assert dtype == "BF16"
    f32 = values.astype(np.float32)  # exact enough: the f32 rounding never straddles a bf16 tie
    out = np.empty(f32.shape, dtype=np.float64)
    flat, res = f32.ravel(), out.ravel()
    for i, v in enumerate(flat.tolist()):
        bits = np.float32(v).view(np.uint32).item()
        lo = bits & 0xFFFF0000
        hi = lo + 0x10000
        lo_v = float(np.uint32(lo).view(np.float32))
        hi_v = float(np.uint32(hi).view(np.float32))
        if abs(v - lo_v) < abs(hi_v - v) or (abs(v - lo_v) == abs(hi_v - v) and not (lo >> 16) & 1):
            res[i] = lo_v
        else:
            res[i] = hi_v
    return out


def _lora(rng: np.random.Generator, out: int, inp: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((r, inp)).astype(np.float32) * 0.3
    b = rng.standard_normal((out, r)).astype(np.float32) * 0.3
    return a, b


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _qwen_like(synth: ModuleType, rng: np.random.Generator, dtype: str = "BF16") -> dict:
    def w(*shape: int) -> tuple[str, np.ndarray]:
        return dtype, synth.bf16_exact(rng, shape)

    return {
        "model.embed_tokens.weight": w(64, 16),
        "model.layers.0.self_attn.q_proj.weight": w(16, 16),
        "model.layers.0.self_attn.q_proj.bias": w(16),
        "model.layers.0.self_attn.v_proj.weight": w(8, 16),
        "model.layers.0.mlp.down_proj.weight": w(16, 32),
        "visual.blocks.0.attn.qkv.weight": w(24, 8),
        "visual.patch_embed.proj.weight": w(8, 3, 2, 2, 2),
        "lm_head.weight": w(64, 16),
    }


def test_linear_lora_matches_formula_and_keeps_everything_else(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    tensors = _qwen_like(synth, rng)
    base = synth.write_base(
        tmp_path / "base",
        [tensors],
        {"tokenizer.json": "{}", "pytorch_model.bin": "stale", "adapter_config.json": "{}"},
    )
    a_q, b_q = _lora(rng, 16, 16, 4)
    a_v, b_v = _lora(rng, 8, 16, 4)
    a_x, b_x = _lora(rng, 24, 8, 4)
    adapter = synth.write_adapter(
        tmp_path / "adapter",
        {
            f"{P}model.language_model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", a_q),
            f"{P}model.language_model.layers.0.self_attn.q_proj.lora_B.weight": ("F32", b_q),
            f"{P}model.language_model.layers.0.self_attn.v_proj.lora_A.weight": ("F32", a_v),
            f"{P}model.language_model.layers.0.self_attn.v_proj.lora_B.weight": ("F32", b_v),
            f"{P}model.visual.blocks.0.attn.qkv.lora_A.weight": ("F32", a_x),
            f"{P}model.visual.blocks.0.attn.qkv.lora_B.weight": ("F32", b_x),
        },
        r=4,
        lora_alpha=12,
        target_modules=["q_proj", "v_proj", "qkv"],
    )
    out = merge_adapter(base, adapter, tmp_path / "merged")
    merged = synth.read_st(out / "model.safetensors")
    assert set(merged) == set(tensors)
    s = 12 / 4
    for name, (a, b) in {
        "model.layers.0.self_attn.q_proj.weight": (a_q, b_q),
        "model.layers.0.self_attn.v_proj.weight": (a_v, b_v),
        "visual.blocks.0.attn.qkv.weight": (a_x, b_x),
    }.items():
        dtype, got = merged[name]
        assert dtype == "BF16"
        want = _round(tensors[name][1].astype(np.float64) + s * (b.astype(np.float64) @ a), "BF16")
        # float32 products vs float64: an element may land one bf16 ulp away at a tie
        ulp = np.abs(want) * 2.0**-7
        assert np.all(np.abs(got - want) <= ulp), name
        assert (got == want).mean() > 0.99
        assert not np.array_equal(got, tensors[name][1])
    for name in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.mlp.down_proj.weight",
    ):
        assert np.array_equal(merged[name][1], tensors[name][1])
    assert (out / "tokenizer.json").read_text() == "{}"
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert not (out / "pytorch_model.bin").exists()  # unmerged weights are not carried along
    assert not (out / "adapter_config.json").exists()  # the result is not a PEFT dir
    marker = json.loads((out / MERGE_MARKER).read_text())
    assert len(marker["lora_modules"]) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("rslora", [False, True])
def test_dtypes_and_rslora(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator, dtype: str, rslora: bool
) -> None:
    w = synth.bf16_exact(rng, (32, 24))
    base = synth.write_base(tmp_path / "base", [{"model.layers.0.mlp.up_proj.weight": (dtype, w)}])
    a, b = _lora(rng, 32, 24, 8)
    adapter = synth.write_adapter(
        tmp_path / "adapter",
        {
            f"{P}model.layers.0.mlp.up_proj.lora_A.weight": ("F32", a),
            f"{P}model.layers.0.mlp.up_proj.lora_B.weight": ("F32", b),
        },
        r=8,
        lora_alpha=16,
        use_rslora=rslora,
        target_modules=["up_proj"],
    )
    out = merge_adapter(base, adapter, tmp_path / "merged")
    got_dtype, got = synth.read_st(out / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert got_dtype == dtype
    s = 16 / math.sqrt(8) if rslora else 16 / 8
    exact = w.astype(np.float64) + s * (b.astype(np.float64) @ a.astype(np.float64))
    want = _round(exact, dtype)
    ulp = {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-22}[dtype]
    # one step of the stored dtype, plus float32's error on the 8-term sum B @ A in whatever
    # order the CPU's BLAS adds it (relative to the terms, not to a result that may cancel)
    terms = np.abs(w) + s * (np.abs(b).astype(np.float64) @ np.abs(a).astype(np.float64))
    assert np.all(np.abs(got - want) <= np.abs(want) * ulp + 10 * 2.0**-24 * terms)
    other = 16 / 8 if rslora else 16 / math.sqrt(8)  # the other scaling is far off
    assert not np.allclose(got, w + other * (b.astype(np.float64) @ a), rtol=ulp * 4)


def test_fan_in_fan_out_conv_embedding_patterns_and_modules_to_save(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    tensors = {
        "transformer.h.0.attn.c_attn.weight": ("F32", synth.bf16_exact(rng, (16, 48))),  # (in, out)
        "model.embed_tokens.weight": ("F32", synth.bf16_exact(rng, (64, 16))),
        "visual.patch_embed.proj.weight": ("F32", synth.bf16_exact(rng, (8, 3, 2, 2, 2))),
        "model.layers.0.self_attn.k_proj.weight": ("F32", synth.bf16_exact(rng, (8, 16))),
        "lm_head.weight": ("F32", synth.bf16_exact(rng, (64, 16))),
    }
    base = synth.write_base(tmp_path / "base", [tensors])
    a_c, b_c = _lora(rng, 48, 16, 4)
    a_e = rng.standard_normal((4, 64)).astype(np.float32)  # embeddings: A is (r, vocab)
    b_e = rng.standard_normal((16, 4)).astype(np.float32)  # and B (dim, r)
    a_p = rng.standard_normal((4, 3, 2, 2, 2)).astype(np.float32)  # conv A: (r, in, *kernel)
    b_p = rng.standard_normal((8, 4, 1, 1, 1)).astype(np.float32)  # conv B: 1x1 (out, r)
    a_k, b_k = _lora(rng, 8, 16, 2)
    lm_head = synth.bf16_exact(rng, (64, 16))
    adapter = synth.write_adapter(
        tmp_path / "adapter",
        {
            f"{P}transformer.h.0.attn.c_attn.lora_A.weight": ("F32", a_c),
            f"{P}transformer.h.0.attn.c_attn.lora_B.weight": ("F32", b_c),
            f"{P}model.language_model.embed_tokens.lora_embedding_A": ("F32", a_e),
            f"{P}model.language_model.embed_tokens.lora_embedding_B": ("F32", b_e),
            f"{P}model.visual.patch_embed.proj.lora_A.weight": ("F32", a_p),
            f"{P}model.visual.patch_embed.proj.lora_B.weight": ("F32", b_p),
            f"{P}model.language_model.layers.0.self_attn.k_proj.lora_A.weight": ("F32", a_k),
            f"{P}model.language_model.layers.0.self_attn.k_proj.lora_B.weight": ("F32", b_k),
            f"{P}lm_head.modules_to_save.default.weight": ("F32", lm_head),
        },
        r=4,
        lora_alpha=8,
        fan_in_fan_out=True,
        target_modules=["c_attn", "embed_tokens", "proj", "k_proj"],
        rank_pattern={"k_proj": 2},
        alpha_pattern={"k_proj": 1},
        modules_to_save=["lm_head"],
    )
    out = merge_adapter(base, adapter, tmp_path / "merged")
    merged = synth.read_st(out / "model.safetensors")

    def check(name: str, delta: np.ndarray) -> None:
        want = _round(tensors[name][1] + delta, "F32")
        assert np.allclose(merged[name][1], want, rtol=2.0**-20, atol=1e-7), name

    check("transformer.h.0.attn.c_attn.weight", 2 * (b_c.astype(np.float64) @ a_c).T)
    check("model.embed_tokens.weight", 2 * (b_e.astype(np.float64) @ a_e).T)
    conv = np.einsum("or,rijkl->oijkl", b_p[:, :, 0, 0, 0].astype(np.float64), a_p)
    check("visual.patch_embed.proj.weight", 2 * conv)
    # fan_in_fan_out=True in the config, but k_proj is an nn.Linear (PEFT switches the flag off
    # per Linear layer): its stored (out, in) shape decides; rank 2 and alpha 1 by the patterns
    check("model.layers.0.self_attn.k_proj.weight", (1 / 2) * (b_k.astype(np.float64) @ a_k))
    assert np.array_equal(merged["lm_head.weight"][1], lm_head)


def test_multi_shard_index_and_progress(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    shards = [
        {f"model.layers.{i}.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))}
        for i in range(3)
    ]
    shards[1]["model.norm.weight"] = ("BF16", synth.bf16_exact(rng, (16,)))
    base = synth.write_base(tmp_path / "base", shards)
    weights = {}
    for i in range(3):
        a, b = _lora(rng, 16, 16, 4)
        weights[f"{P}model.layers.{i}.self_attn.q_proj.lora_A.weight"] = ("F32", a)
        weights[f"{P}model.layers.{i}.self_attn.q_proj.lora_B.weight"] = ("F32", b)
    adapter = synth.write_adapter(tmp_path / "adapter", weights, target_modules=["q_proj"])
    events: list[MergeProgress] = []
    out = merge_adapter(base, adapter, tmp_path / "merged", on_progress=events.append)
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == sorted(p.name for p in base.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    base_index = json.loads((base / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == base_index["weight_map"]
    assert index["metadata"]["total_size"] == sum(16 * 16 * 2 for _ in range(3)) + 16 * 2
    assert [(e.shards_done, e.shards_total) for e in events] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert events[-1].bytes_done == events[-1].bytes_total == index["metadata"]["total_size"]
    assert [e.shard for e in events[1:]] == names
    merged = synth.read_dir(out)
    for i in range(3):
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        assert not np.array_equal(merged[name][1], synth.read_dir(base)[name][1])


def test_large_tensor_is_merged_in_row_blocks(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nim_async.deploy.lora import writer

    monkeypatch.setattr(writer, "_BLOCK_ELEMENTS", 40)  # 40 // 16 = 2 rows per block
    w = synth.bf16_exact(rng, (33, 16))
    base = synth.write_base(
        tmp_path / "base", [{"model.layers.0.mlp.gate_proj.weight": ("BF16", w)}]
    )
    for fan_in_fan_out in (False, True):
        # stored (out=33, in=16), or with fan_in_fan_out (in=33, out=16): A (r, in), B (out, r)
        a, b = _lora(rng, 16, 33, 4) if fan_in_fan_out else _lora(rng, 33, 16, 4)
        adapter = synth.write_adapter(
            tmp_path / f"adapter{fan_in_fan_out}",
            {
                f"{P}model.layers.0.mlp.gate_proj.lora_A.weight": ("F32", a),
                f"{P}model.layers.0.mlp.gate_proj.lora_B.weight": ("F32", b),
            },
            fan_in_fan_out=fan_in_fan_out,
            target_modules=["gate_proj"],
        )
        out = merge_adapter(base, adapter, tmp_path / f"merged{fan_in_fan_out}")
        got = synth.read_st(out / "model.safetensors")["model.layers.0.mlp.gate_proj.weight"][1]
        delta = b.astype(np.float64) @ a
        want = _round(w + 2 * (delta.T if fan_in_fan_out else delta), "BF16")
        assert np.all(np.abs(got - want) <= np.abs(want) * 2.0**-7)
        assert (got == want).mean() > 0.99


# --------------------------------------------------------------------------- refusals


def _simple(
    synth: ModuleType, rng: np.random.Generator, root: Path, **config: object
) -> tuple[Path, Path]:
    base = synth.write_base(
        root / "base",
        [{"model.layers.0.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))}],
    )
    a, b = _lora(rng, 16, 16, 4)
    tensors = {
        f"{P}model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", a),
        f"{P}model.layers.0.self_attn.q_proj.lora_B.weight": ("F32", b),
    }
    tensors.update(config.pop("tensors", {}))  # type: ignore[call-overload]
    config.setdefault("target_modules", ["q_proj"])
    adapter = synth.write_adapter(root / "adapter", tensors, **config)
    return base, adapter


def _refused(base: Path, adapter: Path, out: Path, *words: str) -> AdapterMergeError:
    with pytest.raises(AdapterMergeError) as info:
        merge_adapter(base, adapter, out, image_name="cosmos-reason1-7b")
    err = info.value
    assert isinstance(err, ModelIncompatibilityError)
    assert err.image_name == "cosmos-reason1-7b"
    for word in words:
        assert word in str(err), str(err)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    return err


def test_dora_is_refused(tmp_path: Path, synth: ModuleType, rng: np.random.Generator) -> None:
    base, adapter = _simple(synth, rng, tmp_path, use_dora=True)
    _refused(base, adapter, tmp_path / "out", "DoRA", "use_dora")


def test_dora_magnitude_without_flag_is_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    magnitude = {
        f"{P}model.layers.0.self_attn.q_proj.lora_magnitude_vector": (
            "F32",
            np.ones(16, np.float32),
        )
    }
    base, adapter = _simple(synth, rng, tmp_path, tensors=magnitude)
    _refused(base, adapter, tmp_path / "out", "DoRA")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"peft_type": "IA3"}, ["IA3"]),
        ({"lora_bias": True}, ["lora_bias"]),
        ({"bias": "all"}, ["bias"]),
        ({"r": 8}, ["rank 8", "rank 4"]),
        ({"target_modules": ["k_proj"]}, ["target_modules", "q_proj"]),
        ({"alora_invocation_tokens": [1, 2]}, ["alora_invocation_tokens"]),
    ],
)
def test_unsupported_settings_are_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator, config: dict, words: list[str]
) -> None:
    base, adapter = _simple(synth, rng, tmp_path, **config)
    _refused(base, adapter, tmp_path / "out", *words)


def test_unknown_module_and_shape_mismatch(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    a, b = _lora(rng, 16, 16, 4)
    extra = {
        f"{P}model.language_model.layers.7.self_attn.q_proj.lora_A.weight": ("F32", a),
        f"{P}model.language_model.layers.7.self_attn.q_proj.lora_B.weight": ("F32", b),
    }
    base, adapter = _simple(synth, rng, tmp_path / "unknown", tensors=extra)
    err = _refused(
        base, adapter, tmp_path / "unknown" / "out", "layers.7.self_attn.q_proj", "counterpart"
    )
    assert "model.layers.7.self_attn.q_proj.weight" in err.reason  # the aliases it tried

    a, b = _lora(rng, 32, 16, 4)  # trained on a model whose q_proj is 32 x 16
    other = {
        f"{P}model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", a),
        f"{P}model.layers.0.self_attn.q_proj.lora_B.weight": ("F32", b),
    }
    base, adapter = _simple(synth, rng, tmp_path / "shape", tensors=other)
    _refused(base, adapter, tmp_path / "shape" / "out", "base mismatch", "[16, 16]", "[32, 16]")


def test_stray_tensor_and_quantized_base_are_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    stray = {f"{P}model.layers.0.self_attn.q_proj.bias": ("F32", np.ones(16, np.float32))}
    base, adapter = _simple(synth, rng, tmp_path / "stray", tensors=stray)
    _refused(base, adapter, tmp_path / "stray" / "out", "q_proj.bias", "neither a LoRA weight")

    base, adapter = _simple(synth, rng, tmp_path / "int8")
    synth.write_st(
        base / "model.safetensors",
        {"model.layers.0.self_attn.q_proj.weight": ("I8", np.ones((16, 16), np.int8))},
    )
    _refused(base, adapter, tmp_path / "int8" / "out", "I8", "quantized")


def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[:-10]))
    elif how == "header":
        raw[8:12] = b"\xff\xfe{["
        path.write_bytes(bytes(raw))
    elif how == "length":
        raw[0:8] = (10**9).to_bytes(8, "little")
        path.write_bytes(bytes(raw))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "header", "length", "empty"])
@pytest.mark.parametrize("which", ["adapter", "base"])
def test_corrupt_safetensors_are_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator, how: str, which: str
) -> None:
    base, adapter = _simple(synth, rng, tmp_path)
    target = (
        (adapter / "adapter_model.safetensors")
        if which == "adapter"
        else (base / "model.safetensors")
    )
    _corrupt(target, how)
    _refused(base, adapter, tmp_path / "out", target.name, "not a valid safetensors file")


def test_missing_files_are_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    base, adapter = _simple(synth, rng, tmp_path)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    _refused(base, adapter, tmp_path / "out", "adapter_model.bin", "safe_serialization")
    (adapter / "adapter_model.bin").unlink()
    _refused(base, adapter, tmp_path / "out", "adapter_model.safetensors is missing")
    (adapter / "adapter_config.json").unlink()
    _refused(base, adapter, tmp_path / "out", "adapter_config.json is missing")

    base2, adapter2 = _simple(synth, rng, tmp_path / "b")
    (base2 / "model.safetensors").unlink()
    _refused(base2, adapter2, tmp_path / "b" / "out", "no *.safetensors")


def test_index_naming_a_missing_shard_is_refused(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    shards = [
        {"model.layers.0.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))},
        {"model.norm.weight": ("BF16", synth.bf16_exact(rng, (16,)))},
    ]
    base = synth.write_base(tmp_path / "base", shards)
    _, adapter = _simple(synth, rng, tmp_path / "x")
    (base / "model-00002-of-00002.safetensors").unlink()
    _refused(base, adapter, tmp_path / "out", "model-00002-of-00002.safetensors", "missing")


# --------------------------------------------------------------------------- atomicity


def test_failure_while_writing_leaves_nothing(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    shards = [
        {f"model.layers.{i}.self_attn.q_proj.weight": ("BF16", synth.bf16_exact(rng, (16, 16)))}
        for i in range(2)
    ]
    base = synth.write_base(tmp_path / "base", shards)
    _, adapter = _simple(synth, rng, tmp_path / "a")

    def boom(event: MergeProgress) -> None:
        if event.shards_done == 1:
            raise KeyboardInterrupt  # e.g. Ctrl-C after the first shard

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        merge_adapter(base, adapter, out, on_progress=boom)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base"]


def test_existing_output_needs_overwrite(
    tmp_path: Path, synth: ModuleType, rng: np.random.Generator
) -> None:
    base, adapter = _simple(synth, rng, tmp_path)
    out = merge_adapter(base, adapter, tmp_path / "out")
    (out / "sentinel").write_text("old")
    with pytest.raises(WeightsError, match="overwrite"):
        merge_adapter(base, adapter, out)
    assert (out / "sentinel").exists()
    merge_adapter(base, adapter, out, overwrite=True)
    assert not (out / "sentinel").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "out"]
