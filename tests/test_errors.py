"""Every bad input in docs/ERRORS.md: a clear message, the right exit code or exception, and
nothing existing changed. The cases themselves are in tests/error_cases.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from error_catalogue import CASES, Case, build_sandbox, run_case

DOC = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AR2MDM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield build_sandbox(tmp_path_factory.mktemp("errors") / "sb")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_error_and_changes_nothing(case: Case, sandbox: dict[str, Path]) -> None:
    outcome, before, after = run_case(case, sandbox)
    if case.cli:
        assert outcome.exit_code == 2, outcome.message[-2000:]
        assert outcome.message.lstrip().startswith(("error:", "Loading")) or "error:" in outcome.message
    else:
        assert isinstance(outcome.error, case.expect), f"expected {case.expect.__name__}, got {outcome.error!r}"
    assert "Traceback" not in outcome.message
    for word in case.words:
        assert word in outcome.message, f"{word!r} not in: {outcome.message}"
    assert after == before, f"the sandbox changed: {sorted(set(after.items()) ^ set(before.items()))[:5]}"


def test_errors_doc_lists_exactly_the_tested_cases() -> None:
    """docs/ERRORS.md has one row per case (id, key words): no untested row, no undocumented case."""
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"^\| `[a-z0-9-]+` \|", line)]
    documented = {}
    for line in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        documented[cells[0].strip("`")] = cells
    assert set(documented) == {c.id for c in CASES}
    assert len(documented) >= 40
    for case in CASES:
        words = documented[case.id][3]
        assert all(w in words for w in case.words), case.id
