"""Option helpers and help texts that several commands share."""

from __future__ import annotations

from collections.abc import Callable

import click

from ctxlm.train import MAX_SKIPPED_IN_A_ROW, NONFINITE_POLICIES

NONFINITE_HELP = ("a step with a NaN or infinite loss or gradient: stop (an error; the last checkpoint is kept) or "
                  f"skip its update (stopping after {MAX_SKIPPED_IN_A_ROW} in a row)")
DETERMINISTIC_HELP = ("PyTorch's deterministic algorithms (bitwise-repeatable runs on one machine; some GPU ops slower "
                      "or refused)")


def on_nonfinite_option() -> Callable:
    return click.option("--on-nonfinite", type=click.Choice(NONFINITE_POLICIES), default="stop", show_default=True,
                        help=NONFINITE_HELP)


def deterministic_option() -> Callable:
    return click.option("--deterministic", is_flag=True, help=DETERMINISTIC_HELP)


def stacked(*decorators: Callable) -> Callable:
    """One decorator applying `decorators` as if written one above the other (so --help lists them in order)."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply
