"""Write docs/ERRORS.md from the bad-input cases in tests/error_cases.py.

Every case is run in a fresh sandbox (tiny models, a conversion run, user folders, bad files), and
the message the user actually saw goes into the table, with the sandbox's path shown as DIR.
tests/test_errors.py runs the same cases and checks the table lists exactly them.

    python scripts/errors_doc.py            # rewrites docs/ERRORS.md (about a minute on 2 cores)
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from error_catalogue import CASES, build_sandbox, run_case  # noqa: E402

AREAS = {
    "output": "Output folders and files",
    "kinds": "Checkpoint kinds (ARM or MDM) and metadata",
    "options": "Options and config files",
    "data": "Data and task files",
    "probe": "Probe inputs (library)",
    "published": "Published checkpoints, dtypes and devices",
    "hub": "Hub ids (org/name[@revision]; against a hub served on 127.0.0.1)",
    "moe": "Mixture-of-experts checkpoints, probing and conversion",
}

HEAD = """# Bad inputs and what ar2mdm says

Every row is a test (`tests/test_errors.py`; cases in `tests/error_cases.py`, `error_cases_harness.py`,
`error_cases_options.py`, `error_cases_hub.py` and `error_cases_moe.py`, gathered by `tests/error_catalogue.py`): it runs the input
inside a sandbox of real files and asserts the exit code (2 for bad input on the command line) or
the exception type (library calls), the key words of the message, that no traceback is shown,
and that nothing that existed before was changed (every file's bytes are compared; an output
folder the failed run created is removed again). The messages below are what the runs printed
(`DIR` is the sandbox). Regenerate this file with `python scripts/errors_doc.py`.

Beyond single inputs, `tests/test_runfolder.py` covers the run-level cases: kill -9 before the
first checkpoint followed by `--resume`, Ctrl-C (exit 130, a checkpoint, the resume command), two
concurrent runs on one `--out`, a finished run resumed, a diverged run started over.

How errors are shaped: every bad input raises a `ar2mdm.common.errors.UserError` (or a subclass:
`CheckpointError`, `DataError`, `TaskError`) whose message says what was wrong and what to do;
the CLI prints it as one line `error: ...` and exits with code 2. Ctrl-C exits with code 130 and
says what was kept (for `convert`: a checkpoint of the last finished step and the command that
resumes).

Rules that hold for every entry point (each a class with its own tests beside the rows below):
- **Yes/no values** come from one parser (`ar2mdm.common.options.parse_bool`): true/yes/on/1 and
  false/no/off/0 in any case, from flags, config files, `--model_args`, environment variables and
  keyword arguments; anything else is an error naming the option. `trust_remote_code` is true only
  on an explicit yes (`tests/test_yes_no.py`: a folder whose code writes a marker is loaded through
  every entry point with every spelling of no; the harness's own in `tests/test_harness.py`).
- **Paths ar2mdm writes** (`ar2mdm.common.outputs`): a single-file output (`--trace`) never replaces a
  file ar2mdm did not write without --overwrite, never a link, device node, or a file in a
  checkpoint or run folder, and a trailing separator names a folder; `--overwrite` removes only
  what ar2mdm wrote (the run folder's owner record lists it); an empty or `.` `--out` is refused
  (`tests/test_outputs_rule.py`: every file a user left is byte-identical afterwards).
- **Every option given is used or refused**: sampler options no chosen sampler takes, a K above
  the graph's edges, a LoRA rank at a layer's width, one checkpoint twice in a series.
- **Bounds before allocation**: lengths are checked against the model's context before a canvas
  is built.
- **Files read back survive a crash at any byte** (`ar2mdm.common.jsonl`, `tests/test_crash_files.py`): a
  torn last log line is dropped on resume; anything else damaged is named with what to do.
- **Other libraries' errors are translated by their condition** (FSDP1 without a GPU), never by
  their message text; `make install` installs the tested versions in `constraints.txt`, and
  `make test-latest` runs the suite against the newest releases.
"""


def code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    lines = [HEAD]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AR2MDM_CACHE"] = str(Path(tmp) / "cache")
        paths = build_sandbox(Path(tmp) / "sb")
        root = str(paths["root"])
        results = {}
        for case in CASES:
            outcome, before, after = run_case(case, paths)
            message = outcome.message
            if case.cli:
                message = message[message.find("error:") :] if "error:" in message else message
                seen = f"exit {outcome.exit_code}"
            else:
                seen = type(outcome.error).__name__
            changed = "" if before == after else " (CHANGED FILES)"
            results[case.id] = (seen + changed, message.replace(root, "DIR").replace(tmp, "TMP"))
    for area, title in AREAS.items():
        lines += [
            f"## {title}",
            "",
            "| id | bad input | result | key words | message | what to do |",
            "|---|---|---|---|---|---|",
        ]
        for case in (c for c in CASES if c.area == area):
            seen, message = results[case.id]
            usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(case.cli)) if case.cli else ""
            what = case.what + (f"<br>`ar2mdm {cell(usage)}`" if usage else "")
            lines.append(
                f"| `{case.id}` | {cell(what)} | {seen} | {', '.join(code(w) for w in case.words)} | "
                f"{cell(message)} | {cell(case.fix)} |"
            )
        lines.append("")
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    (REPO / "docs" / "ERRORS.md").write_text(text)
    print(f"docs/ERRORS.md: {len(CASES)} cases")


if __name__ == "__main__":
    main()
