"""Every notebook in inference/notebooks runs offline top to bottom, and is committed without outputs.

Notebooks run in a Jupyter kernel. The kernel spec "python3" is the one ipykernel installs into the venv
(``.venv/share/jupyter/kernels/python3``); its command is plain ``python``, which jupyter_client replaces with the
``sys.executable`` of the process starting the kernel, so the kernel runs this venv's Python. A user-level spec of
the same name (``~/.local/share/jupyter/kernels/python3``) could point elsewhere; ``JUPYTER_PREFER_ENV_PATH`` makes
the venv's spec win, and ``test_kernel_runs_this_python`` checks it.
"""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "inference" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
REAL_MODELS_HEADING = "With internet: SD-1.5 + a real GLIGEN adapter"


@pytest.fixture(autouse=True)
def venv_kernel(monkeypatch):
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")  # the venv's "python3" spec before any user-level one
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # one thread per kernel, like conftest's torch.set_num_threads(1): with pytest -n 2, two kernels that each
    # spread over every core oversubscribe the CPU and run several times slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences the debugger's frozen-modules warning


def execute(nb: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """Run ``nb`` (an in-memory copy; nothing is written back) with ``folder`` as the kernel's working directory."""
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    return client.execute()


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


def test_kernel_runs_this_python(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)")])
    printed = execute(nb, tmp_path).cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.prefix).resolve(), (
        f"the 'python3' kernel runs the Python in {printed}, not this one ({sys.prefix}); a kernel spec outside the "
        "venv shadows ipykernel's (see jupyter kernelspec list)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), f"{path.name}: clear outputs"
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: start with a markdown cell saying what it shows"
    assert "USE_REAL_MODELS = False" in code[0].source, f"{path.name}: the first code cell sets USE_REAL_MODELS"
    headings = [
        i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" and REAL_MODELS_HEADING in cell.source
    ]
    assert len(headings) == 1, f"{path.name}: needs exactly one '{REAL_MODELS_HEADING}' section"
    guarded = nb.cells[headings[0] + 1]
    assert guarded.cell_type == "code" and guarded.source.startswith("if USE_REAL_MODELS:")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' scratch folders land in pytest's, which it prunes
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    executed = execute(nbformat.read(path, as_version=4), NOTEBOOK_DIR)  # raises CellExecutionError on any error
    outputs = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} displayed no image"
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before, f"{path.name} wrote files next to itself"
