"""docs/ERRORS.md cases of hub ids (`ar2mdm.common.hub`): each runs against a hub served on 127.0.0.1
(tests/hub_server.py) with the real huggingface_hub client, in an HF cache of its own."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hub_server
import pytest
from error_cases import Case

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.hub import forget_resolved
from conversion.checkpoints import load_any


@contextlib.contextmanager
def _hub(p: dict[str, Path], *, offline: bool = False, reachable: bool = True) -> Iterator[None]:
    """The sandbox's ARM served as org/public, org/private, org/gated, and org/pickled (pickle weights only)."""
    fake = hub_server.FakeHub()
    fake.add("org/public", p["ar"])
    fake.add("org/private", p["ar"], private=True)
    fake.add("org/gated", p["ar"], gated=True)
    with tempfile.TemporaryDirectory() as empty:
        fake.add("org/pickled", Path(empty), extra={"config.json": b"{}", "pytorch_model.bin": b"x"})
    server = hub_server.start(fake)
    url = fake.url if reachable else "http://127.0.0.1:9"
    with tempfile.TemporaryDirectory() as cache, pytest.MonkeyPatch.context() as mp:
        hub_server.point_client_at(mp, endpoint=url, cache=Path(cache), offline=offline)
        try:
            yield
        finally:
            server.shutdown()
            forget_resolved()


def _sample(model: str) -> tuple[str, ...]:
    return ("sample", "--model", model, "--prompt", "When", "--max-new-tokens", "1")


CASES: tuple[Case, ...] = (
    Case(
        "hub-repo-not-found",
        "hub",
        "`sample --model org/missing`: no such repository on the hub (and no such local path)",
        ("org/missing is not a local path", "has no repository org/missing", "check the spelling"),
        "the repository's exact id (org/name), or an existing local path",
        cli=_sample("org/missing"),
        setup=_hub,
    ),
    Case(
        "hub-private-without-token",
        "hub",
        "`load_any('org/private')`: a private repository, not logged in",
        ("has no repository org/private that you can read", "log in with `hf auth login`", "HF_TOKEN"),
        "`hf auth login` (or HF_TOKEN) with an account that can read it",
        call=lambda p: load_any("org/private"),
        expect=CheckpointError,
        setup=_hub,
    ),
    Case(
        "hub-gated",
        "hub",
        "`compare --ar org/gated ...`: a gated repository whose terms were not accepted",
        ("org/gated is a gated repository", "accept its terms at", "hf auth login"),
        "accept the terms on the repository's page, then `hf auth login` (or HF_TOKEN)",
        cli=("compare", "--ar", "org/gated", "--mdm", "{mdm}", "--out", "{root}/cmp", "--tasks", "ioi"),
        setup=_hub,
    ),
    Case(
        "hub-unknown-revision",
        "hub",
        "`sample --model org/public@nope`: a revision the repository does not have",
        ("org/public has no revision 'nope'", "branch, tag or commit", "org/public@main"),
        "a branch, tag or commit of the repository after '@', or no revision",
        cli=_sample("org/public@nope"),
        setup=_hub,
    ),
    Case(
        "hub-offline-not-cached",
        "hub",
        "`sample --model org/public` with HF_HUB_OFFLINE=1 and the repository not in the HF cache",
        ("not in the HF cache", "HF_HUB_OFFLINE is set", "hf download org/public"),
        "unset HF_HUB_OFFLINE, or download it where there is a network (`hf download org/public`)",
        cli=_sample("org/public"),
        setup=lambda p: _hub(p, offline=True),
    ),
    Case(
        "hub-unreachable",
        "hub",
        "`sample --model org/public` when HF_ENDPOINT cannot be reached and the HF cache lacks it",
        ("cannot be reached", "the network or HF_ENDPOINT", "hf download org/public"),
        "check the network and HF_ENDPOINT, or download it where there is a network",
        cli=_sample("org/public"),
        setup=lambda p: _hub(p, reachable=False),
    ),
    Case(
        "hub-pickle-only",
        "hub",
        "`sample --model org/pickled`: a repository whose weights are only pytorch_model.bin",
        ("only as pickle files (pytorch_model.bin)", "never loads", "safetensors"),
        "a revision or copy of the model with *.safetensors weights",
        cli=_sample("org/pickled"),
        setup=_hub,
    ),
)
