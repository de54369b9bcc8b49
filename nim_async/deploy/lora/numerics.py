"""The merge's one dependency (numpy) and its dtype conversions.

numpy is imported only when a merge runs (:func:`numpy_module`); without it,
:func:`require_merge_support` raises :class:`~nim_async.errors.InvalidConfigError` naming
:data:`INSTALL_HINT`. Arithmetic is float32 (float64 for float64 weights) with one
round-to-nearest-even back to the stored dtype; bfloat16 is converted by bit manipulation on
``uint16`` (exact, and the same rounding as torch's), so neither torch nor ``ml_dtypes`` is
needed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from nim_async.errors import InvalidConfigError

__all__ = [
    "FLOAT_DTYPES",
    "INSTALL_HINT",
    "bf16_bits_to_f32",
    "compute_dtype",
    "decode",
    "encode",
    "f32_to_bf16_bits",
    "merge_support_available",
    "numpy_module",
    "require_merge_support",
]

INSTALL_HINT = "pip install 'nim-async[merge]'"
"""The command that installs what the merge needs (numpy)."""

FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
"""The safetensors dtypes the merge reads and writes (anything else is refused)."""

_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def merge_support_available() -> bool:
    """Whether the merge's dependency (numpy) is installed."""
    return importlib.util.find_spec("numpy") is not None


def require_merge_support() -> None:
    """Fail early when the merge cannot run in this environment.

    Raises:
        InvalidConfigError: numpy is not installed (names :data:`INSTALL_HINT`); ``field`` is
            ``"merge_adapter"``.
    """
    if not merge_support_available():
        raise InvalidConfigError(
            f"merge_adapter=True needs numpy to merge the LoRA adapter into the weights: "
            f"{INSTALL_HINT}",
            field="merge_adapter",
        )


def numpy_module() -> Any:
    """The numpy module, after :func:`require_merge_support`.

    Raises:
        InvalidConfigError: numpy is not installed.
    """
    require_merge_support()
    import numpy

    return numpy


def compute_dtype(dtype: str) -> str:
    """The dtype a stored ``dtype`` is computed in: ``F64`` for ``F64``, else ``F32``."""
    return "F64" if dtype == "F64" else "F32"


def bf16_bits_to_f32(np: Any, bits: Any) -> Any:
    """bfloat16 bit patterns (``uint16``) to float32: exact (the upper half of a float32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(np: Any, values: Any) -> Any:
    """float32 to bfloat16 bit patterns, round to nearest even; NaN becomes ``0x7FC0`` (torch's)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # rounded = (bits + 0x7FFF + lsb) >> 16 with lsb the lowest kept bit; uint32 wraps only for
    # NaN payloads, which are replaced below. In place on one temporary: this is the hot loop.
    rounded = bits >> np.uint32(16)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def decode(np: Any, raw: bytes, dtype: str, compute: str) -> Any:
    """Raw little-endian tensor bytes of ``dtype`` to a fresh flat array of ``compute``.

    Args:
        np: The numpy module.
        raw: The bytes.
        dtype: Their safetensors dtype (one of :data:`FLOAT_DTYPES`).
        compute: ``"F32"`` or ``"F64"``.

    Returns:
        A writable one-dimensional float32 or float64 array.
    """
    if dtype == "BF16":
        values = bf16_bits_to_f32(np, np.frombuffer(raw, dtype="<u2"))  # a fresh array already
        return values if compute == "F32" else values.astype(np.float64)
    values = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype])
    return values.astype(np.float64 if compute == "F64" else np.float32, copy=True)


def encode(np: Any, values: Any, dtype: str) -> bytes:
    """A float array to the raw little-endian bytes of ``dtype`` (round to nearest even).

    Args:
        np: The numpy module.
        values: The values (any float array).
        dtype: The safetensors dtype to store (one of :data:`FLOAT_DTYPES`).

    Returns:
        The bytes, C order.
    """
    if dtype == "BF16":
        data: bytes = f32_to_bf16_bits(np, values.astype(np.float32, copy=False)).tobytes()
        return data
    data = np.ascontiguousarray(values, dtype=_NUMPY_DTYPES[dtype]).tobytes()
    return data
