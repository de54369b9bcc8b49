"""The tiny bases and PEFT adapters tests/lora builds with peft (see peft_fixtures.py).

Each case is a ``LoraConfig`` and a base; ``MERGE_CASES`` are compared with peft's own
``merge_and_unload()``, ``served`` is also served by a second real vLLM, ``dora`` must be refused.
"""

from __future__ import annotations

LANG_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

BASES = {
    "qwen": {"source": "tier"},
    "qwen_sharded": {"source": "tier", "max_shard_size": "400KB"},
    "gpt2": {"source": "gpt2"},
    "qwen3vl": {"source": "qwen3vl"},
}

CASES: dict[str, dict[str, object]] = {
    # language attention q/v, the classic LoRA recipe
    "lang_qv": {
        "base": "qwen",
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    },
    # MLP with rsLoRA: the names also match the vision tower's MLP (language + vision)
    "mlp_rslora": {
        "base": "qwen",
        "lora": {
            "r": 8,
            "lora_alpha": 16,
            "use_rslora": True,
            "target_modules": ["gate_proj", "up_proj", "down_proj"],
        },
    },
    # vision only, by regex, alpha/r not an integer
    "vision_regex": {
        "base": "qwen",
        "lora": {
            "r": 2,
            "lora_alpha": 3,
            "target_modules": r"model\.visual\.(blocks\.\d+\.attn\.(qkv|proj)|merger\.mlp\.0)",
        },
    },
    # modules_to_save replaces lm_head; o_proj gets LoRA
    "saved_lm_head": {
        "base": "qwen",
        "lora": {
            "r": 4,
            "lora_alpha": 4,
            "target_modules": ["o_proj"],
            "modules_to_save": ["lm_head"],
        },
    },
    # per-module rank and alpha
    "patterns": {
        "base": "qwen",
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "k_proj"],
            "rank_pattern": {"k_proj": 2},
            "alpha_pattern": {"q_proj": 32},
        },
    },
    # embedding LoRA (lora_embedding_A/B)
    "embedding": {
        "base": "qwen",
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens"]},
    },
    # adapter weights stored in bf16 (peft then rounds the delta before adding it)
    "bf16_adapter": {
        "base": "qwen",
        "adapter_dtype": "bfloat16",
        "lora": {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "down_proj"]},
    },
    # every linear module of language + vision on a multi-shard base
    "sharded_all": {
        "base": "qwen_sharded",
        "max_shard_size": "400KB",
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": [*LANG_ALL, "qkv", "proj"]},
    },
    # GPT-2's Conv1D layers store (in, out): fan_in_fan_out
    "gpt2_fan_in_fan_out": {
        "base": "gpt2",
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["c_attn", "c_fc"],
            "fan_in_fan_out": True,
        },
    },
    # Qwen3-VL (stored as model.language_model.* / model.visual.*): language attention and the
    # vision tower's attention, MLP, merger and deepstack mergers (linear_fc1), with rsLoRA
    "qwen3vl_lang_vision": {
        "base": "qwen3vl",
        "lora": {
            "r": 8,
            "lora_alpha": 8,
            "use_rslora": True,
            "target_modules": ["q_proj", "v_proj", "qkv", "linear_fc1"],
        },
    },
    # the served check: a strong adapter on every language linear layer
    "served": {
        "base": "qwen",
        "b_std": 0.3,
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": LANG_ALL},
        "generate": {"prompt": "Describe the picture in one sentence.", "max_new_tokens": 8},
    },
    # cannot be merged: DoRA
    "dora": {
        "base": "qwen",
        "no_reference": True,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True},
    },
}

MERGE_CASES = [n for n, c in CASES.items() if not c.get("no_reference") and n != "served"]
