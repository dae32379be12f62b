"""Bad inputs and what the user sees: the cases behind docs/ERRORS.md.

Each `Case` is one bad input, on the command line (`cli`: the arguments of `ar2mdm`) or in the
library (`lib`: a call), run inside a sandbox of real files (`build_sandbox`: tiny models, an
MDM, a finished conversion run, user folders, bad data and config files). tests/test_errors.py
runs every case and asserts the exit code (2 for bad input) or the exception type, that the
message holds the case's key words, that no traceback is shown, and that nothing in the sandbox
changed. scripts/errors_doc.py runs them too and writes docs/ERRORS.md from what they print.

Arguments and calls name sandbox paths as `{name}` (see `build_sandbox`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import replicas
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file, save_file

from ar2mdm.common.errors import CheckpointError, UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.outputs import OWNER_FILE, claim_output
from conversion.checkpoints import load_ar
from conversion.mdm import add_mask_token, load_mdm, save_mdm


@dataclass(frozen=True)
class Case:
    """id: short name; area: what it concerns; what: the bad input in words; fix: what to do.
    cli: `ar2mdm` arguments, or call(paths) for a library case; expect: the exception type of a
    library case (CLI cases expect exit code 2); words: key words the message must contain."""

    id: str
    area: str
    what: str
    words: tuple[str, ...]
    fix: str
    cli: tuple[str, ...] = ()
    call: Callable[[dict[str, Path]], object] | None = None
    expect: type[Exception] = UserError
    setup: Callable[[dict[str, Path]], contextlib.AbstractContextManager | None] | None = field(
        default=None, compare=False
    )


def build_sandbox(root: Path) -> dict[str, Path]:
    """The files the cases run against, under `root`; returns name -> path."""
    p: dict[str, Path] = {"root": root}
    p["ar"] = build_tiny_model("llama", root / "ar")
    loaded = load_ar(p["ar"])
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(
        kind="mdm",
        source=str(p["ar"]),
        source_hash=loaded.meta.source_hash,
        family="llama",
        shift=True,
        mask_id=mask_id,
        noise="absorbing",
        schedule="linear",
    )
    p["mdm"] = save_mdm(loaded.model, loaded.tokenizer, meta, root / "mdm")
    p["mdm_nometa"] = _copy(p["mdm"], root / "mdm-nometa")
    (p["mdm_nometa"] / "ar2mdm.json").unlink()
    p["mdm_badmeta"] = _copy(p["mdm"], root / "mdm-badmeta")
    raw = json.loads((p["mdm"] / "ar2mdm.json").read_text())
    (p["mdm_badmeta"] / "ar2mdm.json").write_text(json.dumps({**raw, "shift": "maybe"}))
    p["mdm_listmeta"] = _copy(p["mdm"], root / "mdm-listmeta")
    (p["mdm_listmeta"] / "ar2mdm.json").write_text("[]")
    # an MDM whose tokenizer has two more tokens than the ARM's (besides its mask)
    other = load_mdm(p["mdm"])
    other.tokenizer.add_tokens(["zebra", "quokka"])
    other.model.resize_token_embeddings(len(other.tokenizer), mean_resizing=False)
    p["mdm_othertok"] = save_mdm(other.model, other.tokenizer, other.meta, root / "mdm-othertok")

    # published diffusion LMs (tests/replicas.py): a Dream folder missing a weight, a Dream GGUF
    # without its mask token id, a folder of an unknown custom architecture
    dream = replicas.dream(root / "published")
    p["dream_missing"] = _copy(dream.path, root / "dream-missing")
    weights = load_file(p["dream_missing"] / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if "layers.1.mlp.up_proj" not in k},
        str(p["dream_missing"] / "model.safetensors"),
    )
    p["dream_nomask_gguf"] = replicas.write_diffusion_gguf(dream, root / "dream-nomask.gguf", with_mask=False)
    p["custom_arch"] = _copy(p["ar"], root / "custom-arch")
    config = json.loads((p["custom_arch"] / "config.json").read_text())
    config.update(
        model_type="mystery_dlm", architectures=["MysteryDLM"], auto_map={"AutoModel": "modeling_mystery.MysteryDLM"}
    )
    (p["custom_arch"] / "config.json").write_text(json.dumps(config))

    p["user"] = root / "user"
    p["user"].mkdir()
    (p["user"] / "notes.txt").write_text("my notes\n")
    p["file"] = root / "afile.txt"
    p["file"].write_text("a file\n")
    p["link"] = root / "link.json"
    p["link"].symlink_to(p["file"])
    p["organism"] = _copy(p["ar"], root / "organism")  # an organism folder as older ar2mdm wrote it
    (p["organism"] / "report.json").write_text(json.dumps({"task_options": {}, "steps": 1}))
    for command, name, result in (("eval", "evalout", "results.json"), ("compare", "compareout", "report.json")):
        p[name] = root / name
        p[name].mkdir()
        (p[name] / OWNER_FILE).write_text(json.dumps({"command": command}))
        (p[name] / result).write_text("{}")

    data = root / "data"
    data.mkdir()
    p["corpus"] = data / "corpus.txt"
    p["corpus"].write_text(" ".join(["When Mary and John went to the store , John gave a drink to Mary ."] * 40))
    p["nofield"] = data / "nofield.jsonl"
    p["nofield"].write_text('{"body": "When Mary and John went to the store"}\n')
    p["sft_badsuffix"] = data / "sft-badsuffix.jsonl"
    p["sft_badsuffix"].write_text(
        '{"prompt": "When Mary", "answer": " John"}\n{"prompt": "Tom", "answer": " said", "suffix": 3}\n'
    )
    p["sft_small"] = data / "sft-small.jsonl"
    p["sft_small"].write_text(
        "".join(json.dumps({"prompt": f"When {n}", "answer": " went"}) + "\n" for n in ("Mary", "John", "Tom"))
    )
    p["task_folder"] = data / "folder.jsonl"
    p["task_folder"].mkdir()
    p["task_binary"] = data / "binary.jsonl"
    p["task_binary"].write_bytes(bytes(range(256)) * 4)
    p["task_mismatch"] = data / "mismatch.jsonl"
    p["task_mismatch"].write_text(
        json.dumps({"prompt": "When Mary went", "answer": " to", "corrupted_prompt": "When Tom went"})
        + "\n"
        + json.dumps({"prompt": "When Mary went", "answer": " to", "corrupted_prompt": "When Tom and Bob went"})
        + "\n"
    )
    for name, text in (
        ("steps_abc.yaml", "steps: abc\n"),
        ("steps_float.toml", "steps = 1.5\n"),
        ("lr_fast.toml", 'lr = "fast"\n'),
        ("bf16_maybe.toml", 'bf16 = "maybe"\n'),
        ("seqlen_null.yaml", "seq_len: null\n"),
        ("unknown.yaml", "stepz: 3\n"),
    ):
        p[name.split(".")[0]] = data / name
        p[name.split(".")[0]].write_text(text)
    return p


def build_run(p: dict[str, Path]) -> None:
    """A finished 2-step conversion run in {run} (for the cases that need one; made once)."""
    from conversion.train import TrainConfig, train

    p["run"] = p["root"] / "run"
    if not p["run"].exists():
        train(
            TrainConfig(
                model=str(p["ar"]),
                data=str(p["corpus"]),
                out=str(p["run"]),
                steps=2,
                seq_len=16,
                batch_size=2,
                held_out=0.0,
            )
        )


def damaged_log(p: dict[str, Path]) -> None:
    """{run_badlog}: a copy of {run} whose train.jsonl has a damaged line before its last (not what a
    crash leaves: a crash can only tear the last line, which resume drops)."""
    build_run(p)
    p["run_badlog"] = p["root"] / "run-badlog"
    if not p["run_badlog"].exists():
        _copy(p["run"], p["run_badlog"])
        log = p["run_badlog"] / "train.jsonl"
        lines = log.read_text().splitlines(keepends=True)
        log.write_text('{"kind": "train", "st\n' + "".join(lines[1:]))


def hold(p: dict[str, Path]) -> contextlib.AbstractContextManager:
    """{held}: a folder another (in-process) run has claimed for the duration of the case."""
    p["held"] = p["root"] / "held"
    return claim_output(p["held"], "convert")


@dataclass
class Outcome:
    """What a case did: exit code (CLI) or exception (library; None if none was raised), message."""

    exit_code: int | None
    error: BaseException | None
    message: str


def run_case(case: Case, paths: dict[str, Path]) -> tuple[Outcome, dict[str, tuple], dict[str, tuple]]:
    """Run `case`; return its outcome and the sandbox's snapshot before and after."""
    from typer.testing import CliRunner

    from analyses.app.cli import app

    with contextlib.ExitStack() as stack:
        if case.setup is not None:
            held = case.setup(paths)
            if held is not None:
                stack.enter_context(held)
        before = snapshot(paths["root"])
        if case.cli:
            names = {k: str(v) for k, v in paths.items()}
            result = CliRunner().invoke(app, [a.format(**names) for a in case.cli], terminal_width=400)
            outcome = Outcome(
                result.exit_code,
                result.exception if result.exit_code not in (0, 2) else None,
                " ".join(result.output.split()),
            )
        else:
            assert case.call is not None
            try:
                case.call(paths)
                outcome = Outcome(None, None, "")
            except Exception as err:  # noqa: BLE001 - the case decides what is expected
                outcome = Outcome(None, err, " ".join(str(err).split()))
        after = snapshot(paths["root"])
    return outcome, before, after


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` (hidden ones too): content hash and size, or "dir"."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir",)
        else:
            data = path.read_bytes()
            out[rel] = (hashlib.sha256(data).hexdigest(), len(data))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _convert(*extra: str) -> tuple[str, ...]:
    return (
        "convert",
        "--model",
        "{ar}",
        "--data",
        "{corpus}",
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        *extra,
    )


def _unchecked(p: dict[str, Path]) -> contextlib.AbstractContextManager:
    """The suite's run-time type checks off for a case that passes a wrong type on purpose: what a
    library user (who runs without them) gets is ar2mdm's own message."""
    from suite_typecheck import unchecked

    return unchecked()


def _probe(p: dict[str, Path]):
    from probe import ProbedModel

    return ProbedModel.from_checkpoint(p["ar"], backend="torch")


CASES: tuple[Case, ...] = (
    # --- output folders and files ---------------------------------------------------------------
    Case(
        "out-model-folder",
        "output",
        "`convert --out` is an existing AR model folder",
        ("not empty", "model checkpoint", "never writes over"),
        "choose a new or empty folder",
        cli=_convert("--out", "{ar}"),
    ),
    Case(
        "out-mdm-folder",
        "output",
        "`convert --out` is an MDM folder that is not a conversion run",
        ("not empty", "MDM checkpoint"),
        "choose a new or empty folder",
        cli=_convert("--out", "{mdm}"),
    ),
    Case(
        "out-user-folder",
        "output",
        "`convert --out` is a folder of the user's files",
        ("not empty", "notes.txt"),
        "choose a new or empty folder",
        cli=_convert("--out", "{user}"),
    ),
    Case(
        "out-other-command",
        "output",
        "`convert --out` is the results folder of `ar2mdm eval`",
        ("ar2mdm eval", "not empty"),
        "choose a new or empty folder",
        cli=_convert("--out", "{evalout}"),
    ),
    Case(
        "out-is-file",
        "output",
        "`convert --out` is an existing file",
        ("is an existing file", "takes a folder"),
        "pass a folder",
        cli=_convert("--out", "{file}"),
    ),
    Case(
        "out-under-file",
        "output",
        "`convert --out` lies under a file",
        ("is a file, not a folder",),
        "pass a folder whose parents are folders",
        cli=_convert("--out", "{file}/run"),
    ),
    Case(
        "out-unwritable",
        "output",
        "`convert --out` cannot be created (no permission)",
        ("cannot be created",),
        "choose a folder you can write to",
        cli=_convert("--out", "/sys/ar2mdm-test-run"),
    ),
    Case(
        "run-exists",
        "output",
        "`convert --out` holds a conversion run; neither --resume nor --overwrite",
        ("already holds a conversion run", "--resume", "--overwrite"),
        "--resume to continue, --overwrite to start over",
        cli=_convert("--out", "{run}"),
        setup=build_run,
    ),
    Case(
        "resume-damaged-log",
        "output",
        "`convert --resume` on a run whose train.jsonl has a damaged line before its last",
        ("train.jsonl, line 1, is damaged", "--overwrite"),
        "delete that line, or start over with --overwrite",
        cli=_convert("--out", "{run_badlog}", "--resume", "--held-out", "0"),
        setup=damaged_log,
    ),
    Case(
        "resume-and-overwrite",
        "options",
        "`convert --resume --overwrite`",
        ("pass one of them",),
        "choose one",
        cli=_convert("--out", "{run}", "--resume", "--overwrite"),
        setup=build_run,
    ),
    Case(
        "resume-changed-options",
        "options",
        "`convert --resume` of a finished run with another --lr",
        ("differ", "lr", "--overwrite"),
        "resume with the same options, or --overwrite",
        cli=_convert("--out", "{run}", "--resume", "--lr", "0.5", "--steps", "2"),
        setup=build_run,
    ),
    Case(
        "organism-over-model",
        "output",
        "`organism train --out` is an AR model folder",
        ("not empty", "model checkpoint"),
        "choose a new or empty folder",
        cli=("organism", "train", "--out", "{ar}", "--steps", "1"),
    ),
    Case(
        "organism-exists",
        "output",
        "`organism train --out` holds a trained organism",
        ("already holds a trained organism", "--overwrite"),
        "pass --overwrite to replace it",
        cli=("organism", "train", "--out", "{organism}", "--steps", "1"),
    ),
    Case(
        "eval-earlier-results",
        "output",
        "`eval --out` holds an earlier eval's results",
        ("earlier `ar2mdm eval`", "--overwrite"),
        "pass --overwrite, or another --out",
        cli=("eval", "--model", "{mdm}", "--out", "{evalout}", "--tasks", "ioi", "--n", "2"),
    ),
    Case(
        "eval-out-file",
        "output",
        "`eval --out` is an existing file",
        ("is an existing file",),
        "pass a folder",
        cli=("eval", "--model", "{mdm}", "--out", "{file}", "--tasks", "ioi", "--n", "2"),
    ),
    Case(
        "compare-earlier-results",
        "output",
        "`compare --out` holds an earlier comparison",
        ("earlier `ar2mdm compare`", "--overwrite"),
        "pass --overwrite, or another --out",
        cli=("compare", "--ar", "{ar}", "--mdm", "{mdm}", "--out", "{compareout}", "--tasks", "ioi"),
    ),
    Case(
        "compare-out-under-file",
        "output",
        "`compare --out` lies under a file",
        ("is a file, not a folder",),
        "pass a folder",
        cli=("compare", "--ar", "{ar}", "--mdm", "{mdm}", "--out", "{file}/x", "--tasks", "ioi"),
    ),
    Case(
        "study-user-folder",
        "output",
        "`study --out` is a folder of the user's files",
        ("not empty", "notes.txt"),
        "choose a new or empty folder, or an earlier study's",
        cli=("study", "--out", "{user}", "--quick"),
    ),
    Case(
        "study-out-file",
        "output",
        "`study --out` is an existing file",
        ("is an existing file",),
        "pass a folder",
        cli=("study", "--out", "{file}", "--quick"),
    ),
    Case(
        "trace-folder",
        "output",
        "`sample --trace` is a folder (checked before generating)",
        ("is a folder",),
        "pass a file name",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{user}"),
    ),
    Case(
        "trace-missing-folder",
        "output",
        "`sample --trace` in a folder that does not exist",
        ("does not exist",),
        "create the folder first",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{root}/nowhere/t.json"),
    ),
    Case(
        "trace-under-file",
        "output",
        "`sample --trace` under a file",
        ("is a file, not a folder",),
        "pass a file in a folder",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{file}/t.json"),
    ),
    Case(
        "trace-user-file",
        "output",
        "`sample --trace` names an existing file ar2mdm did not write (checked before generating)",
        ("was not written by ar2mdm", "--overwrite"),
        "choose another name, or pass --overwrite",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{file}"),
    ),
    Case(
        "trace-in-checkpoint",
        "output",
        "`sample --trace` names a file of a model checkpoint (its config.json)",
        ("inside a model checkpoint folder",),
        "write the trace outside the checkpoint",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{mdm}/config.json", "--overwrite"),
    ),
    Case(
        "trace-in-run-folder",
        "output",
        "`sample --trace` names a new file inside a folder an ar2mdm run owns",
        ("inside the output folder of an ar2mdm run",),
        "write the trace outside the run folder",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{compareout}/trace.json"),
    ),
    Case(
        "trace-device",
        "output",
        "`sample --trace` names a device node (even with --overwrite)",
        ("not a regular file",),
        "pass the name of a new file",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "/dev/full", "--overwrite"),
    ),
    Case(
        "trace-link",
        "output",
        "`sample --trace` names a symbolic link",
        ("symbolic link",),
        "pass a file name",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{link}"),
    ),
    Case(
        "trace-trailing-separator",
        "output",
        "`sample --trace DIR/`: a trailing separator names a folder",
        ("ends in a separator", "names a folder"),
        "pass a file name",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--trace", "{root}/newdir/"),
    ),
    Case(
        "out-empty",
        "output",
        "`convert --out ''`: an empty output folder (would be the current folder)",
        ("--out is empty or '.'", "current folder"),
        "name a folder",
        cli=_convert("--out", ""),
    ),
    Case(
        "out-dot",
        "output",
        "`eval --out .`: the current folder as a whole",
        ("--out is empty or '.'", "current folder"),
        "name a folder",
        cli=("eval", "--model", "{mdm}", "--out", ".", "--tasks", "ioi", "--n", "2"),
    ),
    Case(
        "out-in-use",
        "output",
        "a second run on an --out another run holds",
        ("in use by", "wait for"),
        "wait for the other run, or choose another --out",
        cli=_convert("--out", "{held}"),
        setup=hold,
    ),
    # --- checkpoint kinds -----------------------------------------------------------------------
    Case(
        "convert-an-mdm",
        "kinds",
        "`convert --model` is an MDM",
        ("must be an autoregressive", "converted from"),
        "pass its AR source",
        cli=("convert", "--model", "{mdm}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "arpc-mdm-scorer",
        "kinds",
        "`sample --sampler arpc --ar-scorer` is an MDM",
        ("ARPC's AR scorer", "must be an autoregressive"),
        "pass the ARM the MDM came from",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--sampler", "arpc", "--ar-scorer", "{mdm}"),
    ),
    Case(
        "mdm-without-metadata",
        "kinds",
        "an MDM folder without ar2mdm.json (`sample --sampler ar`)",
        ("is_causal: false", "no ar2mdm.json", "--resume"),
        "rerun the convert command with --resume",
        cli=("sample", "--model", "{mdm_nometa}", "--prompt", "When Mary", "--sampler", "ar"),
    ),
    Case(
        "probe-mdm-without-metadata",
        "kinds",
        "`ProbedModel.from_checkpoint` on an MDM without ar2mdm.json",
        ("no ar2mdm.json",),
        "restore ar2mdm.json, or --resume the run",
        call=lambda p: __import__("probe").ProbedModel.from_checkpoint(p["mdm_nometa"]),
        expect=CheckpointError,
    ),
    Case(
        "compare-ar-is-mdm",
        "kinds",
        "`compare --ar` is an MDM",
        ("compare --ar", "must be an autoregressive"),
        "pass the ARM",
        cli=("compare", "--ar", "{mdm}", "--mdm", "{mdm}", "--out", "{root}/c", "--tasks", "ioi"),
    ),
    Case(
        "compare-mdm-is-ar",
        "kinds",
        "`compare --mdm` is an ARM",
        ("compare --mdm", "must be a masked diffusion"),
        "convert it first",
        cli=("compare", "--ar", "{ar}", "--mdm", "{ar}", "--out", "{root}/c", "--tasks", "ioi"),
    ),
    Case(
        "compare-other-tokenizer",
        "kinds",
        "`compare` of an ARM and an MDM with different tokenizers",
        ("different tokenizers", "quokka"),
        "compare an ARM with its own conversion",
        cli=("compare", "--ar", "{ar}", "--mdm", "{mdm_othertok}", "--out", "{root}/c", "--tasks", "ioi"),
    ),
    Case(
        "load-ar-on-mdm",
        "kinds",
        "`load_ar` on an MDM folder",
        ("must be an autoregressive",),
        "use load_any or load_mdm",
        call=lambda p: load_ar(p["mdm"]),
        expect=CheckpointError,
    ),
    Case(
        "load-mdm-on-ar",
        "kinds",
        "`load_mdm` on an AR folder",
        ("must be a masked diffusion",),
        "convert it first",
        call=lambda p: load_mdm(p["ar"]),
        expect=CheckpointError,
    ),
    Case(
        "meta-wrong-type",
        "kinds",
        'ar2mdm.json with a wrong-typed field (`shift: "maybe"`)',
        ("'shift' must be true or false", "edited or damaged"),
        "restore the file from the run",
        cli=("sample", "--model", "{mdm_badmeta}", "--prompt", "When Mary"),
    ),
    Case(
        "meta-not-object",
        "kinds",
        "ar2mdm.json that is not a JSON object",
        ("not an object",),
        "restore the file from the run",
        call=lambda p: ModelMeta.load(p["mdm_listmeta"]),
        expect=CheckpointError,
    ),
    Case(
        "model-missing",
        "kinds",
        "`convert --model` does not exist",
        ("does not exist",),
        "pass an existing folder or name",
        cli=("convert", "--model", "{root}/missing", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    # --- options and config files ---------------------------------------------------------------
    Case(
        "config-steps-text",
        "options",
        "config file `steps: abc`",
        ("'steps' must be an integer", "abc"),
        "fix the value",
        cli=("convert", "--config", "{steps_abc}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "config-bool-not-a-word",
        "options",
        'config file `bf16 = "maybe"`',
        ("'bf16' must be true or false (or yes/no, on/off, 1/0)", "maybe"),
        "true/false, yes/no, on/off or 1/0",
        cli=("convert", "--config", "{bf16_maybe}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "eval-option-no-sampler-takes",
        "options",
        "`eval --samplers low-confidence --tau 0.5`: an option the chosen sampler does not take",
        ("--tau is not an option of the sampler low-confidence", "threshold"),
        "drop it, or choose a sampler that takes it",
        cli=(
            "eval",
            "--model",
            "{mdm}",
            "--out",
            "{root}/e",
            "--tasks",
            "ioi",
            "--n",
            "2",
            "--samplers",
            "low-confidence",
            "--tau",
            "0.5",
        ),
    ),
    Case(
        "sample-scorer-unused",
        "options",
        "`sample --sampler threshold --ar-scorer AR`: a scorer only arpc uses",
        ("--ar-scorer is used by the arpc sampler only",),
        "drop it, or use --sampler arpc",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--sampler", "threshold", "--ar-scorer", "{ar}"),
    ),
    Case(
        "config-steps-float",
        "options",
        "config file `steps = 1.5`",
        ("'steps' must be an integer", "1.5"),
        "fix the value",
        cli=("convert", "--config", "{steps_float}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "config-lr-text",
        "options",
        'config file `lr = "fast"`',
        ("'lr' must be a number", "fast"),
        "fix the value",
        cli=("convert", "--config", "{lr_fast}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "config-null",
        "options",
        "config file `seq_len: null`",
        ("'seq_len' must be an integer", "null"),
        "give a value or leave the key out",
        cli=("convert", "--config", "{seqlen_null}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "config-unknown-key",
        "options",
        "config file with an unknown key (`stepz`)",
        ("unknown option", "stepz"),
        "fix the key's spelling",
        cli=("convert", "--config", "{unknown}", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new"),
    ),
    Case(
        "seq-len-1",
        "options",
        "`convert --seq-len 1`",
        ("seq_len must be >= 2",),
        "use 2 or more",
        cli=("convert", "--model", "{ar}", "--data", "{corpus}", "--out", "{root}/new", "--seq-len", "1"),
    ),
    Case(
        "clip-negative",
        "options",
        "`convert --clip -1`",
        ("clip must be >= 0",),
        "0 (off) or a positive norm",
        cli=_convert("--out", "{root}/new", "--clip", "-1"),
    ),
    Case(
        "min-lr-ratio",
        "options",
        "`convert --min-lr-ratio 2`",
        ("min_lr_ratio must be in [0, 1]",),
        "a fraction of --lr",
        cli=_convert("--out", "{root}/new", "--min-lr-ratio", "2"),
    ),
    Case(
        "convert-device",
        "options",
        "`convert --device gpu`",
        ("device must be one of", "cuda"),
        "auto, cpu or cuda",
        cli=_convert("--out", "{root}/new", "--device", "gpu"),
    ),
    Case(
        "convert-compile",
        "options",
        "`convert --compile fast`",
        ("compile must be off, on", "inductor"),
        "off, on, or a torch.compile backend such as aot_eager",
        cli=_convert("--out", "{root}/new", "--compile", "fast"),
    ),
    Case(
        "lora-unknown-key",
        "options",
        "`convert --lora rank=8`",
        ("unknown key 'rank'", "r, alpha, targets, dropout"),
        "r=8 (the keys are r, alpha, targets, dropout)",
        cli=_convert("--out", "{root}/new", "--lora", "rank=8"),
    ),
    Case(
        "lora-rank-zero",
        "options",
        "`convert --lora r=0`",
        ("r (the adapter rank) must be an integer >= 1",),
        "a rank of 1 or more",
        cli=_convert("--out", "{root}/new", "--lora", "r=0"),
    ),
    Case(
        "lora-not-key-value",
        "options",
        "`convert --lora 8`",
        ("'8' is not key=value", "r=8,alpha=16"),
        "key=value pairs, e.g. r=8,alpha=16",
        cli=_convert("--out", "{root}/new", "--lora", "8"),
    ),
    Case(
        "lora-unknown-target",
        "options",
        "`convert --lora r=8,targets=qproj` (no such layer)",
        ("target 'qproj' matches no linear layer", "q_proj", "v_proj"),
        "a name from the message's list of the model's linear layers",
        cli=_convert("--out", "{root}/new", "--lora", "r=8,targets=qproj"),
    ),
    Case(
        "compare-kv-receivers",
        "options",
        "`compare --kv-receivers all`",
        ("--kv-receivers must be grouped or per-query",),
        "grouped or per-query",
        cli=("compare", "--ar", "{ar}", "--mdm", "{mdm}", "--out", "{root}/cmp", "--kv-receivers", "all"),
    ),
    Case(
        "document-attention-sft",
        "options",
        "`convert --document-attention --sft`",
        ("document_attention", "SFT"),
        "drop one of them",
        cli=_convert("--out", "{root}/new", "--document-attention", "--sft"),
    ),
    Case(
        "eval-batch-zero",
        "options",
        "`eval --batch-size 0`",
        ("--batch-size must be >= 1",),
        "1 or more",
        cli=("eval", "--model", "{mdm}", "--out", "{root}/ev", "--batch-size", "0"),
    ),
    Case(
        "lm-eval-two-samplers",
        "options",
        "`eval --lm-eval TASKS --samplers a,b`: the harness model holds one sampler",
        ("--lm-eval runs one sampler",),
        "give one sampler (its options as flags), or run once per sampler",
        cli=(
            "eval",
            "--model",
            "{mdm}",
            "--out",
            "{root}/ev",
            "--lm-eval",
            "ioi",
            "--samplers",
            "low-confidence,threshold",
        ),
    ),
    Case(
        "lm-eval-mc-samples",
        "options",
        "`eval --lm-eval TASKS --mc-samples 0`",
        ("--mc-samples must be >= 1",),
        "1 or more Monte-Carlo samples per loglikelihood request (LLaDA reports with 128)",
        cli=("eval", "--model", "{mdm}", "--out", "{root}/ev", "--lm-eval", "ioi", "--mc-samples", "0"),
    ),
    Case(
        "sample-empty-prompt",
        "options",
        "`sample --prompt ''`",
        ("--prompt is empty",),
        "give text",
        cli=("sample", "--model", "{mdm}", "--prompt", ""),
    ),
    Case(
        "sample-unknown-cache",
        "options",
        "`sample --sampler threshold --cache suffix`",
        ("unknown cache 'suffix'", "prefix, dual"),
        "a listed cache; the message says which is exact for which checkpoint",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--sampler", "threshold", "--cache", "suffix"),
    ),
    Case(
        "sample-option-of-another-rule",
        "options",
        "`sample --sampler threshold --factor 2` (factor is the factor sampler's)",
        ("not an option of the sampler threshold", "--factor is taken by factor"),
        "--sampler factor",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--sampler", "threshold", "--factor", "2"),
    ),
    # --- data and task files --------------------------------------------------------------------
    Case(
        "data-missing-field",
        "data",
        "`convert --data` .jsonl without a 'text' field",
        ("no field 'text'", "--text-field"),
        "name the field with --text-field",
        cli=("convert", "--model", "{ar}", "--data", "{nofield}", "--out", "{root}/new"),
    ),
    Case(
        "sft-nonstring",
        "data",
        "`convert --sft` row with a non-string suffix",
        ("sft-badsuffix.jsonl:2", "'suffix'"),
        "make the field a string",
        cli=("convert", "--model", "{ar}", "--data", "{sft_badsuffix}", "--sft", "--out", "{root}/new"),
    ),
    Case(
        "sft-batch-exceeds-data",
        "data",
        "`convert --sft` with fewer examples than one batch",
        ("fewer than one batch", "--batch-size"),
        "smaller --batch-size, or more data",
        cli=(
            "convert",
            "--model",
            "{ar}",
            "--data",
            "{sft_small}",
            "--sft",
            "--batch-size",
            "8",
            "--held-out",
            "0",
            "--out",
            "{root}/new",
        ),
    ),
    Case(
        "task-file-folder",
        "data",
        "`eval --tasks` names a folder ending in .jsonl",
        ("is a folder",),
        "pass a JSONL file",
        cli=("eval", "--model", "{mdm}", "--out", "{root}/ev", "--tasks", "{task_folder}", "--n", "2"),
    ),
    Case(
        "task-file-binary",
        "data",
        "`eval --tasks` names a binary file",
        ("not UTF-8",),
        "pass a JSONL text file",
        cli=("eval", "--model", "{mdm}", "--out", "{root}/ev", "--tasks", "{task_binary}", "--n", "2"),
    ),
    Case(
        "task-length-mismatch",
        "data",
        "a user task whose clean and corrupted prompts differ in length",
        ("mismatch.jsonl:2", "tokens but corrupted"),
        "fix that line",
        cli=(
            "eval",
            "--model",
            "{ar}",
            "--out",
            "{root}/ev",
            "--tasks",
            "{task_mismatch}",
            "--samplers",
            "ar",
            "--n",
            "2",
        ),
    ),
    # --- probe inputs ---------------------------------------------------------------------------
    Case(
        "probe-empty-list",
        "probe",
        "`run_with_cache([])`",
        ("empty list",),
        "pass at least one text",
        call=lambda p: _probe(p).run_with_cache([]),
    ),
    Case(
        "probe-empty-text",
        "probe",
        '`run_with_cache("")`',
        ("has no tokens",),
        "pass non-empty text",
        call=lambda p: _probe(p).run_with_cache(""),
    ),
    Case(
        "probe-empty-ids",
        "probe",
        "`run_with_cache` on a [1, 0] tensor",
        ("inputs are empty",),
        "pass a token",
        call=lambda p: _probe(p).run_with_cache(torch.zeros(1, 0, dtype=torch.long)),
    ),
    Case(
        "probe-out-of-vocab",
        "probe",
        "token ids outside the embedding",
        ("must lie in 0..", "another tokenizer"),
        "tokenize with the model's tokenizer",
        call=lambda p: _probe(p)(torch.tensor([[1, 2, 10_000]])),
    ),
    Case(
        "probe-too-long",
        "probe",
        "inputs longer than the model's context",
        ("context is 128 positions",),
        "shorten the inputs",
        call=lambda p: _probe(p)(torch.ones(1, 129, dtype=torch.long)),
    ),
    Case(
        "probe-bad-mask",
        "probe",
        "an attention mask with values other than 0/1",
        ("1 (token) and 0 (padding)",),
        "pass a 0/1 mask",
        call=lambda p: _probe(p)(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.full((1, 3), 2)),
    ),
    Case(
        "attribute-offload",
        "probe",
        '`attribute(..., offload="tape")`',
        ("offload must be one of", "disk"),
        "none, cpu or disk",
        call=lambda p: __import__("analyses.circuits").circuits.attribute(_probe(p), [], offload="tape"),
    ),
    Case(
        "attribute-steps-per-pass",
        "probe",
        "`attribute(..., steps_per_pass=0)`",
        ("steps_per_pass", "positive integer"),
        "1 or more (at most `steps` are used)",
        call=lambda p: __import__("analyses.circuits").circuits.attribute(_probe(p), [], steps_per_pass=0),
    ),
    Case(
        "probe-batch-size-zero",
        "probe",
        "`run_with_cache(..., batch_size=0)`",
        ("batch_size must be >= 1",),
        "1 or more",
        call=lambda p: _probe(p).run_with_cache(torch.ones(2, 3, dtype=torch.long), batch_size=0),
    ),
    Case(
        "probe-batch-size-fraction",
        "probe",
        "`run_with_cache(..., batch_size=1.5)`",
        ("batch_size must be a whole number",),
        "a whole number, 1 or more",
        call=lambda p: _probe(p).run_with_cache(torch.ones(2, 3, dtype=torch.long), batch_size=1.5),
        setup=_unchecked,
    ),
    Case(
        "probe-names-not-strings",
        "probe",
        "`run_with_cache(..., names=[0, 1])`: layer numbers instead of names",
        ("is not a name", "cache_names()"),
        "pass names or globs such as 'L0.mlp.out'",
        call=lambda p: _probe(p).run_with_cache(torch.ones(1, 3, dtype=torch.long), names=[0, 1]),
        setup=_unchecked,
    ),
    Case(
        "load-device-gpu",
        "published",
        '`ProbedModel.from_checkpoint(..., device="gpu")`',
        ("device= 'gpu' is not a device name", "cuda:N"),
        "use cpu, cuda or cuda:N",
        call=lambda p: __import__("probe").ProbedModel.from_checkpoint(p["ar"], device="gpu"),
    ),
    Case(
        "load-dtype-int4",
        "published",
        '`load_any(..., dtype="int4")`',
        ("dtype= 'int4' is not a dtype", "fp32, bf16 or fp16"),
        "use fp32, bf16 or fp16",
        call=lambda p: __import__("conversion.checkpoints").checkpoints.load_any(p["ar"], dtype="int4"),
    ),
    Case(
        "load-trust-not-a-word",
        "published",
        '`load_ar(..., trust_remote_code="maybe")`: not a yes/no word',
        ("trust_remote_code must be a yes/no value", "false/no/off/0"),
        "true/yes/on/1 or false/no/off/0",
        call=lambda p: load_ar(p["ar"], trust_remote_code="maybe"),
    ),
    Case(
        "published-missing-weight",
        "published",
        "a published MDM (here Dream) with a weight missing from its files",
        ("lack 1 tensors", "download the checkpoint again"),
        "download the checkpoint again",
        cli=("sample", "--model", "{dream_missing}", "--prompt", "When"),
    ),
    Case(
        "gguf-no-mask",
        "published",
        "a Dream/LLaDA GGUF without tokenizer.ggml.mask_token_id",
        ("tokenizer.ggml.mask_token_id", "Convert the checkpoint again"),
        "convert it again with a current llama.cpp",
        cli=("sample", "--model", "{dream_nomask_gguf}", "--prompt", "When"),
    ),
    Case(
        "custom-architecture",
        "published",
        "a folder of an unknown architecture that ships its own code",
        ("--trust-remote-code", "dream (", "llada (", "FAMILY:PATH"),
        "pass --trust-remote-code if you trust it, or name its family",
        cli=("sample", "--model", "{custom_arch}", "--prompt", "When"),
    ),
    Case(
        "bad-dtype",
        "published",
        "`--dtype` that is not a floating dtype ar2mdm loads in",
        ("use fp32, bf16 or fp16",),
        "fp32, bf16 or fp16",
        cli=("sample", "--model", "{mdm}", "--prompt", "When", "--dtype", "int8"),
    ),
    Case(
        "missing-gpu",
        "published",
        "`--device cuda:N` on a machine without that GPU",
        ("CUDA device", "--device cpu"),
        "use --device cpu, or run on a GPU machine",
        cli=("sample", "--model", "{mdm}", "--prompt", "When", "--device", "cuda:63"),
    ),
)
