"""notebooks/data_analysis.ipynb runs from top to bottom without an error, headless (matplotlib's
Agg backend), including its live check that a real broker's stream equals the file's bins."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "data_analysis.ipynb"


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_the_analysis_notebook_runs_and_its_live_check_passes(broker, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's future default, no warning
    monkeypatch.setenv("NOTEBOOK_BROKER_CONTROL", broker.ready["control"])
    monkeypatch.setenv("NOTEBOOK_BROKER_PUB", broker.ready["pub"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Any cell error raises CellExecutionError; a cell stuck for 60 s fails too.
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = outputs_text(nb)
    assert "spike counts identical to the file's bins" in text, text[-2000:]
    assert "R^2 vx" in text
