"""Every notebook in notebooks/ executes against tiny runs trained here; stored ones carry no output.

A notebook reads its run directory from TOYTASKS_RUN (and the induction notebook its 1-layer
control from TOYTASKS_CONTROL_RUN), falling back to the newest run of the README's config. It runs
in a fresh kernel started in notebooks/ as Jupyter would, importing this checkout's toytasks.
"""
import os

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
RUNS = {  # notebook: {environment variable: tiny run}
    "grokking": {"TOYTASKS_RUN": "grokking"},
    "no_position": {"TOYTASKS_RUN": "no_position"},
    "induction": {"TOYTASKS_RUN": "induction", "TOYTASKS_CONTROL_RUN": "induction_1layer"},
    "brackets": {"TOYTASKS_RUN": "brackets"},
}
CACHES = {"grokking": "fourier_final_k", "no_position": "heads", "induction": "heads", "brackets": None}


def stored(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_tested():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_stored_notebook_has_no_outputs(name):
    notebook = stored(name)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow  # 15-25 s each on a 2-core CPU: a kernel, the imports, a tiny run and the figures
@pytest.mark.parametrize("name", sorted(RUNS))
def test_notebook_executes(name, tiny_runs, monkeypatch):
    from nbclient import NotebookClient

    runs = {variable: tiny_runs(run) for variable, run in RUNS[name].items()}
    for variable, path in runs.items():
        monkeypatch.setenv(variable, str(path))
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    notebook = stored(name)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    plotting_cells = [c for c in notebook.cells if c.cell_type == "code" and "plots." in c.source]
    assert len(figures) >= len(plotting_cells)  # every plotting cell drew
    if CACHES[name]:  # run.map cached its work (brackets reads the measures logged in training)
        assert list((runs["TOYTASKS_RUN"] / "analysis").glob(f"{CACHES[name]}*.csv"))
