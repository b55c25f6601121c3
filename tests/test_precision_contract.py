"""The suite's precision contract (tests/conftest.py) holds: a test that reaches `--precision auto` without saying
which arithmetic it tests fails, and the forced-bf16 pass (make test-bf16) fails a default-path test that holds bf16
output to a float32 bound, on a CPU without bf16 units too. Each case runs in a pytest of its own."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
TESTS = Path(__file__).parent

# A default-path computation (autocast as ctxlm's jobs enter it) checked against float32 at float32's bound.
DEFAULT_PATH_TEST = '''
import pytest
import torch
from ctxlm.precision import inference_context

{mark}
def test_a_product_on_the_default_path():
    x, w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), torch.randn(64, 64)
    with inference_context("auto", "cpu"):
        y = x @ w
    torch.testing.assert_close(y.float(), x @ w)  # float32's default bound
'''


@pytest.fixture
def run_suite(pytester, monkeypatch):
    """Runs a test file under the suite's conftest; (outcomes, output)."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    fp32: pinned\n    default_precision: default path\n")
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # helpers, as the suite imports them

    def run(source: str, forced: str | None):
        if forced is None:
            monkeypatch.delenv("CTXLM_PRECISION", raising=False)
        else:
            monkeypatch.setenv("CTXLM_PRECISION", forced)
        pytester.makepyfile(test_case=source)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        return result.parseoutcomes(), result.stdout.str()

    return run


def test_an_unmarked_test_that_reaches_auto_fails(run_suite):
    outcomes, output = run_suite(DEFAULT_PATH_TEST.format(mark=""), forced="fp32")
    assert outcomes.get("errors") == 1 and "without saying which it tests" in output, output


def test_the_forced_bf16_pass_fails_an_fp32_bound_on_the_default_path(run_suite):
    source = DEFAULT_PATH_TEST.format(mark="@pytest.mark.default_precision")
    assert run_suite(source, forced="fp32")[0] == {"passed": 1}  # the fp32 path: float32's bound holds
    outcomes, output = run_suite(source, forced="bf16")
    assert outcomes.get("failed") == 1 and "Mismatched elements" in output, output


def test_a_pinned_test_runs_fp32_even_in_the_forced_pass(run_suite):
    source = DEFAULT_PATH_TEST.format(mark="@pytest.mark.fp32")
    assert run_suite(source, forced="bf16")[0] == {"passed": 1}
