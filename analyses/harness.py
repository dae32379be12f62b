"""ar2mdm checkpoints as an lm-evaluation-harness model ("ar2mdm").

Importing this module registers the model with the harness, after which
`lm_eval.simple_evaluate(model="ar2mdm", model_args="pretrained=DIR,sampler=threshold,tau=0.9")`
works; on the command line `ar2mdm lm-eval ...` is the harness's own CLI with the model
registered (lm-eval 0.4.13 has no plugin hook for models outside its tree, so the plain
`lm_eval` command cannot see it), and `ar2mdm eval --lm-eval TASKS` exports ar2mdm's tasks and runs
them through the harness.

Model arguments (`--model_args k=v,...`):
    pretrained         any checkpoint `conversion.checkpoints.load_any` takes: an ar2mdm MDM folder,
                       a published MDM (Dream, LLaDA, ...), an AR source (HF folder, .gguf, smollm2, organism)
    sampler            one of `ar2mdm.sampling.SAMPLERS` [default: ar for an ARM, low-confidence for an MDM];
                       every option of that sampler (steps, block_length, temperature, tau, cache,
                       factor, refresh, stop_at_eos, top_k, top_p, ...) is a model argument too
    max_new_tokens     generation length for every request [default: the request's max_gen_toks]
    mc_samples         Monte-Carlo ELBO samples per loglikelihood request of an MDM [default: 32;
                       LLaDA reports with 128]
    greedy_check       also decide `is_greedy` for MDM requests (a low-confidence fill) [default: true]
    batch_size, device (cpu | cuda | cuda:N), dtype (fp32 | bf16 | fp16), seed, trust_remote_code
                       [default: no]

Every value is checked as the `ar2mdm` flags are: yes/no arguments (trust_remote_code,
greedy_check, stop_at_eos, ...) take true/yes/on/1 or false/no/off/0 (`ar2mdm.common.options.parse_bool`;
`trust_remote_code=no` never runs a checkpoint's code), numbers must be numbers (batch_size, seed,
mc_samples, max_new_tokens whole ones), a sampler option must have its type; anything else is a
UserError naming the model argument (`check_model_args`, which `ar2mdm lm-eval` runs before the
harness starts). batch_size and device given in --model_args win over the harness's --batch_size /
--device (whose defaults, 1 and cuda:0, it always passes). On a machine without a GPU a CUDA device
falls back to the CPU with a warning, as lm-eval's own HF model does.

Running: `evaluate` (what `ar2mdm eval --lm-eval` runs) is `prepare_run`, every check with nothing
written (the sampler and its options, ar2mdm's tasks rendered, the harness's own task names looked
up in its index), then `run_prepared`, which writes the exported tasks and runs the harness.

Requests:
- `generate_until`: each context becomes a canvas (prompt, then max_gen_toks positions to
  generate) run through the sampler (`ar2mdm.sampling.run`); the text is cut at the first EOS and at the
  first stop string. The request's `temperature` (or do_sample false -> 0) is used unless
  `temperature` is a model argument. The prompt is cut from the left to fit the model's context.
- `loglikelihood`: exact for an ARM; for an MDM the Monte-Carlo ELBO (`analyses.likelihood`). The
  spread of every MDM estimate is kept: `ModelAdapter.spread()` summarises it (mean and largest
  standard error), and `ar2mdm eval --lm-eval` writes it next to the harness's results.
- `loglikelihood_rolling`: the harness's disjoint rolling windows (`lm_eval.utils`), each scored as
  one loglikelihood request.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from collections import defaultdict
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from analyses.likelihood import LogLikelihood, ar_loglikelihoods, mdm_loglikelihoods
from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import device_of, parse_device, parse_dtype
from ar2mdm.common.options import check_types, parse_bool
from ar2mdm.common.placement import placement_options
from ar2mdm.sampling import SAMPLERS, ModelContext, build_sampler, make_canvas, run, sampler_options
from conversion.checkpoints import Loaded, load_any

MODEL_NAME = "ar2mdm"
_OWN = ("pretrained", "sampler", "max_new_tokens", "mc_samples", "greedy_check", "seed", "dtype", "trust_remote_code")


def _int(name: str, value: Any, least: int, *, what: str = "model argument") -> int:
    """`value` as a whole number >= least: an int, an integral float (2.0) or a string of digits;
    anything else (1.5, "abc", True) is a UserError naming `what` `name`."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise UserError(f"{what} {name}={value!r} must be a whole number (>= {least}).")
    if number < least:
        raise UserError(f"{what} {name}={value!r} must be >= {least}.")
    return number


def _device(value: Any) -> torch.device:
    """The device a `device` model argument names. The harness's CLI passes --device cuda:0 unless
    told otherwise: on a machine without a GPU a CUDA device falls back to the CPU (with a
    warning), as lm-eval's own HF model does; a malformed name is a UserError."""
    name = str(value).strip()
    try:
        asked = torch.device(name)
    except (RuntimeError, TypeError):
        asked = None  # parse_device says what is wrong with it
    if asked is not None and asked.type == "cuda" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("device %s asked for but torch sees no GPU: using the CPU", name)
        name = "cpu"
    return parse_device(name, option="model argument device")


def _sampler_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of sampler `name` given as model arguments, checked and typed: an unknown
    sampler, one that needs an AR scorer, an option it does not take, or a value of the wrong type
    (`stop_at_eos=maybe`, `tau=abc`) is a UserError. None-valued options are left out (defaults)."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}.")
    if SAMPLERS.get(name).needs_scorer:
        raise UserError(f"sampler {name!r} needs an AR scorer, which the harness model does not load.")
    accepted = set(sampler_options(name))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"unknown model argument(s) {unknown}: the ar2mdm model takes {', '.join(_OWN)}, batch_size, device "
            f"and the options of sampler {name!r}: {', '.join(sorted(accepted)) or 'none'}."
        )
    given = {k: v for k, v in options.items() if v is not None}
    # --model_args values arrive as the harness parsed them ("no" stays a string): each option
    # gets its type from the sampler's signature, so stop_at_eos=no is False and tau=abc an error
    hints = typing.get_type_hints(inspect.unwrap(SAMPLERS.get(name).__init__))
    fields = make_dataclass("SamplerOptions", [(k, hints.get(k, Any)) for k in given])
    typed = check_types(fields, given, f"model argument of sampler {name!r}")
    build_sampler(name, **typed)  # refuse bad option values now, not mid-run
    return typed


@dataclass(frozen=True)
class ModelArguments:
    """The model arguments of `ModelAdapter`, checked and typed (`check_model_args`). load: the
    keywords of `load_any` (dtype, device, trust_remote_code), empty when a checkpoint is passed
    loaded; options: the sampler's options, typed, or None when the sampler is the checkpoint's
    default (decided once it is loaded)."""

    max_new_tokens: int | None
    mc_samples: int
    greedy_check: bool
    batch_size: int
    seed: int
    load: dict[str, Any]
    options: dict[str, Any] | None


def check_model_args(
    pretrained: str | None = None,
    sampler: str | None = None,
    *,
    loaded: Loaded | None = None,
    max_new_tokens: Any = None,
    mc_samples: Any = 32,
    greedy_check: Any = True,
    batch_size: Any = 16,
    max_batch_size: Any = None,
    device: Any = None,
    dtype: Any = "fp32",
    seed: Any = 0,
    trust_remote_code: Any = False,
    device_map: Any = None,
    max_memory: Any = None,
    offload_folder: Any = None,
    **options: Any,
) -> ModelArguments:
    """Every check of the ar2mdm harness model's arguments (those of `ModelAdapter`) that needs no
    checkpoint: whole numbers, yes/no values (a refusal such as "no", "off" or "0" is never read as
    consent), dtype, device (or device_map, max_memory, offload_folder: `ar2mdm.common.placement`),
    and the sampler's options when a sampler is named. `ar2mdm lm-eval` runs
    it on --model_args before the harness starts; `ModelAdapter` before it loads anything.
    Raises UserError naming the model argument."""
    size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else batch_size
    checked = {
        "max_new_tokens": None if max_new_tokens is None else _int("max_new_tokens", max_new_tokens, 1),
        "mc_samples": _int("mc_samples", mc_samples, 1),
        "greedy_check": parse_bool(greedy_check, "model argument greedy_check"),
        "batch_size": _int("batch_size", size, 1),
        "seed": _int("seed", seed, 0),
    }
    typed = None if sampler is None else _sampler_options(sampler, options)
    load: dict[str, Any] = {}
    if loaded is None:
        if not pretrained:
            raise UserError("the ar2mdm harness model needs pretrained=CHECKPOINT in --model_args.")
        load = {
            "trust_remote_code": parse_bool(trust_remote_code, "model argument trust_remote_code"),
            "dtype": parse_dtype(dtype, option="model argument dtype"),
        }
        if device_map:  # spread over devices (accelerate): the map decides, not a default device
            placement_options(device_map, max_memory, offload_folder, device=_device(device) if device else None)
            load.update(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        else:
            placement_options(None, max_memory, offload_folder)  # refuses them without a map
            load["device"] = _device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return ModelArguments(**checked, load=load, options=typed)


@register_model(MODEL_NAME)
class ModelAdapter(TemplateLM):
    """An ar2mdm checkpoint (ARM or MDM) with one sampler, as a harness `LM` (module docstring)."""

    # Model arguments arrive as the harness parsed --model_args (strings, numbers, booleans): the
    # annotations admit what may arrive, `check_model_args` decides what is valid.
    def __init__(
        self,
        pretrained: str | Path | None = None,
        sampler: str | None = None,
        *,
        loaded: Loaded | None = None,
        max_new_tokens: int | float | str | None = None,
        mc_samples: int | float | str = 32,
        greedy_check: bool | int | str = True,
        batch_size: int | float | str | None = 16,
        max_batch_size: int | float | str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        seed: int | float | str = 0,
        trust_remote_code: bool | int | str = False,
        **options: Any,
    ) -> None:
        super().__init__()
        args = check_model_args(
            pretrained=pretrained,
            sampler=sampler,
            loaded=loaded,
            max_new_tokens=max_new_tokens,
            mc_samples=mc_samples,
            greedy_check=greedy_check,
            batch_size=batch_size,
            max_batch_size=max_batch_size,
            device=device,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **options,
        )
        self.max_new_tokens = args.max_new_tokens
        self.mc_samples = args.mc_samples
        self.greedy_check = args.greedy_check
        self.batch_size = args.batch_size
        self.seed = args.seed
        if loaded is None:
            loaded = load_any(str(pretrained), **args.load)
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
        self._device = device_of(self.model)
        self.sampler_name = sampler or ("ar" if self.ctx.kind == "ar" else "low-confidence")
        self.options = args.options if args.options is not None else _sampler_options(self.sampler_name, options)
        self.records: list[LogLikelihood] = []

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ModelAdapter:
        """The harness's constructor from `--model_args` text; batch_size and device given there win
        over the harness's own (`create_from_arg_obj`)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> ModelAdapter:
        """The harness's constructor from `--model_args` parsed; `additional_config` holds its
        --batch_size, --max_batch_size and --device (always passed, defaults 1 and cuda:0), which
        the same keys in `arg_dict` override instead of colliding with them."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def from_loaded(cls, loaded: Loaded, sampler: str | None = None, **kwargs: Any) -> ModelAdapter:
        """The adapter around a checkpoint already loaded (`load_any`)."""
        return cls(sampler=sampler, loaded=loaded, **kwargs)

    # --- tokens ---------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        if self.ctx.eos_id is None:
            raise UserError("the tokenizer has no end-of-sequence token, which the harness needs.")
        return self.ctx.eos_id

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return self.eot_token_id if bos is None else int(bos)

    @property
    def max_length(self) -> int:
        return self.ctx.context_length or 2048

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "ar2mdm")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Ids of `string`; special tokens (BOS) as the tokenizer adds them unless told otherwise,
        as `ar2mdm sample` and `ar2mdm eval` encode prompts."""
        special = True if add_special_tokens is None else add_special_tokens
        return list(self.tokenizer(string, add_special_tokens=special)["input_ids"])

    # --- loglikelihood ----------------------------------------------------------------------------

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        if self.ctx.kind == "ar":
            return ar_loglikelihoods(self.model, self.ctx, pairs, batch_size=self.batch_size)
        scored = mdm_loglikelihoods(
            self.model,
            self.ctx,
            pairs,
            samples=self.mc_samples,
            seed=self.seed,
            batch_size=self.batch_size,
            greedy=self.greedy_check,
        )
        self.records += scored
        return scored

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        out: list[tuple[float, bool]] = []
        step = self.batch_size
        for start in tqdm(range(0, len(requests), step), desc="loglikelihood", disable=disable_tqdm):
            chunk = requests[start : start + step]
            scored = self._score([(list(c), list(a)) for _, c, a in chunk])
            for (key, _, _), s in zip(chunk, scored, strict=True):
                answer = (s.logprob, bool(s.greedy))
                self.cache_hook.add_partial("loglikelihood", key, answer)
                out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1)
            ]
            total = sum(s.logprob for s in self._score([(list(c), list(a)) for c, a in windows]))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def spread(self) -> dict[str, float | int]:
        """Summary of the Monte-Carlo spread of every MDM loglikelihood estimate made so far:
        requests, samples per request, mean and largest standard error (nats)."""
        errs = [r.stderr for r in self.records if r.stderr == r.stderr]
        return {
            "requests": len(self.records),
            "mc_samples": self.mc_samples,
            "mean_stderr": sum(errs) / len(errs) if errs else 0.0,
            "max_stderr": max(errs) if errs else 0.0,
        }

    # --- generation -------------------------------------------------------------------------------

    def _options_for(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        options = dict(self.options)
        if "temperature" in sampler_options(self.sampler_name) and "temperature" not in options:
            if "temperature" in gen_kwargs:
                options["temperature"] = float(gen_kwargs["temperature"])
            elif gen_kwargs.get("do_sample") is False:
                options["temperature"] = 0.0
        return options

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for key, idx in groups.items():
            gen_kwargs = json.loads(key)
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            length = self.max_new_tokens or _int(
                "max_gen_toks", gen_kwargs.get("max_gen_toks", 256), 1, what="the task's generation_kwargs"
            )
            if self.ctx.context_length is not None and length >= self.ctx.context_length:
                raise UserError(
                    f"max_gen_toks {length} does not fit the model's context of {self.ctx.context_length} tokens."
                )
            sampler = build_sampler(self.sampler_name, **self._options_for(gen_kwargs))
            keep = None if self.ctx.context_length is None else self.ctx.context_length - length
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-keep if keep else None :] for i in chunk]
                canvas, am = make_canvas(
                    prompts,
                    length,
                    mask_id=self.ctx.placeholder,
                    pad_id=self.ctx.pad_id,
                    context_length=self.ctx.context_length,
                )
                result = run(
                    sampler,
                    self.model,
                    canvas.to(self._device),
                    am.to(self._device),
                    self.ctx,
                    seed=self.seed,
                    row_ids=chunk,
                )
                for row, i in enumerate(chunk):
                    text = self._text(result.generated(row), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out

    def _text(self, tokens: list[int], until: list[str]) -> str:
        if self.ctx.eos_id is not None and self.ctx.eos_id in tokens:
            tokens = tokens[: tokens.index(self.ctx.eos_id)]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text
