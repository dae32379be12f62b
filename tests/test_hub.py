"""Hub ids as model sources, through the real huggingface_hub client and no internet.

(i) a cache laid out by hand as huggingface_hub lays it out on disk, read by id with HF_HUB_OFFLINE;
(ii) a hub served on 127.0.0.1 (tests/hub_server.py) through HF_ENDPOINT: a tiny ARM and a tiny
published-layout MDM (Dream) downloaded by id and compared by the CLI, only the files the loaders
read fetched, the repository and commit recorded; and every refusal (not found, private, gated,
unknown revision, offline and not cached, hub unreachable, pickle-only) as one line that says what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hub_server
import pytest
import replicas
import torch

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.hub import forget_resolved, localize, parse_hub_id
from conversion.checkpoints import load_any, load_ar
from probe import ProbedModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub(monkeypatch, tmp_path: Path) -> Iterator[hub_server.FakeHub]:
    fake = hub_server.FakeHub()
    server = hub_server.start(fake)
    hub_server.point_client_at(monkeypatch, endpoint=fake.url, cache=tmp_path / "hf-cache", offline=False)
    yield fake
    server.shutdown()
    forget_resolved()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, replicas.Replica]:
    """A tiny Dream-layout MDM and the ARM of the same architecture and tokenizer."""
    mdm = replicas.dream(tmp_path / "models")
    return replicas.ar_partner(mdm, tmp_path / "models"), mdm


def test_parse_hub_id_reads_ids_and_leaves_local_sources() -> None:
    assert parse_hub_id("Qwen/Qwen2.5-0.5B") == parse_hub_id(" Qwen/Qwen2.5-0.5B ")
    ref = parse_hub_id("dream:Dream-org/Dream-v0-Base-7B@v1.0")
    assert (ref.repo_id, ref.revision, ref.family) == ("Dream-org/Dream-v0-Base-7B", "v1.0", "dream")
    assert str(ref) == "dream:Dream-org/Dream-v0-Base-7B@v1.0"
    for local in ("organism", "./runs/x", "/abs/x", "~/x", "a/b/c", "m.gguf", "org/m.gguf", "../x/y", Path("org/name")):
        assert parse_hub_id(local) is None, local


def test_an_existing_local_folder_wins_over_a_hub_id(tmp_path: Path, monkeypatch, make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    monkeypatch.chdir(folder.parent.parent)
    rel = f"{folder.parent.name}/{folder.name}"  # reads like org/name, exists locally
    assert localize(rel) == (rel, None)


def _cache_by_hand(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """The layout huggingface_hub keeps (models--ORG--NAME/{blobs,refs,snapshots}), written without it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir()
    snap.mkdir(parents=True)
    for file in folder.iterdir():
        blob = repo / "blobs" / f"blob-{file.name}"
        shutil.copyfile(file, blob)
        (snap / file.name).symlink_to(os.path.relpath(blob, snap))


def test_offline_cache_is_read_by_id(monkeypatch, tmp_path: Path, make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    commit = "0123456789abcdef0123456789abcdef01234567"
    _cache_by_hand(tmp_path / "hf", "org/tiny-ar", folder, commit)
    hub_server.point_client_at(monkeypatch, endpoint="http://127.0.0.1:9", cache=tmp_path / "hf", offline=True)

    by_id = load_ar("org/tiny-ar")
    local = load_ar(folder)
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    assert torch.equal(by_id.model(ids).logits, local.model(ids).logits)
    assert (by_id.meta.source, by_id.meta.repo_id, by_id.meta.revision) == ("org/tiny-ar", "org/tiny-ar", commit)
    assert by_id.meta.source_hash == local.meta.source_hash
    assert load_ar(f"org/tiny-ar@{commit}").meta.revision == commit
    with pytest.raises(CheckpointError, match=r"not in the HF cache .* HF_HUB_OFFLINE is set.*hf download org/other"):
        load_ar("org/other")


def test_downloads_only_what_the_loaders_read_and_records_the_commit(hub, pair) -> None:
    ar, mdm = pair
    pickle = {"pytorch_model.bin": b"not unpickled", "optimizer.pt": b"x", "modeling_x.py": b"raise SystemExit"}
    commit = hub.add("org/tiny-ar", ar, extra=pickle)
    hub.add("org/tiny-mdm", mdm.path)

    loaded = load_any("org/tiny-ar@main")
    assert (loaded.meta.repo_id, loaded.meta.revision, loaded.meta.kind) == ("org/tiny-ar", commit, "ar")
    fetched = {f.split("/", 2)[2] for f in hub.downloaded() if f.startswith("org/tiny-ar/")}
    assert fetched == {p.name for p in ar.iterdir() if p.is_file()}, fetched  # no .bin, .pt or .py
    reference = load_ar(ar)
    ids = torch.tensor([[2, 4, 6, 8]])
    assert torch.equal(loaded.model(ids).logits, reference.model(ids).logits)

    pm = ProbedModel.from_checkpoint("dream:org/tiny-mdm", backend="torch", expect="mdm")
    assert pm.meta.kind == "mdm" and pm.meta.source_format == "dream" and pm.meta.repo_id == "org/tiny-mdm"
    # a second load reads the cache: no new download
    before = len(hub.downloaded())
    load_any("org/tiny-ar@main")
    assert len(hub.downloaded()) == before


@pytest.mark.e2e  # in another process: the run-time type checks would not reach it
def test_cli_compare_downloads_a_pair_by_hub_id(hub, pair, tmp_path: Path) -> None:
    """`ar2mdm compare --ar org/tiny-ar --mdm org/tiny-mdm` in a new process that knows only HF_ENDPOINT."""
    ar, mdm = pair
    commits = {"ar": hub.add("org/tiny-ar", ar), "mdm": hub.add("org/tiny-mdm", mdm.path)}
    out = tmp_path / "report"
    args = ["compare", "--ar", "org/tiny-ar", "--mdm", "org/tiny-mdm", "--out", str(out), "--tasks", "ioi"]
    args += ["--pool-size", "6", "--all-examples", "--steps", "2", "--n-boot", "20", "--no-faithfulness"]
    args += ["--no-ablations", "--no-neurons", "--no-causal", "--no-null-pair", "--denoising", ""]
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "analyses.app.cli", *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == {"ar": "org/tiny-ar", "mdm": "org/tiny-mdm"}
    assert report["tasks"]["ioi"]["n"] == 6
    assert report["hub"] == {
        "ar": {"repo_id": "org/tiny-ar", "revision": commits["ar"]},
        "mdm": {"repo_id": "org/tiny-mdm", "revision": commits["mdm"]},
    }
    assert {"org/tiny-ar/config.json", "org/tiny-mdm/config.json"} <= set(hub.downloaded())


def test_hub_refusals_say_what_to_do(hub, pair, tmp_path: Path, monkeypatch) -> None:
    ar, _ = pair
    hub.add("org/private", ar, private=True)
    hub.add("org/gated", ar, gated=True)
    hub.add("org/pickled", tmp_path, extra={"config.json": b"{}", "pytorch_model.bin": b"x"})
    cases = {
        "org/missing": r"has no repository org/missing .*check the spelling.*hf auth login",
        "org/private": r"has no repository org/private .*private, log in with `hf auth login` \(or set HF_TOKEN\)",
        "org/gated": r"org/gated is a gated repository: accept its terms at .*/org/gated.*hf auth login",
        "org/private@nope": r"",  # not found first: a private repository hides its revisions
        "org/pickled": r"only as pickle files \(pytorch_model.bin\).*never loads",
    }
    hub.add("org/public", ar)
    cases["org/public@nope"] = r"org/public has no revision 'nope'.*org/public@main"
    for source, pattern in cases.items():
        with pytest.raises(CheckpointError, match=pattern or "no repository"):
            load_any(source)
    # the token opens both
    monkeypatch.setenv("HF_TOKEN", hub.token)
    forget_resolved()
    assert load_any("org/private").meta.repo_id == "org/private"
    assert load_any("org/gated").meta.repo_id == "org/gated"


def test_unreachable_hub_and_no_cache(monkeypatch, tmp_path: Path) -> None:
    hub_server.point_client_at(monkeypatch, endpoint="http://127.0.0.1:9", cache=tmp_path / "hf", offline=False)
    with pytest.raises(CheckpointError, match=r"cannot be reached .*check the path, the network or HF_ENDPOINT"):
        load_any("org/anything")


@pytest.mark.e2e  # in another process
def test_importing_ar2mdm_leaves_the_network_setting_alone() -> None:
    env = {k: v for k, v in os.environ.items() if "OFFLINE" not in k}
    code = "import os, ar2mdm.common, conversion, probe, analyses; print([k for k in os.environ if 'OFFLINE' in k])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_harness_and_study_take_hub_ids(hub, pair) -> None:
    """lm-evaluation-harness's `pretrained=org/name` loads through the hub; `study --model` accepts an id."""
    from analyses.app.study import StudyConfig
    from analyses.harness import ModelAdapter
    from ar2mdm.common.errors import UserError

    _, mdm = pair
    commit = hub.add("org/tiny-mdm", mdm.path)
    adapter = ModelAdapter.create_from_arg_string("pretrained=dream:org/tiny-mdm@main,sampler=low-confidence")
    assert (adapter.loaded.meta.repo_id, adapter.loaded.meta.revision, adapter.ctx.kind) == (
        "org/tiny-mdm",
        commit,
        "mdm",
    )
    assert StudyConfig(model="Qwen/Qwen2.5-0.5B@main").checked().model == "Qwen/Qwen2.5-0.5B@main"
    with pytest.raises(UserError, match=r"a hub id \(org/name\[@revision\]\) or an HF model folder"):
        StudyConfig(model="qwen").checked()
