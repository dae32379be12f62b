"""Cached stages: a study's steps, each in its own folder, skipped when their inputs are unchanged.

`Stages(root, force, log).run(name, parts, work)` runs `work(folder)` in `root/name` unless
`folder/stage.json` holds the key of `parts` (a hash of the stage's options and the identity of
its inputs); `stage.json` is written last and atomically, so a crash leaves the stage to run
again (or, with `keep_partial`, to resume from what `work` left). A stage.json that cannot be
read (a full disk, a hand edit), or a finished stage whose `outputs` (JSON files its readers
need) cannot be read, counts as unfinished: the stage runs again, with a line in the log saying
why. Every run or skip is a `StageRecord`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import UserError
from ar2mdm.common.jsonl import read_json
from ar2mdm.common.outputs import atomic_write_text


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" | "cached"
    seconds: float
    key: str
    info: dict[str, Any] = field(default_factory=dict)


def _key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs stages in folders under `root`, skipping those whose stage.json holds the same key."""

    def __init__(self, root: Path, force: bool, log: Callable[[str], None]) -> None:
        self.root, self.force, self.log = root, force, log
        self.records: list[StageRecord] = []

    def run(
        self,
        name: str,
        parts: Mapping[str, Any],
        work: Callable[[Path], dict[str, Any]],
        *,
        keep_partial: bool = False,
        outputs: Sequence[str] = (),
    ) -> StageRecord:
        """work(folder) -> info (JSON-able), run unless folder/stage.json has this key.
        keep_partial: leave an unfinished folder in place for `work` to resume from. outputs:
        JSON files (relative to the folder) that a finished stage must hold readable; a damaged
        one reruns the stage."""
        folder = self.root / name
        key = _key(parts)
        marker = folder / "stage.json"
        if marker.is_file() and not self.force:
            done = self._finished(name, marker, outputs)
            if done is None:
                marker.unlink()  # unreadable: the stage counts as unfinished
            elif done.get("key") == key:
                self.log(f"[{name}] unchanged inputs: cached ({folder})")
                info = done.get("info")
                record = StageRecord(name, "cached", 0.0, key, info if isinstance(info, dict) else {})
                self.records.append(record)
                return record
        if folder.exists() and (marker.is_file() or self.force or not keep_partial):
            shutil.rmtree(folder)  # stale: other inputs, or a finished run to redo
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        info = work(folder)
        seconds = time.perf_counter() - t0
        atomic_write_text(
            marker, json.dumps({"key": key, "parts": parts, "info": info, "seconds": seconds}, indent=1, default=str)
        )
        record = StageRecord(name, "ran", seconds, key, info)
        self.records.append(record)
        self.log(f"[{name}] done in {seconds:.0f} s")
        return record

    def _finished(self, name: str, marker: Path, outputs: Sequence[str]) -> dict[str, Any] | None:
        """The content of a finished stage's `marker`, or None (logged) when it or one of the
        stage's `outputs` cannot be read: the stage then runs again."""
        again = "The stage runs again."
        try:
            done = read_json(marker, remedy=again, what="a stage record")
            for output in outputs:
                read_json(marker.parent / output, remedy=again)
        except UserError as err:
            self.log(f"[{name}] {err}")
            return None
        return done


def stage_output(path: Path) -> dict[str, Any]:
    """A finished stage's JSON output (one of its `outputs`), read by a later stage or the
    report; UserError if it cannot be read (the next run redoes that stage)."""
    return read_json(path, remedy="Run the same study command again: it redoes the stage whose output this is.")
