"""Deployment and sampling configuration (pydantic models, no network IO).

:class:`NIMConfig` describes a NIM container deployment; :class:`NIMSamplingParams` describes
how the model samples one answer. Both reject unknown fields and out-of-range values with an
error that names the field.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nim_async.catalog import KNOWN_IMAGES
from nim_async.errors import InvalidConfigError, InvalidParameterError

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_VI_ENDPOINT",
    "NIMConfig",
    "NIMSamplingParams",
    "parse_memory_size",
]

DEFAULT_REGISTRY = "nvcr.io/nim/nvidia"
DEFAULT_VI_ENDPOINT = "https://api.vi.datature.com/"
CONTAINER_CACHE_DIR = "/opt/nim/.cache"

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_memory_size(value: str) -> int:
    """Parse a memory size the way the Docker CLI does (binary units: ``"32GB"`` = 32 GiB).

    Args:
        value: A size such as ``"32GB"``, ``"512m"``, ``"1g"`` or ``"1048576"``.

    Returns:
        The size in bytes.

    Raises:
        ValueError: If the text is not a size.
    """
    match = _MEMORY_RE.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a memory size; use a number with an optional unit, "
            "like '32GB' or '512m'"
        )
    number, unit, _ = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


def _first_field(exc: ValidationError) -> str | None:
    for error in exc.errors():
        if error["loc"]:
            return ".".join(str(part) for part in error["loc"])
    return None


def _describe(model: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or model
        msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return f"Invalid {model}: " + "; ".join(lines)


class NIMSamplingParams(BaseModel):
    """Sampling parameters for NIM model generation.

    All fields have the documented defaults. Ranges follow vLLM: ``temperature >= 0``,
    ``0 < top_p <= 1``, ``top_k == -1 or >= 1``, ``0 <= min_p <= 1``, presence and frequency
    penalties in ``[-2, 2]``, ``0 < repetition_penalty <= 2``, ``max_tokens >= 1``,
    ``0 <= min_tokens <= max_tokens``, and at most one ``guided_*`` field; numbers must be
    finite (``inf`` and ``nan`` are refused). ``media_io_kwargs`` and ``mm_processor_kwargs``
    (vi-sdk's video options for cosmos-reason2) must be dicts of plain JSON data; they are
    passed to the server as given.

    Raises:
        InvalidParameterError: (also a ``ValueError``) naming the offending field and what
            it must be.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    if not TYPE_CHECKING:

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidParameterError(
                    _describe("NIMSamplingParams", exc), field=_first_field(exc)
                ) from None

    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    top_k: int = Field(50, description="Top-k sampling (-1 disables).")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Minimum probability threshold.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Penalty for token presence.")
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Penalty for token frequency."
    )
    repetition_penalty: float = Field(1.05, gt=0.0, le=2.0, description="Penalty for repetition.")
    max_tokens: int = Field(1024, ge=1, description="Maximum tokens to generate.")
    min_tokens: int = Field(0, ge=0, description="Minimum tokens before a stop may end generation.")
    stop: str | list[str] | None = Field(None, description="Stop sequences.")
    seed: int | None = Field(None, description="Random seed for repeatable sampling.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence.")
    logprobs: int | None = Field(None, ge=0, description="Number of log probabilities per token.")
    prompt_logprobs: int | None = Field(None, ge=0, description="Log probabilities of the prompt.")
    guided_json: str | dict[str, Any] | None = Field(None, description="JSON schema for output.")
    guided_regex: str | None = Field(None, description="Regular expression the output matches.")
    guided_choice: list[str] | None = Field(None, description="The output is one of these.")
    guided_grammar: str | None = Field(None, description="Grammar (EBNF) for the output.")
    media_io_kwargs: dict[str, Any] | None = Field(
        None,
        description="Options for loading media on the server, passed through as given (vLLM's "
        'media_io_kwargs; for video e.g. {"fps": 2.0} or {"num_frames": 16}).',
    )
    mm_processor_kwargs: dict[str, Any] | None = Field(
        None,
        description="Options for the server's multimodal processor, passed through as given "
        '(e.g. {"shortest_edge": 336, "longest_edge": 672} for Qwen3-VL video frames).',
    )

    @field_validator("media_io_kwargs", "mm_processor_kwargs", mode="before")
    @classmethod
    def _check_passthrough(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"{info.field_name} must be a dict, got {type(value).__name__}")
        _check_json_safe(value, info.field_name or "value")
        return value

    @field_validator("top_k")
    @classmethod
    def _check_top_k(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("top_k must be -1 (disabled) or at least 1")
        return value

    @field_validator("guided_json")
    @classmethod
    def _check_guided_json(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str):
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"guided_json is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("guided_json must be a JSON schema object")
        return value

    @field_validator("guided_regex")
    @classmethod
    def _check_guided_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"guided_regex is not a valid regular expression: {exc}") from None
        return value

    @field_validator("guided_choice")
    @classmethod
    def _check_guided_choice(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("guided_choice must list at least one choice")
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> NIMSamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        guided = [name for name in GUIDED_FIELDS if getattr(self, name) is not None]
        if len(guided) > 1:
            raise ValueError(f"set at most one guided_* field, got {', '.join(guided)}")
        return self

    @property
    def guided_field(self) -> str | None:
        """The name of the ``guided_*`` field that is set, or ``None``."""
        for name in GUIDED_FIELDS:
            if getattr(self, name) is not None:
                return name
        return None

    def media_io_kwargs_by_modality(self, modality: str = "video") -> dict[str, Any] | None:
        """Return :attr:`media_io_kwargs` keyed by modality, as vLLM's chat request takes them.

        vLLM (0.32: ``ChatCompletionRequest.media_io_kwargs: dict[str, dict]``) wants
        ``{"video": {"fps": 2.0}}``; vi-sdk documents the flat ``{"fps": 2.0}`` (sent under
        ``nvext``). A flat dict is put under ``modality``; one whose values are all dicts is
        taken as already keyed; an empty dict stays empty (vLLM 0.32 without
        ``--trust-request-mm-kwargs`` accepts ``{}`` but refuses ``{"video": {}}``).

        Args:
            modality: The modality a flat dict applies to.

        Returns:
            The keyed dict, or ``None`` when :attr:`media_io_kwargs` is not set.
        """
        value = self.media_io_kwargs
        if value is None:
            return None
        if not value or all(isinstance(v, dict) for v in value.values()):
            return dict(value)
        return {modality: dict(value)}

    def guided_json_schema(self) -> dict[str, Any] | None:
        """Return ``guided_json`` as a dict (parsing it when given as text), or ``None``."""
        if self.guided_json is None:
            return None
        if isinstance(self.guided_json, str):
            parsed: dict[str, Any] = orjson.loads(self.guided_json)
            return parsed
        return self.guided_json


def _check_json_safe(value: object, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``value`` is plain JSON data.

    Plain JSON data: ``None``, booleans, integers, finite floats, strings, and lists or dicts
    (with string keys) of those.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_safe(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings, got {key!r}")
            _check_json_safe(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} must be JSON data (numbers, text, lists, dicts), got {value!r:.60}")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


GpuSpec = Literal["all"] | int | list[str] | list[list[str]] | None
"""``NIMConfig.gpus``: ``"all"``, a count, device ids, one group of device ids per replica, or
``None`` (no GPU request)."""


class NIMConfig(BaseModel):
    """Configuration for a NIM deployment.

    The 18 documented fields keep their documented defaults. ``nvidia_api_key`` falls back to
    ``NGC_API_KEY``; ``secret_key`` / ``organization_id`` fall back to
    ``DATATURE_VI_SECRET_KEY`` / ``DATATURE_VI_ORGANIZATION_ID``. Secrets are held as
    :class:`pydantic.SecretStr` and never appear in ``repr`` or errors.

    ``merge_adapter``: when the weights (a Vi run or ``model_path``) hold a LoRA/PEFT adapter
    beside the full weights, merge it into them before serving (cached next to the download,
    rebuilt with ``overwrite``), so the served model is the fine-tune; needs
    ``pip install 'nim-async[merge]'``. Off by default: NIM then serves the base weights and
    the deploy warns that the adapter is not applied.

    ``replicas``: how many containers of this image and config to run (default 1: one container,
    named and published exactly as before). Replica ``i`` is published on host port
    ``port + i`` and named ``container_name`` (replica 0) or ``{container_name}-r{i}``. GPUs per
    replica: with ``gpus="all"`` and more than one replica, replica ``i`` gets device ``i``; a
    count ``k`` gives replica ``i`` devices ``i*k .. i*k+k-1``; device ids are split evenly, in
    order; explicit groups give one list of device ids per replica
    (``gpus=[["0", "1"], ["2", "3"]]``, exactly ``replicas`` lists, no device in two).

    Raises:
        InvalidConfigError: naming the field, for any invalid value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    nvidia_api_key: SecretStr = Field(
        default_factory=lambda: SecretStr(_env("NGC_API_KEY") or ""),
        description="NGC API key (falls back to NGC_API_KEY).",
    )
    image_name: str = Field("cosmos-reason1-7b", description="NIM image name.")
    tag: str = Field("latest", description="Image tag.")
    port: int = Field(8000, description="Host port the NIM is published on.")
    shm_size: str = Field("32GB", description="Shared memory size (Docker CLI syntax, binary).")
    max_model_len: int = Field(8192, ge=1, description="Maximum model context length.")
    local_cache_dir: str | None = Field(None, description="Host cache dir (default ~/.cache/nim).")
    use_existing_container: bool = Field(True, description="Reuse a running container.")
    auto_kill_existing_container: bool = Field(False, description="Replace an existing container.")
    stream_logs: bool = Field(True, description="Stream container logs to the console.")
    force_pull: bool = Field(False, description="Pull the image even if present.")
    secret_key: SecretStr | None = Field(
        default_factory=lambda: SecretStr(v) if (v := _env("DATATURE_VI_SECRET_KEY")) else None,
        description="Datature Vi secret key (falls back to DATATURE_VI_SECRET_KEY).",
    )
    organization_id: str | None = Field(
        default_factory=lambda: _env("DATATURE_VI_ORGANIZATION_ID"),
        description="Datature Vi organization id (falls back to DATATURE_VI_ORGANIZATION_ID).",
    )
    run_id: str | None = Field(None, description="Vi run id whose weights to deploy.")
    ckpt: str | None = Field(None, description="Checkpoint (run output) id; latest when None.")
    model_save_path: str | Path = Field("~/.vi/models", description="Where Vi models are saved.")
    served_model_name: str | None = Field(None, description="Name to serve the model as.")
    overwrite: bool = Field(False, description="Re-download an existing model.")
    merge_adapter: bool = Field(
        False, description="Merge a LoRA/PEFT adapter into the weights before serving."
    )

    registry: str = Field(DEFAULT_REGISTRY, description="Registry path images are pulled from.")
    gpus: GpuSpec = Field(
        "all",
        description="'all', a count, device ids, one list of device ids per replica, or None "
        "for no GPU.",
    )
    host: str = Field("127.0.0.1", description="Host address the port is published on.")
    startup_timeout: float = Field(
        600.0, gt=0, allow_inf_nan=False, description="Seconds to wait for readiness."
    )
    model_path: str | Path | None = Field(None, description="Local Hugging Face checkpoint dir.")
    endpoint: str = Field(
        default_factory=lambda: _env("DATATURE_VI_API_ENDPOINT") or DEFAULT_VI_ENDPOINT,
        description="Datature Vi API base URL (falls back to DATATURE_VI_API_ENDPOINT).",
    )
    replicas: int = Field(
        1,
        description="Containers of this image and config, on host ports port .. port+replicas-1.",
    )

    if not TYPE_CHECKING:

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidConfigError(
                    _describe("NIMConfig", exc), field=_first_field(exc)
                ) from None

    @field_validator("nvidia_api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret:
            raise ValueError(
                "an NGC API key is required: pass NIMConfig(nvidia_api_key='nvapi-...') "
                "or set the NGC_API_KEY environment variable"
            )
        if not secret.startswith("nvapi-"):
            raise ValueError(
                "the NGC API key must start with 'nvapi-' (create one at ngc.nvidia.com)"
            )
        return value

    @field_validator("image_name")
    @classmethod
    def _check_image(cls, value: str) -> str:
        if value not in KNOWN_IMAGES:
            known = ", ".join(sorted(KNOWN_IMAGES))
            raise ValueError(f"unknown NIM image {value!r}; supported images: {known}")
        return value

    @field_validator("tag")
    @classmethod
    def _check_tag(cls, value: str) -> str:
        if not re.fullmatch(r"[\w][\w.-]{0,127}", value):
            raise ValueError(f"{value!r} is not a valid image tag")
        return value

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {value}")
        return value

    @field_validator("shm_size")
    @classmethod
    def _check_shm(cls, value: str) -> str:
        parse_memory_size(value)
        return value

    @field_validator("registry")
    @classmethod
    def _check_registry(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value or "://" in value or " " in value:
            raise ValueError(
                f"registry must be a host with an optional path, like 'nvcr.io/nim/nvidia', "
                f"got {value!r}"
            )
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _check_gpu_groups(cls, value: object) -> object:
        # one group of device ids per replica: [["0", "1"], ["2", "3"]]; integers become text
        if not isinstance(value, list | tuple) or not any(
            isinstance(item, list | tuple) for item in value
        ):
            return value
        groups: list[list[str]] = []
        for i, group in enumerate(value):
            if not isinstance(group, list | tuple):
                raise ValueError(
                    "gpus mixes device ids and groups; give either device ids "
                    "(['0', '1']) or one list per replica ([['0'], ['1']])"
                )
            if not group:
                raise ValueError(f"gpus group {i} is empty; every replica needs a device id")
            ids = []
            for device in group:
                if isinstance(device, bool) or not isinstance(device, str | int):
                    raise ValueError(
                        f"gpus group {i} holds {device!r}; device ids are text or integers"
                    )
                ids.append(str(device))
            groups.append(ids)
        return groups

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: GpuSpec) -> GpuSpec:
        if isinstance(value, bool):
            raise ValueError(
                "gpus must be 'all', a count, a list of device ids, one list of device ids per "
                "replica, or None"
            )
        if isinstance(value, int) and value < 1:
            raise ValueError("gpus as a count must be at least 1 (use None for no GPU)")
        if isinstance(value, list) and not value:
            raise ValueError("gpus as a list must name at least one device id")
        return value

    @field_validator("replicas", mode="before")
    @classmethod
    def _check_replicas(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"replicas must be a whole number (1 or more), got {value!r}")
        if value < 1:
            raise ValueError(f"replicas must be at least 1, got {value}")
        return value

    @field_validator("replicas")
    @classmethod
    def _check_replica_set(cls, n: int, info: ValidationInfo) -> int:
        # the port range and the GPU split for n replicas (port and gpus are validated first)
        port = info.data.get("port")
        if isinstance(port, int) and port + n - 1 > 65535:
            raise ValueError(
                f"replicas={n} from port={port} needs host ports {port}-{port + n - 1}, past "
                "65535; choose a lower port"
            )
        gpus = info.data.get("gpus")
        if isinstance(gpus, list) and gpus and isinstance(gpus[0], list):
            if len(gpus) != n:
                raise ValueError(
                    f"gpus gives {len(gpus)} GPU group(s) for replicas={n}; give one list of "
                    f"device ids per replica, e.g. gpus={[[str(i)] for i in range(n)]!r}"
                )
            seen: dict[str, int] = {}
            for i, group in enumerate(gpus):
                for device in group:
                    if device in seen:
                        raise ValueError(
                            f"GPU {device!r} is in gpus group {seen[device]} and group {i}; "
                            "each replica needs GPUs of its own"
                        )
                    seen[device] = i
        elif isinstance(gpus, list) and n > 1 and len(gpus) % n:
            raise ValueError(
                f"gpus lists {len(gpus)} device id(s) for replicas={n}; give a multiple of {n} "
                "(split evenly, in order) or one list of device ids per replica, e.g. "
                f"gpus={[[str(i)] for i in range(n)]!r}"
            )
        return n

    @field_validator("served_model_name")
    @classmethod
    def _check_served_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", value):
            raise ValueError(
                f"served_model_name {value!r} must also be a valid container name "
                "(letters, digits, '_', '.', '-')"
            )
        return value

    @model_validator(mode="after")
    def _check_weights_source(self) -> NIMConfig:
        if self.run_id is not None and self.model_path is not None:
            raise ValueError("set run_id (Vi weights) or model_path (local weights), not both")
        if self.run_id is not None:
            if self.secret_key is None:
                raise ValueError(
                    "run_id needs secret_key (or DATATURE_VI_SECRET_KEY) to download Vi weights"
                )
            if not self.organization_id:
                raise ValueError(
                    "run_id needs organization_id (or DATATURE_VI_ORGANIZATION_ID) to download "
                    "Vi weights"
                )
        if self.ckpt is not None and self.run_id is None:
            raise ValueError("ckpt only applies together with run_id")
        return self

    # ------------------------------------------------------------------ derived values

    @property
    def image_ref(self) -> str:
        """The full image reference ``{registry}/{image_name}:{tag}``."""
        return f"{self.registry}/{self.image_name}:{self.tag}"

    @property
    def registry_server(self) -> str:
        """The registry login server: the first path part of :attr:`registry`."""
        return self.registry.split("/", 1)[0]

    @property
    def container_name(self) -> str:
        """The container name: ``served_model_name`` or else ``image_name``."""
        return self.served_model_name or self.image_name

    @property
    def shm_size_bytes(self) -> int:
        """:attr:`shm_size` in bytes (binary units, as the Docker CLI reads it)."""
        return parse_memory_size(self.shm_size)

    @property
    def cache_dir(self) -> Path:
        """The host cache directory, expanded (default ``~/.cache/nim``)."""
        return Path(self.local_cache_dir or "~/.cache/nim").expanduser()

    @property
    def models_dir(self) -> Path:
        """:attr:`model_save_path`, expanded."""
        return Path(self.model_save_path).expanduser()

    @property
    def base_url(self) -> str:
        """URL of the deployed NIM as seen from this host (replica 0's with several)."""
        return self.replica_base_url(0)

    @property
    def replica_base_urls(self) -> list[str]:
        """The base URL of every replica as seen from this host, replica 0 first.

        What a predictor's ``endpoints`` are; not :attr:`endpoint`, the Vi API's URL.
        """
        return [self.replica_base_url(i) for i in range(self.replicas)]

    def replica_base_url(self, replica: int) -> str:
        """The URL replica ``replica`` serves at from this host (host port ``port + replica``).

        Args:
            replica: The replica's index (0 .. ``replicas - 1``).
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port + replica}"

    def ensure_cache_dir(self) -> Path:
        """Create the cache directory if missing and check that it is writable.

        Returns:
            The cache directory.

        Raises:
            InvalidConfigError: naming ``local_cache_dir`` when it cannot be used.
        """
        path = self.cache_dir
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidConfigError(
                f"local_cache_dir: cannot create {path}: {exc.strerror}", field="local_cache_dir"
            ) from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise InvalidConfigError(
                f"local_cache_dir: {path} is not writable by this user; choose another directory "
                "or fix its permissions",
                field="local_cache_dir",
            )
        return path

    def config_hash(self) -> str:
        """A short hash of the settings that shape the container (secrets excluded).

        Stored as a container label so a reused container can be told apart from one started
        with different settings.
        """
        shaping = self.model_dump(
            include={
                "image_name",
                "tag",
                "registry",
                "port",
                "shm_size",
                "max_model_len",
                "served_model_name",
                "gpus",
                "host",
                "run_id",
                "ckpt",
                "model_path",
            },
            mode="json",
        )
        if self.merge_adapter:  # only when set: existing containers keep their hash
            shaping["merge_adapter"] = True
        if self.replicas != 1:  # likewise
            shaping["replicas"] = self.replicas
        return hashlib.sha256(orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
