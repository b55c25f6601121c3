"""How far apart two floating-point computations of one value may be, derived from the arithmetic, not tuned.

A sum of K terms rounded in a precision with machine epsilon eps (torch.finfo: 1.19e-7 for float32) is off by
about sqrt(K)·eps times the size of the values summed: each addition rounds up or down alike, so the errors add
as a random walk. A value at the end of `depth` chained stages (a network's layers, a recurrence's steps) has
been through sqrt(depth) times more. Two computations of it that sum in other orders (another BLAS, another
instruction set: AVX-512, AVX2 or none; a padded batch, a cache) differ by about that, not by zero; a float64
reference leaves one side's error only. SAFETY covers the largest of thousands of elements (about 4 standard
deviations), both sides of a comparison, and exp/tanh/erf a few ulps apart between vectorised and scalar code.

Such a bound stays far below what a real bug does (a wrong scale factor, a missing layer norm or bias, a
swapped gate: 1e-2 and more; another GELU form in the parity models: 1e-4 to 1e-3), so it keeps its use as a check
on any x86-64 CPU and BLAS. The numeric tests used at most 1/8 of their bounds (ELMo's long recurrence), most under
1/20, with PyTorch's AVX2 kernels, its plain C++ ones (ATEN_CPU_CAPABILITY=default) and MKL's generic code path
(MKL_CBWR=COMPATIBLE) alike.

bf16 here is autocast as ctxlm runs it: each product reads its inputs rounded to bf16 (eps 2^-7) and sums them in
float32, so a sum's error is about eps_bf16 relative to the size of its terms, whatever their number: a bf16 bound
takes `terms` as 1 and grows with `depth` alone. A test of the default path (`--precision auto`) takes its dtype
from `default_dtype()`: what that path really ran here, never what the CPU it was written on would run.
"""

import math

import numpy as np
import torch

SAFETY = 8.0


def tolerance(dtype: torch.dtype = torch.float32, *, terms: int, depth: int = 1,
              magnitude: float = 1.0) -> dict[str, float]:
    """rtol and atol (as assert_close takes them) for a value computed in `dtype` through `depth` chained stages of
    sums of up to `terms` terms, of values up to `magnitude`: rtol = SAFETY·sqrt(terms·depth)·eps, atol =
    rtol·magnitude (an element near zero is off by as much as the large ones it was computed from)."""
    if dtype == torch.bfloat16:  # autocast: bf16 products, float32 sums (see the module docstring)
        terms = 1
    rtol = SAFETY * math.sqrt(terms * depth) * torch.finfo(dtype).eps
    return {"rtol": rtol, "atol": rtol * magnitude}


def default_dtype(device: str = "cpu") -> torch.dtype:
    """The dtype ctxlm's default path (`--precision auto`) really runs on `device` here: bf16 where the hardware has
    bf16 units or $CTXLM_PRECISION=bf16 forces it, else float32. Default-path tests derive their bounds from it."""
    from ctxlm.precision import resolve_precision

    return resolve_precision("auto", device) or torch.float32


def _tensor(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().cpu()
    return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else torch.tensor(x, dtype=torch.float64)


def _bounds(actual, expected, terms: int, depth: int, dtype: torch.dtype | None, magnitude: float | None):
    a, e = _tensor(actual), _tensor(expected)
    if dtype is None:  # the coarser side's precision: a float64 reference leaves the other's rounding only
        dtype = min((a.dtype, e.dtype), key=lambda d: torch.finfo(d).bits)
    e64 = e.double()
    if magnitude is None:
        magnitude = float(e64.abs().max()) if e64.numel() else 0.0
    return a.double(), e64, tolerance(dtype, terms=terms, depth=depth, magnitude=magnitude), dtype


def assert_fp_close(actual, expected, *, terms: int, depth: int = 1, dtype: torch.dtype | None = None,
                    magnitude: float | None = None, msg: str | None = None) -> None:
    """torch.testing.assert_close with tolerance(): the magnitude is the largest |expected| (pass `magnitude` when
    the values summed were larger, as for an expected zero), the precision the coarser of the two sides' (pass
    `dtype` for Python floats that came from float32 tensors). Takes tensors, NumPy arrays and Python numbers;
    compares in float64."""
    a, e, tol, dtype = _bounds(actual, expected, terms, depth, dtype, magnitude)
    bound = (f"bound {SAFETY:g}·sqrt({terms}·{depth})·eps({str(dtype).removeprefix('torch.')}) = {tol['rtol']:.2e} "
             f"relative, {tol['atol']:.2e} absolute (tests/tolerances.py)")
    torch.testing.assert_close(a, e, **tol, msg=lambda text: f"{msg + ': ' if msg else ''}{text}\n{bound}")


def fp_close(actual, expected, *, terms: int, depth: int = 1, dtype: torch.dtype | None = None,
             magnitude: float | None = None) -> bool:
    """Whether assert_fp_close would pass: `not fp_close(...)` says two results differ by more than rounding."""
    a, e, tol, _ = _bounds(actual, expected, terms, depth, dtype, magnitude)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(e.shape)}")
    return bool(torch.isclose(a, e, **tol).all())
