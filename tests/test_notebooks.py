"""The notebooks in notebooks/: committed without outputs, and each runs top to bottom.

Running them is slow (the first one trains a small organism and its MDM when the cache holds
none), so it is marked `notebooks` and left out of the default suite: `make notebooks` runs it.
The check that notebooks carry no outputs is fast and runs by default.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 900  # seconds; the cell that trains the quick models takes ~2 minutes on one core


def notebooks() -> list[Path]:
    """Notebooks git tracks or would track (ignored files left out); every one if not a checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "notebooks/*.ipynb"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(NOTEBOOKS.glob("*.ipynb"))
    return sorted(ROOT / p for p in listed if (ROOT / p).is_file())


def test_there_are_notebooks():
    names = {p.name for p in notebooks()}
    assert {
        "quickstart.ipynb",
        "conversion.ipynb",
        "circuits.ipynb",
        "depth.ipynb",
        "neurons.ipynb",
        "samplers.ipynb",
    } <= names


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_is_stripped(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # kernel "python3" runs this interpreter (jupyter_client maps its "python" to sys.executable);
    # the working directory is notebooks/, where the notebooks import their `_models` helper.
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
