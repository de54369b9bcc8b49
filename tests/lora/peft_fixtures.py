"""Build tiny base models, PEFT LoRA adapters and peft's own merges, for tests/lora.

Run with the vLLM tier's Python (torch, transformers, peft), never imported by pytest:

    $NIM_VLLM_PYTHON tests/lora/peft_fixtures.py SPEC.json OUT_DIR

SPEC.json::

    {"base_dir": "<the tier's tiny Qwen2.5-VL>",
     "bases": {"qwen": {"source": "tier"},
               "qwen_sharded": {"source": "tier", "max_shard_size": "400KB"},
               "gpt2": {"source": "gpt2"},
               "qwen3vl": {"source": "qwen3vl"}},
     "cases": {"NAME": {"base": "qwen", "lora": {...LoraConfig kwargs...}, "b_std": 0.05,
                        "adapter_dtype": "float32" | "bfloat16", "saved_std": 0.05,
                        "generate": {"prompt": "...", "max_new_tokens": 8}}}}

Writes ``OUT_DIR/bases/<name>/`` (Hugging Face checkpoints), and per case
``OUT_DIR/cases/<name>/adapter/`` (``save_pretrained`` of the PEFT model, with every ``lora_B``
set to random values: PEFT initialises it to zero, which would make the merge a no-op) and
``OUT_DIR/cases/<name>/reference/`` (``merge_and_unload()`` saved with the base's shard size).
With ``generate`` it also writes greedy token ids of the base and of the peft-merged model to
``OUT_DIR/cases/<name>/generate.json`` (with the prompt's token ids, chat template applied).
Everything is seeded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def tiny_qwen3_vl():  # type: ignore[no-untyped-def]
    """A random-weight Qwen3-VL (checkpoint names model.language_model.* / model.visual.*)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 256,
            "max_position_embeddings": 512,
            "rope_scaling": rope,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
    )
    return Qwen3VLForConditionalGeneration(config)


def build_base(name: str, spec: dict, base_dir: Path, out: Path) -> Path:  # type: ignore[type-arg]
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Qwen2_5_VLForConditionalGeneration,
    )

    target = out / "bases" / name
    if spec["source"] == "gpt2":
        torch.manual_seed(7)
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=64)
        GPT2LMHeadModel(config).to(torch.bfloat16).save_pretrained(target)
        return target
    if spec["source"] == "qwen3vl":
        torch.manual_seed(11)
        tiny_qwen3_vl().to(torch.bfloat16).save_pretrained(target)
        return target
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.bfloat16)
    kwargs = {}
    if spec.get("max_shard_size"):
        kwargs["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(target, safe_serialization=True, **kwargs)
    for extra in base_dir.iterdir():  # tokenizer, processor, chat template, generation config
        weights = extra.name.endswith((".safetensors", ".index.json"))
        if extra.is_file() and not weights and not (target / extra.name).exists():
            shutil.copy2(extra, target / extra.name)
    AutoTokenizer.from_pretrained(target)  # the copied tokenizer loads
    return target


def load_base(path: Path, kind: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import (
        GPT2LMHeadModel,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    classes = {"gpt2": GPT2LMHeadModel, "qwen3vl": Qwen3VLForConditionalGeneration}
    cls = classes.get(kind, Qwen2_5_VLForConditionalGeneration)
    return cls.from_pretrained(path, dtype=torch.bfloat16)


def prompt_ids(tokenizer, prompt: str) -> list[int]:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return [int(t) for t in tokenizer(text)["input_ids"]]


def greedy(model, prompt: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def build_case(name: str, case: dict, bases: dict, kinds: dict, out: Path) -> None:  # type: ignore[type-arg]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(name)))
    base_path = bases[case["base"]]
    kind = kinds[case["base"]]
    model = load_base(base_path, kind)
    config = LoraConfig(**case["lora"])
    autocast = case.get("adapter_dtype", "float32") == "float32"
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=autocast)
    b_std = float(case.get("b_std", 0.05))
    saved_std = float(case.get("saved_std", 0.05))
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname or "lora_embedding_B" in pname:
                param.normal_(0.0, b_std)
            elif "lora_embedding_A" in pname:  # PEFT zeroes A (not B) for embeddings
                param.normal_(0.0, 1.0)
            elif ".modules_to_save." in pname:
                param.add_(torch.randn_like(param) * saved_std)
            elif "lora_magnitude_vector" in pname:
                param.mul_(1.5)
    case_dir = out / "cases" / name
    peft_model.save_pretrained(case_dir / "adapter", safe_serialization=True)
    if case.get("no_reference"):
        return
    merged = peft_model.merge_and_unload()
    shard = case.get("max_shard_size")
    kwargs = {"max_shard_size": shard} if shard else {}
    merged.save_pretrained(case_dir / "reference", safe_serialization=True, **kwargs)
    gen = case.get("generate")
    if gen:
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        base_model = load_base(base_path, kind)
        ids = prompt_ids(tokenizer, gen["prompt"])
        doc = {
            "prompt": gen["prompt"],
            "prompt_ids": ids,
            "base": greedy(base_model, ids, gen["max_new_tokens"]),
            "merged": greedy(merged, ids, gen["max_new_tokens"]),
        }
        (case_dir / "generate.json").write_text(json.dumps(doc))


def main(spec_path: Path, out: Path) -> None:
    spec = json.loads(spec_path.read_text())
    base_dir = Path(spec["base_dir"])
    bases: dict[str, Path] = {}
    kinds: dict[str, str] = {}
    for name, base in spec["bases"].items():
        bases[name] = build_base(name, base, base_dir, out)
        kinds[name] = base["source"]
    for name, case in spec["cases"].items():
        build_case(name, case, bases, kinds, out)
    (out / "done.json").write_text(json.dumps(sorted(spec["cases"])))
    print("built", len(bases), "bases and", len(spec["cases"]), "cases")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
