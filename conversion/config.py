"""Run options from three layers: built-in defaults < a config file < command-line flags, and
`TrainConfig`, the options of a conversion run (each checked by `TrainConfig.validate`).

A config file is YAML (.yaml/.yml) or TOML (.toml) holding a flat mapping of option names (as in
`TrainConfig`; dashes and underscores are interchangeable). Unknown keys are an error, never
silently ignored: a typo in a config file must not train the wrong model for an hour. Values are
checked against the options' declared types (`check_types`) before anything is loaded, so
`steps: "abc"` or `seq_len: null` is one clear message naming the option, not a traceback an
hour later (`ar2mdm.common.options.check_types`, which also guards checkpoint metadata and dataclasses
built in Python).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ar2mdm.common.errors import UserError
from ar2mdm.common.options import check_types
from conversion.lora import LoraSpec, parse_lora
from conversion.objective import DiffusionOptions

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda")


def check_compile_backend(name: str) -> None:
    """Raise UserError unless `name` is "off", "on" or a torch.compile backend registered here."""
    if name in ("off", "on"):
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise UserError(
            f"compile must be off, on (inductor) or a torch.compile backend "
            f"({', '.join(torch._dynamo.list_backends())}, or the debug ones such as aot_eager), got {name!r}."
        )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into a flat dict with underscore keys."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist.")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file {p} must end in .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise UserError(f"config file {p} could not be parsed: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {p} must hold a mapping of option: value, got {type(raw).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def merge_options(
    cls: type[T], file_options: dict[str, Any], cli_options: dict[str, Any], *, where: str = "the config file"
) -> T:
    """Build `cls` (a dataclass) from defaults < file_options < cli_options (None = not given).

    File values are type-checked (`check_types`); `where` names the file in messages. When `cls`
    has a `validate()` method (TrainConfig), it runs on the result, and a value the file gave that
    it refuses (`lora: 8`, `seq_len: 1`) is reported with `where` and the option's name, so the
    message points at the file rather than at a flag that was never typed (`_blame`).
    Raises UserError for unknown keys, wrong types, refused values and missing required options."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(file_options) - known)
    if unknown:
        raise UserError(f"unknown option(s) {unknown} in {where}; known options: {sorted(known)}.")
    merged = check_types(cls, file_options, where)
    merged.update({k: v for k, v in cli_options.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in merged]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise UserError(f"missing required option(s): give {flags} on the command line or in --config.")
    result = cls(**merged)
    from_file = [k for k in file_options if cli_options.get(k) is None]
    if from_file and hasattr(result, "validate"):
        try:
            dataclasses.replace(result).validate()  # type: ignore[call-overload]
        except UserError as err:
            name = _blame(result, from_file, str(err))
            if name is None:
                raise
            raise UserError(f"{where}: option {name!r} ({file_options[name]!r}) is refused: {err}") from None
    return result


def _blame(config: Any, from_file: list[str], message: str) -> str | None:
    """The option among `from_file` whose value makes `config.validate()` fail with `message`:
    the first one whose default, put in its place, makes that failure go away; None if none does
    (a flag given on the command line is to blame)."""
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    for name in from_file:
        if name not in defaults:
            continue  # a required option: it has no default to try instead
        try:
            dataclasses.replace(config, **{name: defaults[name]}).validate()
        except UserError as err:
            if str(err) == message:
                continue
        return name
    return None


@dataclass
class TrainConfig:
    """Everything a conversion run depends on.

    model: AR source for `load_ar` (name, HF folder, .gguf). data: text source for
    `data.load_texts` (corpus name, .txt/.jsonl/folder, or a list). out: output folder.
    steps: optimizer steps. seq_len: tokens per block. batch_size: GLOBAL sequences per optimizer
    step (divisible by grad_accum x processes). lr, weight_decay, adam_beta2: AdamW. warmup: linear
    warmup steps, then cosine decay to min_lr_ratio x lr. clip: max grad norm (0: off).
    bf16: bf16 autocast of forward passes (weights and optimizer stay fp32). seed: data order,
    noise, dropout.
    noise / schedule / weighting / antithetic / attention / shift: the objective
    (`objective.DiffusionOptions`). document_attention: packed text rows attend within each
    document only (block-diagonal mask, positions restarting per document; `ar2mdm.diffusion.attention`).
    mask_token: "add" (new <|mask|> token) or an existing id.
    sft: `data` holds prompt/answer examples ("tasks" or a .jsonl file); only answers are noised.
    held_out: fraction of documents held out. eval_every: held-out eval period in steps, plus
    one at the end (0: no evaluation). eval_blocks: held-out blocks used. save_every: checkpoint
    period in steps, plus one at the end (0: no checkpoints, so no resume). snapshot_every: write
    the MDM as it is every N steps to out/snapshots/step-NNNNNN (loadable folders, for
    `analyses.compare.track`; 0: none). max_minutes: stop after this much training time (0: no
    limit) and write the MDM as it stands (a checkpoint too when save_every > 0; `steps` in the
    result says how far it got). log_every: JSONL log period. resume: continue from out/checkpoint (same options; `steps` may grow).
    trust_remote_code: passed to `load_ar`.
    device: "auto" (accelerate's choice: the process's GPU when there is one), "cpu" or "cuda".
    compile: "off", "on" (torch.compile with inductor) or another torch.compile backend name
    ("aot_eager" runs the same capture on a CPU without a compiler). peak_tflops: the device's
    peak for the logged MFU (0: the data sheet's bf16 figure of a known GPU; none on CPU).
    Fused AdamW is used on CUDA (not for the CPU FSDP2 path).
    lora: "" trains every weight; "r=8,alpha=16,targets=q_proj,v_proj,dropout=0.05" trains LoRA
    adapters and the mask token's embedding row, merged into the weights on save
    (`conversion.lora`; `validate` rewrites it in canonical form, so equal settings compare equal
    on resume).
    router / aux_loss (mixture-of-experts sources, `conversion.moe`): "train" or "freeze" the
    routers; the load-balancing loss's coefficient: "source" (what the source's config states:
    Qwen3-MoE's router_aux_loss_coef, none for GLM-4-MoE-style models), "off", or a number.
    """

    model: str
    data: str | list[str]
    out: str
    steps: int = 100
    seq_len: int = 128
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta2: float = 0.95
    warmup: int = 0
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    noise: str = "absorbing"
    schedule: str = "linear"
    weighting: str = "elbo"
    antithetic: bool = True
    attention: str = "bidirectional"
    document_attention: bool = False
    shift: bool = True
    mask_token: str = "add"
    sft: bool = False
    held_out: float = 0.02
    eval_every: int = 0
    eval_blocks: int = 64
    save_every: int = 0
    snapshot_every: int = 0
    max_minutes: float = 0.0
    log_every: int = 1
    resume: bool = False
    overwrite: bool = False
    text_field: str = "text"
    trust_remote_code: bool = False
    device: str = "auto"
    compile: str = "off"
    peak_tflops: float = 0.0
    lora: str = ""
    router: str = "train"
    aux_loss: str = "source"

    def options(self) -> DiffusionOptions:
        return DiffusionOptions(
            noise=self.noise,
            schedule=self.schedule,
            weighting=self.weighting,
            shift=self.shift,
            antithetic=self.antithetic,
            attention=self.attention,
        ).checked()

    def validate(self, world_size: int = 1) -> None:
        """Raise UserError naming the first bad option (types first, then values)."""
        for name, value in check_types(TrainConfig, asdict(self), "TrainConfig").items():
            setattr(self, name, value)  # e.g. steps 2.0 -> 2, lr "1e-4" (YAML reads it as text) -> 1e-4
        if self.seq_len < 2:
            raise UserError(f"seq_len must be >= 2 (a token and one to predict from it), got {self.seq_len}.")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_blocks"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup", "eval_every", "save_every", "snapshot_every"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}.")
        shard = self.grad_accum * world_size
        if self.batch_size % shard:
            raise UserError(
                f"batch_size {self.batch_size} (global, per optimizer step) must be divisible by "
                f"grad_accum x processes = {self.grad_accum} x {world_size}."
            )
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise UserError(f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number, got {self.lr}.")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise UserError(f"clip must be >= 0 (0 = no clipping), got {self.clip}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1] (a fraction of lr), got {self.min_lr_ratio}.")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise UserError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}.")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0.0 <= self.held_out < 1.0:
            raise UserError(f"held_out must be a fraction in [0, 1), got {self.held_out}.")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}.")
        if self.document_attention and self.sft:
            raise UserError(
                "document_attention separates the documents packed into a text row; SFT rows hold one example "
                "each. Drop --document-attention or --sft."
            )
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}.")
        if not (self.peak_tflops >= 0 and math.isfinite(self.peak_tflops)):
            raise UserError(f"peak_tflops must be >= 0 (0 = look the GPU up), got {self.peak_tflops}.")
        check_compile_backend(self.compile)
        if self.router not in ("train", "freeze"):
            raise UserError(f"router must be 'train' or 'freeze', got {self.router!r}.")
        self.aux_loss = str(self.aux_loss).strip().lower()
        if self.aux_loss not in ("source", "off"):
            try:
                coef = float(self.aux_loss)
            except ValueError:
                coef = -1.0
            if not (coef >= 0 and math.isfinite(coef)):
                raise UserError(
                    f"aux_loss must be 'source', 'off' or a coefficient >= 0 (e.g. 0.001), got {self.aux_loss!r}."
                )
        self.options()
        spec = self.lora_spec()
        self.lora = spec.text() if spec else ""

    def lora_spec(self) -> LoraSpec | None:
        """The LoRA setting (`conversion.lora.parse_lora`), or None: every weight trains."""
        return parse_lora(self.lora)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
