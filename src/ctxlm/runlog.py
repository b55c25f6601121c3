"""A run's console output kept in its folder as well: `train.log`, one timestamped line per printed line.

Everything a command prints on stdout and stderr while it runs (progress messages, warnings, the final error) is
appended to OUT/train.log, so a run started in a terminal that has since closed can still be read. Progress bars
redraw themselves with carriage returns: only their finished lines are kept. Under torchrun rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ctxlm.errors import UserError

LOG_FILE = "train.log"


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
