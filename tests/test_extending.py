"""docs/EXTENDING.md, executed: every `# name.py` block is written to a file and loaded as a plugin
(`ar2mdm.common.plugins.load_plugins`), every `# use` block runs on a tiny ARM and an MDM made from it;
the registries are restored afterwards. Also: the plugin loader's errors, and the command line
seeing a plugin named in AR2MDM_PLUGINS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analyses.attribution import ATTRIBUTIONS
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.plugins import load_plugins
from ar2mdm.sampling import SAMPLERS
from ar2mdm.tasks import TASKS
from conversion.checkpoints import load_ar
from conversion.mdm import add_mask_token, save_mdm
from probe.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "EXTENDING.md"
REGISTRIES = (SAMPLERS, TASKS, BACKENDS, ATTRIBUTIONS)


def doc_blocks() -> list[tuple[str, str]]:
    """(first-line label, code) of every python block of the doc, in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    out = []
    for block in blocks:
        first, _, rest = block.partition("\n")
        assert first.startswith("# "), (
            f"a python block of EXTENDING.md must start with '# name.py' or '# use': {first!r}"
        )
        out.append((first[2:].strip(), rest))
    return out


@pytest.fixture
def restore_registries():
    before = [dict(r) for r in REGISTRIES]
    yield
    for registry, names in zip(REGISTRIES, before, strict=True):
        for name in [n for n in registry if n not in names]:
            registry.remove(name)


@pytest.fixture
def folders(make_tiny_model, tmp_path) -> dict[str, str]:
    ar_folder = make_tiny_model("llama")
    loaded = load_ar(ar_folder)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(
        kind="mdm", source=str(ar_folder), shift=True, mask_id=mask_id, noise="absorbing", schedule="linear"
    )
    return {
        "ar_folder": str(ar_folder),
        "mdm_folder": str(save_mdm(loaded.model, loaded.tokenizer, meta, tmp_path / "mdm")),
    }


def test_doc_has_one_example_per_extension_point():
    labels = [label for label, _ in doc_blocks()]
    files = [label for label in labels if label.endswith(".py")]
    assert len(files) == 4 and labels.count("use") == 4
    assert labels == [x for f in files for x in (f, "use")]  # each plugin file followed by its use


def test_examples_run(folders, tmp_path, restore_registries, capsys):
    blocks = doc_blocks()
    paths = []
    for label, code in blocks:
        if label.endswith(".py"):
            (tmp_path / label).write_text(code)
            paths.append(str(tmp_path / label))
    sizes = [len(r) for r in REGISTRIES]
    loaded = load_plugins(",".join(paths), entry_points=False)
    assert len(loaded) == 4
    assert [len(r) for r in REGISTRIES] == [n + 1 for n in sizes]  # one new class in each registry
    assert {"random-order", "next_letter", "timed-torch", "random"} <= {*SAMPLERS, *TASKS, *BACKENDS, *ATTRIBUTIONS}
    for label, code in blocks:
        if label == "use":
            exec(compile(code, f"{DOC}:{label}", "exec"), dict(folders))  # noqa: S102 (the doc's own code)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 + 1 + 2 + 1  # sampler text, task metric, two faithfulness values, backend time


def test_cli_choices_and_commands_see_a_plugin(folders, tmp_path, restore_registries):
    code = dict(doc_blocks())["random_order.py"]
    plugin = tmp_path / "random_order.py"
    plugin.write_text(code)
    env = {**os.environ, "AR2MDM_PLUGINS": str(plugin)}
    helped = subprocess.run(
        [sys.executable, "-m", "analyses.app.cli", "sample", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert helped.returncode == 0, helped.stderr
    assert "random-order" in " ".join(helped.stdout.split())

    from analyses.app.cli import app

    load_plugins(str(plugin), entry_points=False)
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            folders["mdm_folder"],
            "--prompt",
            "When Mary and John",
            "--sampler",
            "random-order",
            "--steps",
            "2",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("When Mary and John") and "NFE 2" in result.output


def test_plugin_errors_name_the_plugin(tmp_path, restore_registries):
    with pytest.raises(UserError, match="no_such_plugin_module.*not importable.*PYTHONPATH"):
        load_plugins("no_such_plugin_module", entry_points=False)
    with pytest.raises(UserError, match="missing.py.*no file"):
        load_plugins(str(tmp_path / "missing.py"), entry_points=False)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nx = 1 / 0\n")
    with pytest.raises(UserError, match=r"broken.py.*ZeroDivisionError.*broken.py:3"):
        load_plugins(str(broken), entry_points=False)
    clash = tmp_path / "clash.py"
    clash.write_text("from ar2mdm.sampling import Sampler\n\nclass Mine(Sampler):\n    name = 'ancestral'\n")
    with pytest.raises(UserError, match="'ancestral' is taken by ar2mdm.sampling.ancestral.AncestralSampler"):
        load_plugins(str(clash), entry_points=False)
    assert SAMPLERS.get("ancestral").__module__ == "ar2mdm.sampling.ancestral"
    assert load_plugins("", entry_points=False) == []


def test_cli_reports_a_broken_plugin(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half-written plugin')\n")
    env = {**os.environ, "AR2MDM_PLUGINS": str(broken)}
    done = subprocess.run(
        [sys.executable, "-m", "analyses.app.cli", "sample", "--model", "x", "--prompt", "y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "error: plugin" in done.stderr and "half-written plugin" in done.stderr and "Traceback" not in done.stderr
