"""Fixtures every test file shares, and the precision contract of the suite.

ctxlm's inference runs `--precision auto` by default: fp32 on a CPU without bf16 units, bf16 autocast on one with
AMX or AVX512-BF16 (ctxlm.precision). A test that reaches that default says which arithmetic it tests:

- `@pytest.mark.fp32`: it checks exact semantics (a layer mode is its manual sum, cached generation is uncached
  generation, a pooling): auto is pinned to fp32 for it ($CTXLM_PRECISION=fp32), on every machine.
- `@pytest.mark.default_precision`: it tests the default path as users get it, with bounds derived from the dtype
  that path really ran (tolerances.default_dtype). `make test` runs these once more in the other precision
  (`make test-bf16`: CTXLM_PRECISION=bf16, emulated and slower where the CPU has no bf16 units; `make test-fp32`
  where auto picks bf16), so that both paths are tested on every machine.

A test that resolves auto in this process without either mark fails, naming the marks: a new default-path test
cannot slip in with fp32 bounds that only hold on the CPU it was written on. Subprocesses are out of its sight: a
test that runs ctxlm in one marks itself (test_kill.py); $CTXLM_PRECISION reaches the subprocess either way.
"""

import os
from pathlib import Path

import pytest

from ctxlm import precision
from helpers import tiny, write_corpus

PRECISION_MARKS = ("fp32", "default_precision")
_running: dict[str, pytest.Item | None] = {"item": None}
_reached_auto: set[str] = set()  # node ids of the tests that resolved --precision auto unpinned


@pytest.fixture(scope="session", autouse=True)
def _watch_the_auto_decision():
    """Every resolution of "auto" in this process (ctxlm.precision.choose asks `forced_precision` then, and only
    then) notes the test running, module and session fixtures included."""
    ask = precision.forced_precision

    def watched():
        forced = ask()
        item = _running["item"]
        if item is not None and item.get_closest_marker("fp32") is None:
            _reached_auto.add(item.nodeid)
        return forced

    precision.forced_precision = watched
    yield
    precision.forced_precision = ask


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Notes the running test; pins auto to fp32 around a `fp32` test, its fixtures' set-up included."""
    _running["item"] = item
    pinned = item.get_closest_marker("fp32") is not None
    before = os.environ.get(precision.FORCE_VARIABLE)
    if pinned:
        os.environ[precision.FORCE_VARIABLE] = "fp32"
    try:
        yield
    finally:
        _running["item"] = None
        if pinned and before is None:
            os.environ.pop(precision.FORCE_VARIABLE, None)
        elif pinned:
            os.environ[precision.FORCE_VARIABLE] = before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown" or item.nodeid not in _reached_auto or report.failed:
        return
    if not any(item.get_closest_marker(mark) for mark in PRECISION_MARKS):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} ran ctxlm's default precision (--precision auto: fp32 or bf16, as the "
                           "machine or $CTXLM_PRECISION decides) without saying which it tests: mark it "
                           "@pytest.mark.fp32 (exact semantics, pinned) or @pytest.mark.default_precision (bounds "
                           "from tolerances.default_dtype(); make test reruns it in the other precision). "
                           "See tests/conftest.py.")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_dir) -> Path:
    """A saved tiny GPT-2 with a trained tokenizer (untrained weights): for CLI and loading tests."""
    return tiny("gpt2", corpus=corpus_dir, max_positions=32, save_to=tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh $CTXLM_CACHE (tokenised corpora) for one test."""
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
