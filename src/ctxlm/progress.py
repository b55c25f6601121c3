"""Progress of long work, readable wherever it goes: a bar in a terminal, plain lines in a file.

Every progress display of the package is made here (`progress`). In a terminal (or a notebook) it is a tqdm bar,
which redraws itself in place with carriage returns. Where standard error is a file or a pipe (`nohup`, a batch
system's log, `2> run.log`), those redraws would pile up as one endless line of frames; there it is a
`PlainProgress` instead: one ordinary line every `every` seconds (30 by default), and one at the end, e.g.

    train: 12% 240/2000 steps, loss=2.31, lr=5e-05, 3.1 steps/s, elapsed 1:17, ETA 9:27
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from tqdm.auto import tqdm

EVERY = 30.0  # seconds between two plain lines


def interactive(stream: IO[str]) -> bool:
    """Whether `stream` shows a redrawn bar as one line: a terminal, or a Jupyter kernel's output (a widget)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


def progress(iterable: Iterable | None = None, *, desc: str, total: float | None = None, initial: float = 0,
             unit: str = "it", unit_scale: bool = False, unit_divisor: int = 1000, leave: bool = True,
             disable: bool = False, every: float = EVERY) -> Progress:
    """A progress display over `iterable` (or updated by hand with `update(n)`), with tqdm's interface as the
    package uses it: iteration, `update`, `set_postfix`, `write`, `close`, and use as a context manager. A bar where
    standard error is interactive, else a `PlainProgress`. `leave=False`: a bar that disappears when closed (an
    evaluation inside training); its plain form prints a last line only if it printed any before."""
    if disable or interactive(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, unit_scale=unit_scale,
                    unit_divisor=unit_divisor, leave=leave, disable=disable, dynamic_ncols=True)
    return PlainProgress(iterable, desc=desc, total=total, initial=initial, unit=unit, unit_scale=unit_scale,
                         unit_divisor=unit_divisor, leave=leave, every=every)


class PlainProgress:
    """Progress as plain lines on standard error (looked up at each write, so that a run log that tees it sees
    them): where it stands every `every` seconds, with the rate and the time left, and a last line when closed."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str, total: float | None = None,
                 initial: float = 0, unit: str = "it", unit_scale: bool = False, unit_divisor: int = 1000,
                 leave: bool = True, every: float = EVERY) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.n, self.initial = iterable, desc, total, initial, initial
        self.unit, self.unit_scale, self.unit_divisor = unit, unit_scale, unit_divisor
        self.leave, self.every = leave, every
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.monotonic()
        self.printed = self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._print()

    def set_postfix(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Figures shown after the count (loss, lr, ...), as tqdm's postfix."""
        self.postfix = {**(values or {}), **more}

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave or self.printed:
                self._print()

    def line(self) -> str:
        """Where it stands: percent (when the total is known), count, postfix, rate, elapsed time, time left."""
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        parts = [f"{100 * self.n / self.total:.0f}% {count} {self.unit}" if self.total else f"{count} {self.unit}"]
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        parts += [f"{self._amount(rate)} {self.unit}/s", f"elapsed {tqdm.format_interval(elapsed)}"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.n) / rate)}")
        return f"{self.desc}: {', '.join(parts)}"

    def _amount(self, value: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=self.unit_divisor)
        if value == int(value) or value >= 100:
            return f"{value:.0f}"
        return f"{value:.3g}"

    def _print(self) -> None:
        self.write(self.line())
        self.printed, self.last = True, time.monotonic()


Progress = tqdm | PlainProgress  # what `progress` returns
