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
    sampler            one of `sampling.SAMPLERS` [default: ar for an ARM, low-confidence for an MDM];
                       every option of that sampler (steps, block_length, temperature, tau, cache,
                       factor, refresh, stop_at_eos, top_k, top_p, ...) is a model argument too
    max_new_tokens     generation length for every request [default: the request's max_gen_toks]
    mc_samples         Monte-Carlo ELBO samples per loglikelihood request of an MDM [default: 32;
                       LLaDA reports with 128]
    greedy_check       also decide `is_greedy` for MDM requests (a low-confidence fill) [default: true]
    batch_size, device, dtype (fp32 | bf16 | fp16), seed, trust_remote_code

Requests:
- `generate_until`: each context becomes a canvas (prompt, then max_gen_toks positions to
  generate) run through the sampler (`sampling.run`); the text is cut at the first EOS and at the
  first stop string. The request's `temperature` (or do_sample false -> 0) is used unless
  `temperature` is a model argument. The prompt is cut from the left to fit the model's context.
- `loglikelihood`: exact for an ARM; for an MDM the Monte-Carlo ELBO (`analyses.likelihood`). The
  spread of every MDM estimate is kept: `ModelAdapter.spread()` summarises it (mean and largest
  standard error), and `ar2mdm eval --lm-eval` writes it next to the harness's results.
- `loglikelihood_rolling`: the harness's disjoint rolling windows (`lm_eval.utils`), each scored as
  one loglikelihood request.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from analyses.likelihood import LogLikelihood, ar_loglikelihoods, mdm_loglikelihoods
from common.errors import UserError
from common.modeling import parse_device, parse_dtype
from common.outputs import atomic_write_text
from conversion.checkpoints import Loaded, load_any
from sampling import SAMPLERS, ModelContext, build_sampler, make_canvas, run, sampler_options

MODEL_NAME = "ar2mdm"
_OWN = ("pretrained", "sampler", "max_new_tokens", "mc_samples", "greedy_check", "seed", "dtype", "trust_remote_code")


def _int(name: str, value: Any, least: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"model argument {name}={value!r} must be an integer.") from None
    if number < least:
        raise UserError(f"model argument {name}={value!r} must be >= {least}.")
    return number


@register_model(MODEL_NAME)
class ModelAdapter(TemplateLM):
    """An ar2mdm checkpoint (ARM or MDM) with one sampler, as a harness `LM` (module docstring)."""

    def __init__(
        self,
        pretrained: str | None = None,
        sampler: str | None = None,
        *,
        loaded: Loaded | None = None,
        max_new_tokens: int | None = None,
        mc_samples: int = 32,
        greedy_check: bool = True,
        batch_size: int | str | None = 16,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str = "fp32",
        seed: int = 0,
        trust_remote_code: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        if loaded is None:
            if not pretrained:
                raise UserError("the ar2mdm harness model needs pretrained=CHECKPOINT in --model_args.")
            where = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if where.startswith("cuda") and not torch.cuda.is_available():
                # the harness's CLI passes --device cuda:0 unless told otherwise (as lm-eval's HF model does, use the CPU)
                logging.getLogger(__name__).warning("device %s asked for but torch sees no GPU: using the CPU", where)
                where = "cpu"
            loaded = load_any(
                str(pretrained),
                dtype=parse_dtype(dtype),
                device=parse_device(where),
                trust_remote_code=bool(trust_remote_code),
            )
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
        self._device = next(self.model.parameters()).device
        self.sampler_name = sampler or ("ar" if self.ctx.kind == "ar" else "low-confidence")
        if self.sampler_name not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler_name!r}; choose from {', '.join(SAMPLERS)}.")
        if SAMPLERS.get(self.sampler_name).needs_scorer:
            raise UserError(f"sampler {self.sampler_name!r} needs an AR scorer, which the harness model does not load.")
        accepted = set(sampler_options(self.sampler_name))
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise UserError(
                f"unknown model argument(s) {unknown}: the ar2mdm model takes {', '.join(_OWN)}, batch_size, device "
                f"and the options of sampler {self.sampler_name!r}: {', '.join(sorted(accepted)) or 'none'}."
            )
        self.options = {k: v for k, v in options.items() if v is not None}
        build_sampler(self.sampler_name, **self.options)  # refuse bad option values now, not mid-run
        self.max_new_tokens = None if max_new_tokens is None else _int("max_new_tokens", max_new_tokens, 1)
        self.mc_samples = _int("mc_samples", mc_samples, 1)
        self.greedy_check = bool(greedy_check)
        size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else batch_size
        self.batch_size = _int("batch_size", size, 1)
        self.seed = int(seed)
        self.records: list[LogLikelihood] = []

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
            length = self.max_new_tokens or _int("max_gen_toks", gen_kwargs.get("max_gen_toks", 256), 1)
            if self.ctx.context_length is not None and length >= self.ctx.context_length:
                raise UserError(
                    f"max_gen_toks {length} does not fit the model's context of {self.ctx.context_length} tokens."
                )
            sampler = build_sampler(self.sampler_name, **self._options_for(gen_kwargs))
            keep = None if self.ctx.context_length is None else self.ctx.context_length - length
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-keep if keep else None :] for i in chunk]
                canvas, am = make_canvas(prompts, length, mask_id=self.ctx.placeholder, pad_id=self.ctx.pad_id)
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


# --- running the harness -----------------------------------------------------------------------------


def evaluate(
    loaded: Loaded,
    tasks: list[str],
    folder: str | Path,
    *,
    sampler: str | None = None,
    options: dict[str, Any] | None = None,
    n: int = 100,
    seed: int = 0,
    mc_samples: int = 32,
    batch_size: int = 16,
    num_fewshot: int = 0,
    model_name: str = "",
) -> dict[str, Any]:
    """Run `tasks` through lm-evaluation-harness on `loaded` and write `folder/results.json`.

    A task named like an ar2mdm task (a built-in suite, a .jsonl user task file) is exported first
    (`analyses.harness_tasks.export_tasks`, n examples, into `folder/tasks`: both its forms run);
    any other name is the harness's own task (which needs its dataset: no hub is reachable here).
    `model_name` is what the report calls the checkpoint (default: its metadata's source).
    Returns {"results": {lm-eval task: {metric: value}}, "ar2mdm": {model, sampler, options,
    exported, loglikelihood_spread}, "n-samples": ...}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from analyses.harness_tasks import export_tasks
    from tasks import TASKS

    out = Path(folder)
    ours = [t for t in tasks if t in TASKS or t.endswith(".jsonl")]
    exported = export_tasks(loaded, ours, n, out / "tasks", seed=seed) if ours else {}
    names = [x for t in tasks for x in (exported.get(Path(t).stem if t.endswith(".jsonl") else t) or [t])]
    lm = ModelAdapter.from_loaded(
        loaded, sampler, mc_samples=mc_samples, batch_size=batch_size, seed=seed, **(options or {})
    )
    ours = {x for v in exported.values() for x in v}
    # indexing the harness's ~15k built-in task files takes half a minute: only when one is asked for
    manager = TaskManager(
        include_path=str(out / "tasks") if exported else None, include_defaults=any(x not in ours for x in names)
    )
    missing = [x for x in names if x not in manager.all_tasks]
    if missing:
        raise UserError(
            f"unknown task(s) {missing}: neither ar2mdm tasks ({', '.join(TASKS)}, or a .jsonl file) nor tasks "
            "lm-evaluation-harness knows (`ar2mdm lm-eval ls tasks` lists them)."
        )
    res = lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=manager, num_fewshot=num_fewshot, log_samples=False, random_seed=seed
    )
    report = {
        "results": {t: dict(v) for t, v in res["results"].items()},
        "n-samples": res.get("n-samples", {}),
        "ar2mdm": {
            "model": model_name or loaded.meta.source,
            "kind": loaded.meta.kind,
            "sampler": lm.sampler_name,
            "options": lm.options,
            "exported": exported,
            "loglikelihood_spread": lm.spread(),
        },
    }
    atomic_write_text(out / "results.json", json.dumps(report, indent=1, default=str))
    return report


def results_table(report: dict[str, Any]) -> str:
    """A markdown table of a report from `evaluate`: task, metric, value, stderr."""
    lines = ["| task | metric | value | stderr |", "|---|---|---|---|"]
    for task, metrics in report["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric = key.split(",", 1)[0]
            err = metrics.get(key.replace(metric, metric + "_stderr", 1))
            err_text = f"{err:.4f}" if isinstance(err, int | float) else "-"
            lines.append(f"| {task} | {metric} | {value:.4f} | {err_text} |")
    spread = report["ar2mdm"]["loglikelihood_spread"]
    if spread["requests"]:
        lines.append("")
        lines.append(
            f"MDM loglikelihood: Monte-Carlo ELBO, {spread['mc_samples']} samples per request over "
            f"{spread['requests']} requests; standard error mean {spread['mean_stderr']:.4f}, "
            f"largest {spread['max_stderr']:.4f} nats."
        )
    return "\n".join(lines) + "\n"
