"""Learning-rate schedules: the multiplier of each parameter group's base rate at an optimizer step.

One module for every job: pretraining uses warm-up + decay (BERT, GPT-2), fine-tuning the same or ULMFiT's
slanted triangular rates. Steps are 0-based; `total` is the number of optimizer steps of the run.
"""

from __future__ import annotations

import math

SHAPES = ("linear", "cosine", "constant")


def warmup_decay(step: int, total: int, *, warmup_steps: int, shape: str, floor: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps` (the first step already moves the weights), then `shape`: "linear" or
    "cosine" decay from 1 to `floor` at the last step, or "constant" 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if shape == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    if shape == "linear":
        return 1.0 - (1.0 - floor) * progress
    if shape == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule shape must be one of {', '.join(SHAPES)}, got {shape!r}")


def slanted_triangular(step: int, total: int, *, cut_frac: float, ratio: float) -> float:
    """ULMFiT eq. 3: a short steep rise over `cut_frac` of the steps from 1/ratio to 1, then a long linear decay
    back to 1/ratio."""
    cut = max(1, math.floor(max(1, total) * cut_frac))
    decayed = (step - cut) / (cut * (1 / cut_frac - 1))
    p = step / cut if step < cut else max(0.0, 1 - decayed)  # with cut rounded down, p can reach 0 before T
    return (1 + p * (ratio - 1)) / ratio
