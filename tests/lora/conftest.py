"""Fixtures for the LoRA merge tests.

``peft_built`` builds, once per session and in a subprocess with the vLLM tier's Python (torch,
transformers, peft; ``NIM_VLLM_PYTHON`` from ``$NIM_TEST_STATE/vllm/env``), the tiny bases, the
PEFT adapters of :data:`CASES` and peft's own ``merge_and_unload()`` of each (see
``peft_fixtures.py``). Without that environment the tests that need it fail when ``$CI`` is
set and skip otherwise, naming ``scripts/vllm-env.sh up``. The tests that need only numpy run
everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).parent
UP_COMMAND = "scripts/vllm-env.sh up"


def load_helper(name: str) -> ModuleType:
    """Import a helper module of this folder by path (tests run with --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lora_cases = load_helper("lora_cases")
CASES = lora_cases.CASES


def _env_file() -> Path:
    state = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env"))
    return state / "vllm" / "env"


def read_vllm_env() -> dict[str, str]:
    """The tier's exports, or {} when ``scripts/vllm-env.sh up`` has not run."""
    path = _env_file()
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, raw = line[len("export ") :].partition("=")
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    return values


def need_tier(env: dict[str, str], *keys: str) -> None:
    """Fail under CI, else skip, when the tier's environment lacks ``keys``."""
    missing = [k for k in keys if not env.get(k) or not Path(env[k]).exists()]
    if missing:
        msg = (
            f"the vLLM tier is not set up ({', '.join(missing)} missing in {_env_file()}); "
            f"run {UP_COMMAND}"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@dataclass(frozen=True)
class PeftBuilt:
    """What peft_fixtures.py built: bases, adapters, peft's merges."""

    root: Path
    python: Path
    env: dict[str, str]

    def base(self, name: str) -> Path:
        return self.root / "bases" / name

    def adapter(self, case: str) -> Path:
        return self.root / "cases" / case / "adapter"

    def reference(self, case: str) -> Path:
        return self.root / "cases" / case / "reference"

    def base_of(self, case: str) -> Path:
        return self.base(str(CASES[case]["base"]))

    def generate(self, case: str) -> dict[str, object]:
        return json.loads((self.root / "cases" / case / "generate.json").read_text())


@pytest.fixture(scope="session")
def synth() -> ModuleType:
    """The numpy-only helpers of lora_synth.py (synthetic checkpoints and adapters)."""
    return load_helper("lora_synth")


@pytest.fixture(scope="session")
def vllm_env() -> dict[str, str]:
    return read_vllm_env()


@pytest.fixture(scope="session")
def peft_built(tmp_path_factory: pytest.TempPathFactory, vllm_env: dict[str, str]) -> PeftBuilt:
    need_tier(vllm_env, "NIM_VLLM_PYTHON", "NIM_VLLM_MODEL_DIR")
    root = tmp_path_factory.mktemp("peft")
    spec = {
        "base_dir": vllm_env["NIM_VLLM_MODEL_DIR"],
        "bases": lora_cases.BASES,
        "cases": CASES,
    }
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [vllm_env["NIM_VLLM_PYTHON"], str(HERE / "peft_fixtures.py"), str(spec_path), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"peft_fixtures.py failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return PeftBuilt(root, Path(vllm_env["NIM_VLLM_PYTHON"]), vllm_env)
