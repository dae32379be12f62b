"""scripts/results.py: an entry reads fresh after it is regenerated and stale once its code changes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def results(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("results_manifest", ROOT / "scripts" / "results.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "docs" / "results").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    monkeypatch.setattr(module, "ROOT", repo)
    monkeypatch.setattr(module, "PROVENANCE", repo / "docs" / "results" / "provenance.json")
    entry = module.Entry(
        "toy",
        ("docs/results/toy.txt",),
        ((sys.executable, "-c", "open('docs/results/toy.txt', 'w').write('42')"),),
        ("pkg",),
        0.1,
    )
    monkeypatch.setattr(module, "ENTRIES", (entry,))
    return module, repo, entry


def test_entry_is_fresh_after_a_run_and_stale_after_a_code_change(results):
    module, repo, entry = results
    assert module.status(entry).state == "never stamped"
    module.run(entry)
    assert (repo / "docs" / "results" / "toy.txt").read_text() == "42"
    stamp = json.loads(module.PROVENANCE.read_text())["toy"]
    assert stamp["code"] == module.code_hash(("pkg",)) and stamp["commit"]
    assert module.status(entry).state == "fresh"
    assert module.main(["--check"]) == 0
    (repo / "pkg" / "a.py").write_text("x = 2\n")  # the code its numbers depend on changes
    assert module.status(entry).state == "stale"
    assert module.main(["--check"]) == 1
    assert module.main(["--run"]) == 0 and module.status(entry).state == "fresh"


def test_unknown_entry_is_refused(results, capsys):
    module, _, _ = results
    assert module.main(["--run", "nope"]) == 2
    assert "the entries are: toy" in capsys.readouterr().err
