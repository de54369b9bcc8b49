"""Peak memory of the LoRA merge on a multi-shard checkpoint, against the largest shard.

Writes a synthetic bf16 checkpoint (N shards of 2-D matrices, an index, a config) and a LoRA
adapter on every matrix, then runs, each in a fresh interpreter that has imported numpy and
nim_async first:

* ``merge``: :func:`nim_async.deploy.lora.merge_adapter` into a new directory;
* ``peer``: reading the largest shard into memory (``Path.read_bytes``): what any merge that
  holds a whole shard (``safetensors.load_file`` + ``save_file``) needs at least.

Peak RSS is the child's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` minus its RSS right
before the measured step (so the imports are not counted); ``VmHWM`` is printed beside it as a
cross-check. ``ru_maxrss`` survives ``exec`` (it starts at the parent's RSS at fork), so the
orchestrating process stays small: it never imports numpy and builds the checkpoint in a
child of its own. The goal: the merge's peak stays well under one shard (it holds the
adapter plus a block of ~1 M elements of one tensor, ~20 MiB); the peer's is about one shard.

It also reports what the dependency choice costs: the installed size and import time of numpy
(the ``merge`` extra) and, where installed (here or in the vLLM tier's venv), of torch and of
the ``safetensors`` and ``ml_dtypes`` wheels a numpy merge could have used instead.

    .venv/bin/python benchmarks/lora_merge.py --quick     # 4 shards x 64 MiB
    .venv/bin/python benchmarks/lora_merge.py             # 4 shards x 512 MiB

Measured on the shared 2-core development machine (load average 10-13, 2026-12-02), every
matrix LoRA-targeted (the worst case: nothing is a plain byte copy):

    shards       adapter   merge peak   peer (read one shard)   ratio   merge speed
    4 x 64 MiB   8 MiB     22.0 MiB     63.9 MiB                0.34    15 MiB/s
    4 x 512 MiB  32 MiB    46.2 MiB     511.7 MiB               0.09    16 MiB/s

(2026-12-01, load 7-10: 22.2 / 63.8 MiB and 46.5 / 511.9 MiB, 26-32 MiB/s.) The merge's peak
is the adapter (decoded to float32) plus one ~1 M-element block, whatever the shard size.
Dependencies: numpy 40.7 MiB installed, 0.32-0.34 s to import; torch (the alternative extra)
716 MiB, 4.5-6.1 s; safetensors 1.3 MiB (its ``save_file`` takes a whole shard's tensors, so
a merge through it needs at least one shard in memory: the peer row); ml_dtypes 2.1 MiB (measured by
hand: ``pip install --no-deps --target DIR ml_dtypes``, 0.7-2.3 s to import at that load).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy
import nim_async.deploy.lora as lora

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0

def rss_kib():
    return status_kib("VmRSS")

mode, base, adapter, out, shard = sys.argv[1:6]
before = rss_kib()
t0 = time.perf_counter()
if mode == "merge":
    lora.merge_adapter(base, adapter, out)
else:
    data = Path(shard).read_bytes()
    assert len(data) > 0
wall = time.perf_counter() - t0
# ru_maxrss survives exec (it starts at the forking parent's peak); VmHWM is this image's own
print(json.dumps({"before_kib": before, "peak_kib": status_kib("VmHWM"),
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "wall_s": wall}))
"""


def _write_st(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(raw)]}
        pos += len(raw)
    doc = json.dumps(header).encode()
    doc += b" " * (-len(doc) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(doc)))
        f.write(doc)
        for _, _, raw in tensors.values():
            f.write(raw)


def build(root: Path, shards: int, shard_mib: int, dim: int, rank: int) -> tuple[Path, Path, int]:
    """Write the base (``shards`` files of ``shard_mib`` MiB) and the adapter; return sizes."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = root / "base"
    adapter = root / "adapter"
    base.mkdir()
    adapter.mkdir()
    per_matrix = dim * dim * 2
    per_shard = max(1, shard_mib * 2**20 // per_matrix)
    weight_map: dict[str, str] = {}
    lora: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    largest = 0
    layer = 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
        for _ in range(per_shard):
            key = f"model.layers.{layer}.mlp.up_proj"
            bits = (rng.standard_normal((dim, dim), dtype=np.float32) * 0.02).view(np.uint32)
            tensors[f"{key}.weight"] = ("BF16", (dim, dim), (bits >> 16).astype("<u2").tobytes())
            a = (rng.standard_normal((rank, dim), dtype=np.float32) * 0.01).tobytes()
            b = (rng.standard_normal((dim, rank), dtype=np.float32) * 0.01).tobytes()
            lora[f"base_model.model.{key}.lora_A.weight"] = ("F32", (rank, dim), a)
            lora[f"base_model.model.{key}.lora_B.weight"] = ("F32", (dim, rank), b)
            weight_map[f"{key}.weight"] = name
            layer += 1
        _write_st(base / name, tensors)
        largest = max(largest, (base / name).stat().st_size)
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (base / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    _write_st(adapter / "adapter_model.safetensors", lora)
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["up_proj"]}
        )
    )
    return base, adapter, largest


def child(mode: str, base: Path, adapter: Path, out: Path, shard: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(base), str(adapter), str(out), str(shard)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def dependency_costs() -> list[tuple[str, str, float, float]]:
    """(package, where, installed MiB, import seconds) of the merge's dependency and the others.

    numpy (the ``merge`` extra) from this venv; torch, and the ``safetensors`` and ``ml_dtypes``
    wheels a numpy merge could have used instead of the standard-library reader and the bf16 bit
    conversion, from this venv or the vLLM tier's, where installed (skipped otherwise).
    """
    rows: list[tuple[str, str, float, float]] = []
    env_file = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "vllm" / "env"
    tier_python = None
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if line.startswith("export NIM_VLLM_PYTHON="):
                tier_python = shlex.split(line.split("=", 1)[1])[0]
    pythons = [("venv", sys.executable)]
    if tier_python and Path(tier_python).exists():
        pythons.append(("tier", tier_python))
    for package in ("numpy", "torch", "safetensors", "ml_dtypes"):
        for label, python in pythons:
            code = (
                "import importlib.util, time, pathlib, sys; import numpy; "
                f"spec = importlib.util.find_spec('{package}'); "
                "spec is None and sys.exit(3); t = time.perf_counter(); "
                f"import {package}; dt = time.perf_counter() - t; "
                "print(pathlib.Path(spec.origin).parent, dt)"
            )
            if package == "numpy":  # numpy's own import, not one already done
                code = code.replace("import numpy; ", "", 1)
            runs = []
            where = ""
            for _ in range(3):
                out = subprocess.run([python, "-c", code], capture_output=True, text=True)
                if out.returncode != 0:
                    break
                where, dt = out.stdout.split()
                runs.append(float(dt))
            if runs:
                rows.append((package, label, _du(Path(where)) / 2**20, min(runs)))
                break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 shards x 64 MiB")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the builder child
    args = parser.parse_args()
    shard_mib = args.shard_mib or (64 if args.quick else 512)
    dim = 2048 if shard_mib <= 128 else 4096  # 8 MiB or 32 MiB matrices
    if args.build is not None:
        build(args.build, args.shards, shard_mib, dim, args.rank)
        return
    with tempfile.TemporaryDirectory(prefix="lora-merge-bench-") as tmp:
        root = Path(tmp)
        subprocess.run(
            [sys.executable, __file__, "--build", str(root), "--shards", str(args.shards),
             "--shard-mib", str(shard_mib), "--rank", str(args.rank)],
            check=True,
        )  # fmt: skip
        base, adapter = root / "base", root / "adapter"
        largest = max(p.stat().st_size for p in base.glob("*.safetensors"))
        adapter_mib = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
        shard = max(base.glob("*.safetensors"), key=lambda p: p.stat().st_size)
        results: dict[str, list[dict[str, float]]] = {"merge": [], "peer": []}
        # interleaved, twice: the machine is shared
        for i in range(2):
            for mode in ("merge", "peer"):
                results[mode].append(child(mode, base, adapter, root / f"out{i}", shard))
        merged_ok = (root / "out0" / "model.safetensors.index.json").is_file()
    mib = 1024.0
    shard_size = largest / 2**20

    def peak(mode: str, field: str = "maxrss_kib") -> float:
        return float(min(r[field] - r["before_kib"] for r in results[mode])) / mib

    merge_peak, peer_peak = peak("merge"), peak("peer")
    merge_hwm, peer_hwm = peak("merge", "peak_kib"), peak("peer", "peak_kib")
    wall = min(r["wall_s"] for r in results["merge"])
    total = args.shards * shard_size
    print(
        f"checkpoint: {args.shards} shards, largest {shard_size:.1f} MiB, "
        f"bf16 {dim}x{dim} matrices, adapter r={args.rank} on each ({adapter_mib:.1f} MiB), "
        f"merged ok: {merged_ok}"
    )
    print(
        f"{'step':<32}{'peak RSS over start (MiB)':>27}{'x largest shard':>17}{'VmHWM (MiB)':>13}"
    )
    for label, p, h in (
        ("merge_adapter (all shards)", merge_peak, merge_hwm),
        ("peer: read the largest shard", peer_peak, peer_hwm),
    ):
        print(f"{label:<32}{p:>27.1f}{p / shard_size:>17.2f}{h:>13.1f}")
    print(f"merge wall time {wall:.2f} s ({total / wall:.0f} MiB/s of checkpoint)")
    print(f"merge peak / peer peak = {merge_peak / peer_peak:.2f}")
    print()
    print(f"{'dependency':<12}{'from':<6}{'installed (MiB)':>18}{'import (s, best of 3)':>24}")
    for package, where, size, seconds in dependency_costs():
        print(f"{package:<12}{where:<6}{size:>18.1f}{seconds:>24.3f}")


if __name__ == "__main__":
    main()
