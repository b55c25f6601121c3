"""The lecture notebook runs top to bottom: a change that breaks one of its examples fails the build.

notebooks/lecture.ipynb is executed in its FAST mode (tiny models, small samples: a few minutes on 2 CPU cores) by a
Jupyter kernel of this interpreter, with its own models and cache in a temporary folder; the executed copy is not
kept. A failing cell fails the test with that cell's source and error.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ctxlm.paths import data_root

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lecture.ipynb"
FAST_DATA = ("tiny_shakespeare", "sst2", "imdb")  # the data sets the FAST mode reads


def test_notebook_is_committed_without_outputs():
    """Outputs belong to docs/ (rendered) and runs/ (executed copies), not to the source the diffs are read in."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with_outputs = [i for i, cell in enumerate(notebook.cells)
                    if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not with_outputs, f"{NOTEBOOK.name}: cells {with_outputs} carry outputs; clear them before committing"
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), \
        "the FAST parameter cell lost its papermill 'parameters' tag"


@pytest.mark.fp32  # the kernel inherits the pin: the notebook's numbers come from the fp32 path on every machine
def test_notebook_runs_in_fast_mode(tmp_path, monkeypatch):
    if missing := [name for name in FAST_DATA if not (data_root() / name).is_dir()]:
        pytest.skip(f"the notebook reads {', '.join(missing)}: absent under {data_root()} (set CTXLM_DATA)")
    monkeypatch.setenv("CTXLM_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("CTXLM_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # its text holds the cell's source and the traceback
        pytest.fail(f"{NOTEBOOK.name}: a cell failed in FAST mode\n{err}", pytrace=False)
    finally:  # the executed copy, outputs and all, stays with the test's temporary files for a look
        nbformat.write(notebook, tmp_path / NOTEBOOK.name)
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.output_type == "stream")
    assert "режим: FAST" in text, "the first cells did not switch the notebook to FAST mode"
    kernel_python = re.search(r"^python: (.+)$", text, re.MULTILINE)
    assert kernel_python and Path(kernel_python[1]).parent == Path(sys.executable).parent, \
        f"the kernel ran another environment's python ({kernel_python and kernel_python[1]}), not {sys.executable}'s"
    figures = sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.outputs)
    assert figures >= 4, f"expected the notebook's figures inline, found {figures}"


def test_run_plots_leave_the_backend_alone(tmp_path):
    """loss.png and compare.png are drawn on figures of their own: a notebook that trains keeps its inline figures
    (a switch of the process's backend to Agg had silenced every figure after the first run)."""
    matplotlib = pytest.importorskip("matplotlib")
    from ctxlm.runlog import plot_losses
    from ctxlm.transfer.compare import plot

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "valid_loss": 1.7}\n')
    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")  # a backend of the user's, as a notebook's inline one
        plot_losses(tmp_path)
        plot([{"model": "m", "strategy": "full", "mean": 0.8, "std": 0.01}], "accuracy", tmp_path / "compare.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("loss.png", "compare.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
