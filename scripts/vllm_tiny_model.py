"""Build a tiny random-weight Qwen2.5-VL model directory, fully offline, for the real-vLLM tier.

    python scripts/vllm_tiny_model.py OUT_DIR

Run by ``scripts/vllm-env.sh up`` with the vLLM venv's Python (it needs torch, tokenizers and
transformers). The result is a ``Qwen2_5_VLForConditionalGeneration`` checkpoint of about 1.6 M
parameters that vLLM serves like the real cosmos-reason1-7b: the same architecture, the same
Qwen2-VL chat template and special tokens, and the real Qwen2.5-VL image processor, with a small
pixel budget (4 to 64 image tokens per image) so that the CPU server stays fast. The weights are
random, so the text it generates is meaningless; what the server does around it is real.

The tokenizer is Qwen's pipeline (NFC, Qwen's pre-tokenizer split, byte-level BPE), trained here
on this Python's own standard-library sources, so no download is needed. Everything is seeded:
two builds from the same script and library versions are identical.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Pixel budget of the image processor (the tests read it back from preprocessor_config.json).
PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # 28: one merged image token per 28x28 block of the resized image
MIN_PIXELS = 4 * FACTOR * FACTOR  # 3136
MAX_PIXELS = 64 * FACTOR * FACTOR  # 50176

VOCAB_SIZE = 4096  # BPE merges + specials
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2's pre-tokenizer split pattern (as in transformers' Qwen2TokenizerFast).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2-VL chat template: one <|vision_start|><|image_pad|><|vision_end|> per image part (the
# processor expands <|image_pad|> to one token per merged patch).
CHAT_TEMPLATE = "".join(
    [
        "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}",
        "{% for message in messages %}",
        "{% if loop.first and message['role'] != 'system' %}",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
        "<|im_start|>{{ message['role'] }}\n",
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n",
        "{% else %}{% for content in message['content'] %}",
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
        "{% set image_count.value = image_count.value + 1 %}",
        "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "{% elif content['type'] == 'video' or 'video' in content %}",
        "{% set video_count.value = video_count.value + 1 %}",
        "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}",
        "<|vision_start|><|video_pad|><|vision_end|>",
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}",
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}",
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ]
)


def training_files() -> list[str]:
    """Return a fixed, sorted list of stdlib sources to train the BPE on (offline)."""
    stdlib = Path(os.__file__).parent
    return [str(p) for p in sorted(stdlib.glob("*.py"))[:120]]


def build_tokenizer():  # type: ignore[no-untyped-def]
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train(training_files(), trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def main(out: Path) -> None:
    """Write the model directory to ``out``."""
    t0 = time.monotonic()
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )

    torch.manual_seed(1234)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)

    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=PATCH,
        temporal_patch_size=2,
        merge_size=MERGE,
    )
    try:  # the video processor needs torchvision (patched in the vllm venv); videos are off anyway
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(
            min_pixels=MIN_PIXELS,
            max_pixels=MAX_PIXELS,
            patch_size=PATCH,
            temporal_patch_size=2,
            merge_size=MERGE,
        )
    except ImportError:
        video_processor = None
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # also the standalone preprocessor_config.json
    tokenizer.save_pretrained(out)

    hidden, heads, kv_heads = 128, 2, 1
    head_dim = hidden // heads  # 64: a head size vLLM's CPU attention supports
    # M-RoPE sections (temporal, height, width) in rotary pairs: they sum to head_dim / 2
    mrope = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    text = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": mrope,
        },
        "bos_token_id": special["<|endoftext|>"],
        "eos_token_id": special["<|im_end|>"],
        "pad_token_id": special["<|endoftext|>"],
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "max_window_layers": 2,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "window_size": 4 * FACTOR,
        "out_hidden_size": hidden,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=special["<|image_pad|>"],
        video_token_id=special["<|video_pad|>"],
        vision_start_token_id=special["<|vision_start|>"],
        vision_end_token_id=special["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=[special["<|im_end|>"], special["<|endoftext|>"]],
        pad_token_id=special["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
    ).save_pretrained(out)

    check(out, special)
    params = sum(p.numel() for p in model.parameters())
    (out / "nim_async_tiny_model.json").write_text(
        json.dumps(
            {
                "params": params,
                "vocab": vocab,
                "min_pixels": MIN_PIXELS,
                "max_pixels": MAX_PIXELS,
                "special_tokens": special,
            },
            indent=2,
        )
    )
    print(f"{params} params, vocab {vocab}, built in {time.monotonic() - t0:.1f}s")


def check(out: Path, special: dict[str, int]) -> None:
    """Reload what was written and check that the processor expands images as Qwen2.5-VL does."""
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    sample = "def f(x):\n    return x  # ünïcode"
    if tok.decode(tok(sample)["input_ids"]) != sample:
        raise SystemExit("tokenizer does not round-trip")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    proc = AutoProcessor.from_pretrained(out)
    enc = proc(text=[prompt], images=[Image.new("RGB", (320, 240), (10, 200, 30))])
    ids = list(enc["input_ids"][0])
    grid = [int(v) for v in enc["image_grid_thw"][0]]
    want = grid[0] * grid[1] * grid[2] // (MERGE * MERGE)
    got = ids.count(special["<|image_pad|>"])
    if got != want or ids.count(special["<|vision_start|>"]) != 1:
        raise SystemExit(f"processor expanded the image to {got} tokens, grid {grid} says {want}")
    print(f"processor ok: 320x240 -> grid {grid}, {got} image tokens")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
