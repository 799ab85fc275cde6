"""notebooks/report.ipynb runs headless (nbclient) on the tiny sweep and shows its figures."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from .test_sweep import STRATEGIES, run_tiny_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "report.ipynb"


def test_report_notebook_runs_headless(tmp_path_factory, tmp_path, monkeypatch):
    sweep = run_tiny_sweep(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("DML_SWEEP", str(sweep))
    monkeypatch.setenv("DML_REPORT_DIR", str(tmp_path / "report"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it clean"
    where = {"metadata": {"path": str(NOTEBOOK.parent)}}  # run from notebooks/, as Jupyter does
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=where).execute()
    # (execute raises CellExecutionError on any failing cell)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # the bar plot and the triplet-diagram grid
    tables = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    for strategy in STRATEGIES:
        assert f"| {strategy} | 2 |" in tables
    assert (tmp_path / "report" / "report.png").is_file()
