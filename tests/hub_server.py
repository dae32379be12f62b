"""A model hub on 127.0.0.1: the endpoints huggingface_hub calls to download a repository.

Tests point the real hub client at it (`HF_ENDPOINT`, or `huggingface_hub.constants.ENDPOINT` in
process) to exercise hub ids without the internet. It serves folders as repositories, each with one
commit (a 40-hex digest of its files) on the branch "main", and answers as the hub does:

- GET  /api/models/ORG/NAME[/revision/REV]     repository info: {"id", "sha", "siblings", ...}
- GET  /api/models/ORG/NAME/tree/REV[/PATH]    the file list (recursive), one page
- HEAD /ORG/NAME/resolve/REV/FILE              X-Repo-Commit, ETag, Content-Length
- GET  /ORG/NAME/resolve/REV/FILE              the bytes

Errors carry the hub's `X-Error-Code` header, which huggingface_hub turns into its exceptions:
RepoNotFound (404, or 401 for a private repository without the token), RevisionNotFound (404),
GatedRepo (403 on a gated repository's files without the token). `requests` records every path
asked for, so a test can check what was (not) downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    private: bool = False
    commit: str = ""

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name] + b"\0")
        self.commit = digest.hexdigest()


@dataclass
class FakeHub:
    """The repositories served, the token that opens gated/private ones, and the paths requested."""

    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_test_token"
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def add(
        self, repo_id: str, folder: Path, *, gated: bool = False, private: bool = False, extra: dict | None = None
    ) -> str:
        """Serve every file directly in `folder` (plus `extra` {name: bytes}) as `repo_id`; returns its commit."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        files.update(extra or {})
        self.repos[repo_id] = Repo(files, gated=gated, private=private)
        return self.repos[repo_id].commit

    def downloaded(self) -> list[str]:
        """Files fetched with GET .../resolve/... (repo/file)."""
        out = []
        for line in self.requests:
            method, path = line.split(" ", 1)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
            if method == "GET" and m:
                out.append(f"{m[1]}/{m[2]}")
        return out


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _authorised(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str, body: bool) -> None:
        payload = json.dumps({"error": message}).encode()
        self._send(
            status,
            payload,
            {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
            body,
        )

    def _repo(self, repo_id: str, body: bool) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorised()):
            self._error(401 if repo is not None else 404, "RepoNotFound", "Repository not found", body)
            return None
        return repo

    def _revision(self, repo: Repo, revision: str, body: bool) -> bool:
        if unquote(revision) in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}", body)
        return False

    def _serve(self, body: bool) -> None:
        path = urlparse(self.path).path
        self.hub.requests.append(f"{self.command} {path}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            repo = self._repo(m[1], body)
            if repo is None or not self._revision(repo, m[2] or "main", body):
                return
            info = {
                "id": m[1],
                "modelId": m[1],
                "sha": repo.commit,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "siblings": [{"rfilename": name} for name in sorted(repo.files)],
            }
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            repo = self._repo(m[1], body)
            if repo is None or not self._revision(repo, m[2], body):
                return
            entries = [
                {"type": "file", "oid": _sha1(data), "size": len(data), "path": name}
                for name, data in sorted(repo.files.items())
            ]
            self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo = self._repo(m[1], body)
            if repo is None or not self._revision(repo, m[2], body):
                return
            if repo.gated and not self._authorised():
                self._error(403, "GatedRepo", "Access to this model is restricted: accept its conditions", body)
                return
            name = unquote(m[3])
            if name not in repo.files:
                self._error(404, "EntryNotFound", f"{name} does not exist", body)
                return
            data = repo.files[name]
            headers = {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{_sha1(data)}"',
                "Content-Type": "application/octet-stream",
            }
            self._send(200, data, headers, body)
        else:
            self._error(404, "NotFound", f"no route {path}", body)


def point_client_at(mp, *, endpoint: str, cache: Path, offline: bool) -> None:
    """Point the real huggingface_hub client at `endpoint`, an HF cache at `cache` and HF_HUB_OFFLINE
    `offline`, with no token: what HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE set at import, set for
    this process (its constants) and the commands it starts (the environment). mp: a
    pytest.MonkeyPatch, which undoes all of it. Forgets the ids ar2mdm resolved before."""
    from huggingface_hub import constants

    from ar2mdm.common.hub import forget_resolved

    mp.setattr(constants, "ENDPOINT", endpoint)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    mp.setattr(constants, "HF_HUB_OFFLINE", offline)
    mp.setattr(constants, "HF_TOKEN_PATH", str(cache / "no-token"))
    mp.setenv("HF_ENDPOINT", endpoint)
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    mp.setenv("HF_TOKEN_PATH", str(cache / "no-token"))
    mp.delenv("HF_TOKEN", raising=False)
    forget_resolved()


def start(hub: FakeHub) -> ThreadingHTTPServer:
    """Serve `hub` on 127.0.0.1 (a free port) in a daemon thread; sets hub.url; call .shutdown() after."""
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
