"""ar2mdm as a package: the wheel holds only the four top-level import packages (`ar2mdm`,
`conversion`, `probe`, `analyses`) and its metadata, read from the RECORD of a wheel built from
this tree (`python -m build --no-isolation`, a few seconds). scripts/wheel_smoke.sh (CI) installs
that wheel into a new environment and runs it outside the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"ar2mdm", "conversion", "probe", "analyses"}


@pytest.mark.e2e
def test_the_wheel_holds_only_the_four_packages(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("ar2mdm-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        paths = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
        entry_points = zf.read(record.replace("RECORD", "entry_points.txt")).decode()
    tops = {p.split("/")[0] for p in paths if not p.split("/")[0].endswith(".dist-info")}
    assert tops == TOP_LEVEL, sorted(tops)
    assert any(p.startswith("ar2mdm/sampling/") for p in paths) and any(p.startswith("analyses/app/") for p in paths)
    assert "ar2mdm = analyses.app.cli:app" in entry_points
