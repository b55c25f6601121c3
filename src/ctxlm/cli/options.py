"""Option helpers and help texts that several commands share."""

from __future__ import annotations

from collections.abc import Callable

import click

from ctxlm.errors import UserError
from ctxlm.precision import PRECISIONS
from ctxlm.train import MAX_SKIPPED_IN_A_ROW, NONFINITE_POLICIES

NONFINITE_HELP = ("a step with a NaN or infinite loss or gradient: stop (an error; the last checkpoint is kept) or "
                  f"skip its update (stopping after {MAX_SKIPPED_IN_A_ROW} in a row)")
DETERMINISTIC_HELP = ("PyTorch's deterministic algorithms (bitwise-repeatable runs on one machine; some GPU ops slower "
                      "or refused)")


SAVE_EVERY_MINUTES_HELP = ("also write the checkpoint once this many minutes have passed since the last one: a kill "
                           "(a crash, a pre-empted machine, kill -9) then loses at most this much training, however "
                           "long the step period, and a resumed run ends exactly as an uninterrupted one")


def positive(unit: str) -> Callable:
    """A click callback refusing a value that is not positive, in one line: "--save-every 0: expected a positive
    number of steps between checkpoints"."""

    def check(ctx: click.Context, param: click.Parameter, value):
        if value is not None and not value > 0:
            raise UserError(f"{param.opts[0]} {value:g}: expected a positive number of {unit}")
        return value

    return check


def save_every_option(default: int | None, help: str) -> Callable:
    return click.option("--save-every", type=int, default=default, show_default=default is not None,
                        metavar="STEPS", callback=positive("steps between checkpoints"), help=help)


def save_every_minutes_option() -> Callable:
    return click.option("--save-every-minutes", type=float, default=10.0, show_default=True, metavar="M",
                        callback=positive("minutes between checkpoints"), help=SAVE_EVERY_MINUTES_HELP)


def on_nonfinite_option() -> Callable:
    return click.option("--on-nonfinite", type=click.Choice(NONFINITE_POLICIES), default="stop", show_default=True,
                        help=NONFINITE_HELP)


def deterministic_option() -> Callable:
    return click.option("--deterministic", is_flag=True, help=DETERMINISTIC_HELP)


INFERENCE_PRECISION_HELP = ("auto: bf16 autocast where the device has bf16 units (CPUs with AMX or AVX512-BF16, CUDA "
                            "GPUs from Ampere on), fp32 elsewhere (`ctxlm doctor` says which runs here), or what "
                            "$CTXLM_PRECISION (fp32 or bf16) says; fp32 or bf16 force one (bf16 without those units is "
                            "emulated: slower)")


TRAINING_PRECISION_HELP = ("bf16: the training forward and loss under bfloat16 autocast, weights, gradients and AdamW "
                           "in fp32 (faster on CPUs with AMX or AVX512-BF16 and on GPUs from Ampere on; emulated and "
                           "several times slower elsewhere); auto: bf16 where the device has those units, else fp32. "
                           "Evaluation stays fp32. fp32 stays the default: the compared loss curves (tiny GPT-2 and "
                           "BERT, 200 steps of WikiText-2 pretraining, same seed, fp32 vs bf16) differed by at most "
                           "0.0003 (benchmarks/precision.py --curves), too short a run to change a default on")


def training_precision_option(**kw) -> Callable:
    """--precision fp32|bf16|auto of the training commands (fp32 by default)."""
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
                        help=TRAINING_PRECISION_HELP, **kw)


def inference_precision_option() -> Callable:
    """--precision auto|fp32|bf16 of the commands that run a model without training it."""
    return click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                        help=INFERENCE_PRECISION_HELP)


def stacked(*decorators: Callable) -> Callable:
    """One decorator applying `decorators` as if written one above the other (so --help lists them in order)."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply
