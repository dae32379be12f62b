"""The notebooks in notebooks/: stored executed with small outputs, and each runs top to bottom.

Running them is slow (the first one trains a small organism and its MDM when the cache holds
none), so it is marked `notebooks` and left out of the default suite: `make notebooks` runs it here,
and CI runs them against the installed wheel (scripts/wheel_smoke.sh --notebooks). The check that
each is stored executed, in order, with small outputs and no errors (`scripts/notebooks.py --store`,
which `make results` runs) is fast and runs by default.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


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


# What a stored output may hold: text and static images (a PNG per plotly figure). Interactive plotly
# JSON, JavaScript or widget state would make the file large and show nothing in a repository browser.
STORED_MIME = {"text/plain", "image/png", "text/html", "text/markdown"}
MAX_NOTEBOOK_BYTES = 600_000
TQDM_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # a finished tqdm bar
MAX_STREAM_LINES = 41  # scripts/notebooks.py keeps the last 40 lines, and says how many it left out


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_is_stored_executed_and_small(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)}: store it executed top to bottom "
        "with `python scripts/notebooks.py --store " + path.stem + "` (make results does every notebook)"
    )
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size} bytes stored"
    for i, cell in enumerate(code, start=1):
        for out in cell.outputs:
            assert out.output_type != "error", f"{path.name} cell [{i}] was stored with an error"
            if out.output_type == "stream":
                assert "\r" not in out.text.replace("\r\n", "\n"), f"{path.name} [{i}]: a progress bar's redraws"
                assert out.text.count("\n") <= MAX_STREAM_LINES, f"{path.name} [{i}]: a long stream output"
                assert not TQDM_BAR.search(out.text), f"{path.name} [{i}]: a progress bar (its rate differs each run)"
            else:
                extra = set(out.get("data", {})) - STORED_MIME
                assert not extra, f"{path.name} [{i}]: outputs {sorted(extra)} (store figures as PNG)"
    figures = sum("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    makes_figures = any("go.Figure" in cell.source or "make_subplots(" in cell.source for cell in code)
    assert figures or not makes_figures, f"{path.name} draws figures but stores none"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    """Executed as `make results` stores it (scripts/notebooks.py: this interpreter's kernel, the
    working directory notebooks/, where the notebooks import their `_models` helper); raises
    CellExecutionError, with the cell and its traceback, on any error."""
    spec = importlib.util.spec_from_file_location("notebooks_script", ROOT / "scripts" / "notebooks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.execute(path)
