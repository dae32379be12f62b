"""Execute the notebooks in notebooks/, and store them executed with small outputs.

    python scripts/notebooks.py --store            # execute each notebook, write it back with its outputs
    python scripts/notebooks.py --store depth      # just notebooks/depth.ipynb
    python scripts/notebooks.py --run DIR          # execute every notebook in DIR (a copy), write nothing
    python scripts/notebooks.py --run DIR --outside ROOT
                                                   # ... and fail if ar2mdm is imported from under ROOT

`--store` is what `make results` runs (entry "notebooks" in scripts/results.py): a reader browsing the
repository sees each notebook with its printed results and figures. Figures are stored as static PNG
images (plotly's "png" renderer: kaleido and a Chrome or Chromium; `plotly_get_chrome` installs one),
so a stored notebook is a few hundred kB at most; progress bars are left out (their rates differ on
every run). When the
notebooks run interactively the figures stay interactive: the renderer is set by a setup cell this
script adds before executing and removes before writing.

`--run` is how CI executes the notebooks against the *installed* wheel (scripts/wheel_smoke.sh
--notebooks): the kernel is this interpreter, the working directory is DIR (a copy of notebooks/ made
outside the repository), and with --outside a last cell checks that ar2mdm, probe, conversion and
analyses were imported from outside ROOT.

Errors: a cell that raises stops the run with nbclient's CellExecutionError (the cell and its
traceback); --store without a working image export stops before executing anything and says what to
install.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 900  # seconds; the cell that trains the quick models takes ~2 minutes on one core
STREAM_LINES = 40  # a stored stream output keeps at most this many lines (the last ones)
STATIC_SETUP = 'import plotly.io as _pio\n_pio.renderers.default = "png"'


def _outside_check(root: Path) -> str:
    return (
        "import analyses, ar2mdm, conversion, probe\n"
        "from pathlib import Path\n"
        f"_root = Path({str(root)!r}).resolve()\n"
        "for _m in (analyses, ar2mdm, conversion, probe):\n"
        "    _where = Path(_m.__file__).resolve()\n"
        "    assert _root not in _where.parents, f'{_m.__name__} imported from the repository: {_where}'\n"
        "print('ar2mdm imported from', Path(ar2mdm.__file__).resolve().parent)"
    )


def execute(path: Path, *, first: str | None = None, last: str | None = None) -> nbformat.NotebookNode:
    """Execute the notebook at `path` in its folder with this interpreter's kernel and return it.

    first/last: source of a cell run before / after the notebook's own cells; both are removed from the
    returned notebook and its execution counts start at 1. Raises nbclient's CellExecutionError."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    added = {"first": first is not None, "last": last is not None}
    if first is not None:
        nb.cells.insert(0, nbformat.v4.new_code_cell(first))
    if last is not None:
        nb.cells.append(nbformat.v4.new_code_cell(last))
    # kernel "python3" runs this interpreter (jupyter_client maps it to sys.executable)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    if added["last"]:
        nb.cells.pop()
    if added["first"]:
        nb.cells.pop(0)
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.execution_count is not None:
                cell.execution_count -= 1
                for out in cell.outputs:
                    if "execution_count" in out:
                        out.execution_count = cell.execution_count
    return nb


# a finished tqdm bar ("Loading weights: 100%|####| 30/30 [00:00<00:00, 5564.71it/s]"): its rate changes
# from run to run, so stored notebooks would differ on every regeneration; the bars are left out.
TQDM_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")


def _last_state(text: str) -> str:
    """A stream's text as a terminal shows it at the end: each line keeps what follows its last '\\r'
    (tqdm redraws its bar that way), finished progress bars are dropped, and at most STREAM_LINES
    lines remain."""
    lines = [re.split(r"\r(?!\n)", line)[-1] for line in text.split("\n")]
    lines = [line for line in lines if not TQDM_BAR.search(line)]
    if len(lines) > STREAM_LINES + 1:
        lines = [f"[{len(lines) - STREAM_LINES - 1} earlier lines left out]", *lines[-STREAM_LINES - 1 :]]
    return "\n".join(lines)


def shrink(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Small stored outputs: streams merged per cell and name, cut to their last state; no widget state."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if (
                out.output_type == "stream"
                and merged
                and merged[-1].output_type == "stream"
                and merged[-1].name == out.name
            ):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = _last_state(out.text)
        cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]
    nb.metadata.pop("widgets", None)
    return nb


def check_static_export() -> None:
    """Raise SystemExit with what to install when plotly cannot write a PNG here."""
    try:
        import plotly.graph_objects as go

        go.Figure(go.Bar(x=[0], y=[1])).to_image(format="png", width=50, height=50)
    except Exception as err:  # kaleido missing, or no Chrome for it to drive
        raise SystemExit(
            f"storing notebooks needs static figure export, which failed here ({type(err).__name__}: {err}); "
            "install kaleido (pip install kaleido) and a Chrome or Chromium (plotly_get_chrome, or your "
            "system's chromium package), then run again"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--store", nargs="*", metavar="NAME", help="notebooks to store (default: all)")
    mode.add_argument("--run", type=Path, metavar="DIR", help="execute every notebook in DIR, write nothing")
    parser.add_argument("--outside", type=Path, metavar="ROOT", help="with --run: ar2mdm must not come from ROOT")
    args = parser.parse_args(argv)

    if args.run is not None:
        paths = sorted(args.run.glob("*.ipynb"))
        if not paths:
            raise SystemExit(f"no notebooks in {args.run}")
        last = _outside_check(args.outside) if args.outside else None
        for path in paths:
            t0 = time.perf_counter()
            execute(path, last=last)
            print(f"{path.name}: ran in {time.perf_counter() - t0:.0f} s", flush=True)
        return 0

    check_static_export()
    names = args.store or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        path = NOTEBOOKS / f"{Path(name).stem}.ipynb"
        if not path.is_file():
            raise SystemExit(
                f"no notebook {path}; the notebooks are {sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb'))}"
            )
        t0 = time.perf_counter()
        nb = shrink(execute(path, first=STATIC_SETUP))
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(
            f"{path.name}: stored ({path.stat().st_size / 1024:.0f} kB, {time.perf_counter() - t0:.0f} s)", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
