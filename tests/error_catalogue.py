"""Every bad-input case of docs/ERRORS.md, gathered from the modules that hold them by entry point:
tests/error_cases.py (the sandbox, `run_case`, and the cases of the core commands and the library),
tests/error_cases_harness.py (lm-evaluation-harness), tests/error_cases_options.py (options used or
refused, bounds, messages), tests/error_cases_hub.py (hub ids, against a hub on 127.0.0.1),
tests/error_cases_moe.py (mixture-of-experts checkpoints, probing and conversion).
tests/test_errors.py runs them all; scripts/errors_doc.py writes the doc.
"""

from __future__ import annotations

from pathlib import Path

from error_cases import CASES as CORE
from error_cases import Case, run_case
from error_cases import build_sandbox as _core_sandbox
from error_cases_harness import CASES as HARNESS
from error_cases_hub import CASES as HUB
from error_cases_moe import CASES as MOE
from error_cases_options import CASES as OPTIONS

CASES: tuple[Case, ...] = CORE + HARNESS + OPTIONS + HUB + MOE


def build_sandbox(root: Path) -> dict[str, Path]:
    """The files every case runs against (`error_cases.build_sandbox`); cases that need more make
    it in their own `setup`."""
    return _core_sandbox(root)


__all__ = ["CASES", "Case", "build_sandbox", "run_case"]
