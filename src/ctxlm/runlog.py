"""A run folder's log files: `train.log` (the console output), `metrics.jsonl` (the curve) and `loss.png`.

Everything a command prints on stdout and stderr while it runs (progress messages, warnings, the final error) is
appended to OUT/train.log, so a run started in a terminal that has since closed can still be read. Progress bars
redraw themselves with carriage returns: only their finished lines are kept. Under torchrun rank 0 alone writes.

`metrics.jsonl` holds one JSON record per logged step (training loss, and every evaluation's `valid_*` figures);
this module is its one reader (`read_metrics`, `last_validation`) and rewriter (`drop_metrics_after`), and draws
it as `loss.png` (`plot_losses`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ctxlm.errors import UserError

LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class _LineLog:
    """Receives a stream's text and appends its complete lines to a file, timestamped."""

    def __init__(self, file: IO[str]) -> None:
        self.file, self.partial = file, ""

    def feed(self, text: str) -> None:
        for i, piece in enumerate(text.split("\n")):
            if i:  # a newline ended the previous piece: the line is complete
                self.line(self.partial)
                self.partial = ""
            self.partial += piece
            if "\r" in self.partial:  # a redraw (progress bar): keep only what follows the last one
                self.partial = self.partial.rsplit("\r", 1)[1]

    def line(self, text: str) -> None:
        if text.strip():
            self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")
            self.file.flush()


class _Tee:
    """A text stream that writes to `stream` and feeds the log; anything else is the stream's."""

    def __init__(self, stream: IO[str], log: _LineLog) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.feed(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def run_log(run_dir: str | Path, command: str | None = None) -> Iterator[Path]:
    """Tee stdout and stderr into run_dir/train.log for the block; an error that ends it is logged too."""
    path = Path(run_dir) / LOG_FILE
    if os.environ.get("RANK", "0") != "0":  # torchrun's other processes repeat rank 0's lines
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        log = _LineLog(file)
        log.line(f"$ {command or ' '.join(sys.argv)}")
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            yield path
        except UserError as err:
            log.line(f"error: {err}")
            raise
        except KeyboardInterrupt:
            log.line("interrupted")
            raise
        except Exception:
            for line in traceback.format_exc().splitlines():
                log.line(line)
            raise
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            if log.partial:
                log.line(log.partial)
            log.line("end of run")


def logged_to(option: str) -> Callable:
    """Decorator for a click command: its output also goes to the train.log of the folder in its `option`."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            with run_log(kwargs[option]):
                return command(*args, **kwargs)

        return wrapper

    return decorate


# -------------------------------------------------------------------------------------------------- metrics.jsonl

def append_metrics(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl in order ([] when there is none). A line that is not JSON, which only
    a process killed while writing its last line leaves, is skipped."""
    return [record for _, record in _metric_lines(Path(run_dir) / METRICS_FILE)]


def _metric_lines(path: Path) -> Iterator[tuple[str, dict]]:
    if not path.is_file():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue


def last_validation(run_dir: str | Path, key: str = "valid_loss") -> dict:
    """The last record of run_dir/metrics.jsonl that holds `key` (an evaluation's figures), or {}."""
    return next((r for r in reversed(read_metrics(run_dir)) if key in r), {})


def drop_metrics_after(run_dir: str | Path, step: int) -> None:
    """metrics.jsonl as at a checkpoint of `step`: without what an interrupted run logged after it, nor the line a
    kill cut in half; rewritten atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line, record in _metric_lines(path) if record.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def plot_losses(run_dir: str | Path) -> Path:
    """run_dir/loss.png: training and validation loss per step, and beside them the other validation metrics
    (BERT pretraining: masked-LM and next-sentence accuracy; fine-tuning: the task's metrics)."""
    # Only when a run ends: matplotlib takes a noticeable part of a second to import. A Figure of its own, not
    # pyplot: switching the process's backend to Agg would silence the inline figures of a notebook that trains.
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    # Perplexities (exp of a loss already drawn) would dwarf the other metrics on a shared axis.
    others = sorted(k for k in {k for r in records for k in r} if k.startswith("valid_") and k != "valid_loss"
                    and not k.endswith("perplexity"))
    fig = Figure(figsize=(11 if others else 6, 4))
    axes = fig.subplots(1, 2 if others else 1, squeeze=False)
    panels = [(axes[0][0], [("loss", "train"), ("valid_loss", "validation")], "loss (nats)")]
    if others:
        panels.append((axes[0][1], [(k, k.removeprefix("valid_").replace("_", " ")) for k in others],
                       "validation metric"))
    for ax, series, ylabel in panels:
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=label, marker="." if key != "loss" else None)
        ax.set(xlabel="step", ylabel=ylabel, title=run_dir.name)
        ax.legend()
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    fig.savefig(path, dpi=100)
    return path
