"""Read merged checkpoints back with the real libraries, in the vLLM tier's Python.

    $NIM_VLLM_PYTHON tests/lora/torch_check.py REQUEST.json RESULT.json

REQUEST.json: ``{"load": [dir, ...], "from_pretrained": [dir, ...], "bf16_bits": path}``.
For every ``load`` dir each shard is read with ``safetensors.torch.load_file`` (names, dtypes,
shapes); every ``from_pretrained`` dir is loaded with transformers; and ``bf16_bits`` gets
1,000,000 float32 bit patterns (random words plus edge cases) with torch's own bfloat16
conversion of each, as two uint32/uint16 arrays in one .npz file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(request: Path, result: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    req = json.loads(request.read_text())
    out: dict[str, object] = {"load": {}, "from_pretrained": {}}
    for d in req.get("load", []):
        tensors: dict[str, list[object]] = {}
        for shard in sorted(Path(d).glob("*.safetensors")):
            for name, t in load_file(shard).items():
                tensors[name] = [str(t.dtype), list(t.shape)]
        out["load"][d] = tensors  # type: ignore[index]
    for d in req.get("from_pretrained", []):
        model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.bfloat16)
        out["from_pretrained"][d] = sum(p.numel() for p in model.parameters())  # type: ignore[index]
    if req.get("bf16_bits"):
        rng = np.random.default_rng(99)
        words = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
        edges = np.array(
            [
                0x3F808000,
                0x3F818000,
                0x3F80FFFF,
                0x3F817FFF,
                0x7F7FFFFF,
                0xFF7FFFFF,
                0x7F800000,
                0xFF800000,
                0x00000001,
                0x80008000,
                0x007F8000,
                0x00018000,
                0x3F7F8000,
            ],
            dtype=np.uint32,
        )
        words[: len(edges)] = edges
        f32 = torch.from_numpy(words.view(np.float32).copy())
        bits = f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        np.savez(req["bf16_bits"], f32_bits=words, bf16_bits=bits)
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
