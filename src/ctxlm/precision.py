"""Which arithmetic a model runs in: bfloat16 autocast where the hardware has bf16 units, float32 elsewhere.

Inference (`ctxlm.embed`, `ctxlm.generate`, `ctxlm.predict`, `ctxlm.evaluate`, `ctxlm.zeroshot` and their
commands) defaults to "auto", which this module turns into one answer from what torch reports:

- a CPU with AMX tiles or AVX512-BF16 (Intel Sapphire Rapids and later, Cooper Lake; AMD Zen 4 and later), in a
  torch built with oneDNN: bf16 autocast. Matrix products then run on the bf16 units (2.5-3x fp32 on an AMX
  Xeon for MiniLM embeddings) and their sums stay fp32: MiniLM's vectors keep a cosine of 0.9999 or more to the
  fp32 ones (tests/test_precision.py);
- a CUDA GPU of compute capability 8.0 or more (Ampere and later): bf16 autocast;
- anything else (an AVX2-only CPU, older GPUs, MPS): fp32. Without bf16 units torch emulates bf16 products
  through conversions, slower than fp32.

"fp32" and "bf16" force one or the other; "bf16" on a device without bf16 units still runs (emulated). Training
accepts "auto" too (`ctxlm.train.PRECISIONS`) but defaults to fp32.

The environment variable CTXLM_PRECISION (fp32 or bf16) overrides what "auto" decides, on every device, for every
job and subprocess that inherits it: the test suite runs its default-path tests once more with
CTXLM_PRECISION=bf16, so that the bf16 path is tested on a CPU without bf16 units too (emulated), and a machine
with them can run the fp32 path as default. An explicit "fp32" or "bf16" is never overridden.

Weights stay fp32 in every case; autocast casts them per forward (once per autocast region: `inference_context`
should wrap a whole loop of batches, not each batch). Private torch helpers answer the CPU question
(`torch.cpu._is_amx_tile_supported`, `_is_avx512_bf16_supported`, torch >= 2.3): where absent they read "no".
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

from ctxlm.errors import UserError

__all__ = ["FORCE_VARIABLE", "PRECISIONS", "Choice", "bf16_units", "choose", "cpu_bf16_features", "device_of",
           "forced_precision", "inference_context", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")
FORCE_VARIABLE = "CTXLM_PRECISION"  # fp32 or bf16: what "auto" resolves to, whatever the device has
_NAMES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

# torch's private CPU feature helpers → the names printed (doctor, reasons)
CPU_FEATURES = {"amx_tile": "AMX", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Choice:
    """What a run will do: `dtype` is the autocast dtype (None: plain fp32), `reason` says why, in words."""

    dtype: torch.dtype | None
    reason: str
    asked: str = "auto"

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else "bf16"


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's bf16 units as printed names ("AMX", "AVX512-BF16"), from torch's private helpers; () if none (or
    a torch without the helpers). Asked once per process."""
    found = []
    for helper, name in CPU_FEATURES.items():
        check = getattr(torch.cpu, f"_is_{helper}_supported", None)
        try:
            if check is not None and check():
                found.append(name)
        except Exception:  # noqa: BLE001 - a failing private helper means "unknown", read as "no"
            pass
    return tuple(found)


@functools.cache
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def bf16_units(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` runs bf16 matrix products natively (faster than fp32), and why, in words."""
    device = torch.device(device)
    if device.type == "cpu":
        features = cpu_bf16_features()
        if not features:
            return False, "the CPU has no AMX or AVX512-BF16 units, so bf16 would be emulated, slower than fp32"
        if not torch.backends.mkldnn.is_available():
            return False, f"the CPU has {' and '.join(features)} but this torch is built without oneDNN"
        return True, f"the CPU has {' and '.join(features)}"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = _cuda_capability(index)
        if major >= 8:
            return True, f"cuda:{index} has compute capability {major}.{minor} (native bf16 from 8.0)"
        return False, f"cuda:{index} has compute capability {major}.{minor}, without native bf16 (8.0 and later)"
    return False, f"no bf16 autocast choice for {device.type} devices"


def choose(precision: str | torch.dtype | None, device: torch.device | str) -> Choice:
    """The precision to run in on `device`: "auto" (see the module docstring), "fp32" or "bf16"; torch.float32,
    torch.bfloat16 and None (fp32, no autocast) are taken too."""
    if precision is None or isinstance(precision, torch.dtype):
        if precision not in (None, torch.float32, torch.bfloat16):
            raise UserError(f"dtype={precision!r}: expected 'auto', 'fp32', 'bf16', torch.float32 or torch.bfloat16")
        return Choice(None if precision in (None, torch.float32) else torch.bfloat16, "asked for", _name(precision))
    if not isinstance(precision, str) or precision.lower() not in ("auto", *_NAMES):
        raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    precision = precision.lower()
    if precision != "auto":
        return Choice(_NAMES[precision], "asked for", "bf16" if _NAMES[precision] else "fp32")
    forced = forced_precision()
    if forced is not None:
        return Choice(_NAMES[forced], f"{FORCE_VARIABLE}={forced} forces it", "auto")
    fast, why = bf16_units(device)
    return Choice(torch.bfloat16 if fast else None, why, "auto")


def forced_precision() -> str | None:
    """"fp32" or "bf16" when $CTXLM_PRECISION forces the auto decision, None when it is unset or empty."""
    value = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    if not value:
        return None
    if value not in _NAMES:
        raise UserError(f"{FORCE_VARIABLE}={os.environ[FORCE_VARIABLE]!r}: expected fp32 or bf16 (or unset, to let "
                        "--precision auto look at the hardware)")
    return "bf16" if _NAMES[value] else "fp32"


def resolve_precision(precision: str | torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`: torch.bfloat16, or None for plain fp32 (see `choose`)."""
    return choose(precision, device).dtype


def inference_context(precision: str | torch.dtype | None,
                      device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` where `precision` resolves to bf16, else a context that does nothing. Enter it
    once around all the batches of a job: autocast then casts each weight once, not once per batch."""
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's weights are (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"
