"""Progress where standard error is a file: plain lines, never carriage-return frames; a bar in a terminal."""

import io
import sys

import pytest
from tqdm.auto import tqdm

from ctxlm.progress import PlainProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch, capsys):
    """Standard error captured as a file is: not a terminal (pytest sets sys.stderr again as each test starts, so
    a fixture cannot replace it)."""
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    return lambda: capsys.readouterr().err


def test_a_file_gets_plain_lines_with_rate_and_time_left(stderr):
    bar = progress(desc="train", total=40, unit="step", every=0)
    assert isinstance(bar, PlainProgress)
    for step in range(40):
        bar.set_postfix({"loss": f"{4 - step / 10:.3g}"})
        bar.update(1)
    bar.close()
    bar.close()  # a second close prints nothing more
    text = stderr()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 41  # one line per update (every=0), one at the end
    assert lines[0].startswith("train: 2% 1/40 step, loss=4, ") and "step/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("train: 100% 40/40 step, loss=0.1, ") and "ETA" not in lines[-1]


def test_lines_come_every_so_often_and_a_passing_bar_says_nothing(stderr):
    bar = progress(range(1000), desc="eval", leave=False, every=3600)
    assert sum(1 for _ in bar) == 1000
    assert stderr() == ""  # nothing was due, and a bar that leaves nothing leaves no last line either
    with progress(desc="tokenising", total=3_000_000, unit="B", unit_scale=True, every=3600) as bytes_bar:
        bytes_bar.update(1_500_000)
    assert stderr().startswith("tokenising: 50% 1.50M/3.00M B, ")


def test_a_terminal_gets_tqdms_bar_and_write_goes_to_stderr(monkeypatch, stderr):
    plain = progress(desc="x", total=2)
    plain.write("a message")
    assert stderr() == "a message\n"
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(desc="train", total=2)
    assert isinstance(bar, tqdm) and not isinstance(bar, PlainProgress)
    bar.close()
