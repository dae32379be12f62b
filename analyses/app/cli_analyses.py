"""`ar2mdm compare` and `ar2mdm compare-series`: ARM vs MDM (one, or several of one ARM)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from analyses.app.cli_base import (
    BACKEND_HELP,
    METHOD_HELP,
    TASK_HELP,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    KvReceiversOption,
    MaxMemoryOption,
    OffloadFolderOption,
    TrustOption,
    app,
    console,
    errors,
    floats,
    names_option,
    plain,
    probe_options,
    refuse_earlier_results,
    reserve_for_attribution,
)
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import task_names

POOL_CRITERION_HELP = (
    "What 'correct' means for the common-correct pool: ld (logit difference answer - counterfactual > 0, a forced "
    "choice between the two; as before) | top1 (the answer is the model's most likely token). Both accuracies are "
    "reported either way."
)


@app.command()
def compare(
    ar: Annotated[str, typer.Option(help="The ARM: smollm2 | organism | hub id org/name[@revision] (Qwen/Qwen2.5-7B, gpt2, ...) | HF folder | .gguf.")],
    mdm: Annotated[str, typer.Option(help="The MDM, same architecture and vocabulary as --ar: a folder written by `ar2mdm convert`, a published MDM as downloaded (Dream, DiffuLLaMA, DiffuGPT, A2D, SDAR, Fast-dLLM v2; docs/FORMATS.md), FAMILY:PATH, a Dream/LLaDA .gguf, or any of these by hub id org/name[@revision] (dream:Dream-org/Dream-v0-Base-7B).")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.html, summary.md and graphs/.")],
    tasks: Annotated[str, typer.Option(help=f"Comma-separated: {TASK_HELP}.")] = ",".join(task_names()),
    pool_size: Annotated[int, typer.Option(help="At most this many common-correct examples per task.")] = 500,
    draw: Annotated[int | None, typer.Option(help="Candidate examples drawn per task before keeping those both models solve. [default: 2 x pool size]")] = None,
    k_edges: Annotated[int | None, typer.Option(help="K of the top-K edge overlap, at most the graph's edges. [default: min(1000, edges / 10)]")] = None,
    k_nodes: Annotated[int | None, typer.Option(help="Top-K nodes for the layer distribution and ablations, at most the heads + MLPs. [default: a fifth of them]")] = None,
    steps: Annotated[int, typer.Option(help="EAP-IG interpolation steps m.")] = 5,
    node_scores: Annotated[str, typer.Option(help="Node scores for depth: eap-ig (sum of outgoing edges) | patching (exact, one pass per node).")] = "eap-ig",
    batch_size: Annotated[int, typer.Option(help="Examples per forward/backward pass.")] = 16,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for every interval.")] = 1000,
    n_random: Annotated[int, typer.Option(help="Random control draws per ablation.")] = 5,
    faithfulness: Annotated[bool, typer.Option("--faithfulness/--no-faithfulness", help="Faithfulness curves of each model's circuits.")] = True,
    ablations: Annotated[bool, typer.Option("--ablations/--no-ablations", help="Targeted ablation of early top-K nodes vs controls.")] = True,
    neurons: Annotated[bool, typer.Option("--neurons/--no-neurons", help="Neuron and head specialisation profiles.")] = True,
    causal: Annotated[bool, typer.Option("--causal/--no-causal", help="Causal checks of the most selective units.")] = True,
    denoising: Annotated[str, typer.Option(help="MDM denoising trajectory: shares t of the answer still masked ('' = off).")] = "1,0.75,0.5,0.25,0",
    all_examples: Annotated[bool, typer.Option("--all-examples", help="Analyse every aligned example, not only those both models solve.")] = False,
    pool_criterion: Annotated[str, typer.Option(help=POOL_CRITERION_HELP)] = "ld",
    track: Annotated[Path | None, typer.Option(help="A conversion run folder with snapshots/ (convert --snapshot-every N): follow Jaccard and early mass over its steps.")] = None,
    track_tasks: Annotated[str, typer.Option(help="Tasks followed over the snapshots.")] = "ioi,countdown",
    seed: Annotated[int, typer.Option(help="Seed of examples and bootstraps.")] = 0,
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "eap-ig-inputs",
    methods: Annotated[str, typer.Option(help="Comma-separated methods (instead of --method): the comparison runs under each (METHODS/<method>/ reports); a claim whose verdict changes between two ground-truth-validated methods is marked method-dependent in the main report (the first method's).")] = "",
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "torch",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the report of an earlier `ar2mdm compare` in --out.")] = False,
    ar_seed_twin: Annotated[str | None, typer.Option(help="Seed floor: an ARM trained like --ar with another seed. Every claim must clear ARM vs ARM'.")] = None,
    mdm_seed_twin: Annotated[str | None, typer.Option(help="Seed floor: an MDM converted like --mdm with another seed.")] = None,
    null_pair: Annotated[bool, typer.Option("--null-pair/--no-null-pair", help="Attribute each model twice and report it against itself (must read 'no difference').")] = True,
    dtype: DtypeOption = "fp32",
    device: DeviceOption = "cpu",
    kv_receivers: KvReceiversOption = "grouped",
    trust_remote_code: TrustOption = False,
    device_map: DeviceMapOption = "",
    max_memory: MaxMemoryOption = "",
    offload_folder: OffloadFolderOption = "",
) -> None:  # fmt: skip
    """ARM vs MDM on a common-correct pool: circuits (EAP-IG), depth, units; the reference study's claims tested
    against a null pair (each model vs itself) and, with --ar-seed-twin / --mdm-seed-twin, a seed floor."""
    from analyses.compare import CompareOptions, markdown_summary, snapshots_of, write_report
    from analyses.compare import track as run_track
    from analyses.compare.pool import check_criterion
    from analyses.compare.run import compare_methods
    from ar2mdm.common.outputs import claim_output
    from probe import ProbedModel

    with errors(f"nothing was written to {out}.") as stack:
        opts = CompareOptions(
            tasks=tuple(tasks.split(",")),
            pool_size=pool_size,
            pool_criterion=check_criterion(pool_criterion),
            draw=draw,
            k_edges=k_edges,
            k_nodes=k_nodes,
            steps=steps,
            method=method,
            node_scores=node_scores,
            batch_size=batch_size,
            n_boot=n_boot,
            n_random=n_random,
            seed=seed,
            faithfulness=faithfulness,
            ablations=ablations,
            neurons=neurons,
            causal=causal,
            denoising=floats(denoising, "--denoising"),
            common_correct=not all_examples,
            null_pair=null_pair,
        ).checked()
        chosen = names_option(methods, "--methods") or [method]
        for m in chosen:  # every method checked before any model is loaded
            replace(opts, method=m).checked()
        snapshots = snapshots_of(track) if track is not None else None
        loading = probe_options(dtype, device, trust_remote_code, kv_receivers, device_map, max_memory, offload_folder)
        if device_map == "auto" and not max_memory:  # leave each GPU the attribution's predicted share
            loading.update(reserve_for_attribution([ar, mdm], batch_size, loading["dtype"], trust_remote_code))
        claim = stack.enter_context(claim_output(out, "compare"))
        refuse_earlier_results(claim, overwrite)
        pm_ar = ProbedModel.from_checkpoint(ar, backend=backend, expect="ar", role="compare --ar", **loading)
        pm_mdm = ProbedModel.from_checkpoint(mdm, backend=backend, expect="mdm", role="compare --mdm", **loading)
        given = {"ar": ar_seed_twin, "mdm": mdm_seed_twin}
        twins = {
            r: ProbedModel.from_checkpoint(src, backend=backend, expect=r, role=f"compare --{r}-seed-twin", **loading)
            for r, src in given.items()
            if src is not None
        }
        labels = {"ar": ar, "mdm": mdm, **{f"{r}_twin": src for r, src in given.items() if src is not None}}
        result, results = compare_methods(pm_ar, pm_mdm, opts, chosen, labels=labels, twins=twins, log=plain)
        if snapshots is not None:
            result.data["track"] = run_track(
                pm_ar,
                snapshots,
                tasks=[t for t in track_tasks.split(",") if t.strip()],
                pool_size=min(pool_size, 100),
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                method=method,
                load=lambda p: ProbedModel.from_checkpoint(p, backend=backend, **loading),
                log=plain,
            )
        claim.clear()
        claim.mark()
        write_report(result, out, title=f"{ar} vs {mdm}")
        for m, r in results.items() if len(results) > 1 else ():
            write_report(r, out / "methods" / m, title=f"{ar} vs {mdm} ({m})")
    print(markdown_summary(result.data))
    console.print(f"report: {out}/report.html, {out}/report.json")


def refuse_repeated_checkpoints(sources: list[str], option: str) -> None:
    """Raise UserError when two of `sources` are one checkpoint (`ar2mdm.common.metadata.source_key`:
    "runs/base" and "./runs/base" are the same folder): a series would compare a model with itself."""
    from ar2mdm.common.metadata import source_key

    seen: dict[str, str] = {}
    for source in sources:
        key = source_key(source)
        if key in seen:
            what = (
                f"{option} {source} is given twice"
                if seen[key] == source
                else f"{option} {seen[key]} and {option} {source} are the same checkpoint ({key})"
            )
            raise UserError(f"{what}; a series compares different MDMs: give each one once.")
        seen[key] = source


@app.command("compare-series")
def compare_series(
    ar: Annotated[str, typer.Option(help="The ARM: smollm2 | organism | hub id org/name[@revision] | HF folder | .gguf.")],
    mdm: Annotated[list[str], typer.Option(help="An MDM of --ar's architecture (e.g. converted at one block size); repeat, at least twice.")],
    out: Annotated[Path, typer.Option(help="Folder for series.json, series.md, series.html and one compare report per MDM.")],
    tasks: Annotated[str, typer.Option(help=f"Comma-separated: {TASK_HELP}.")] = ",".join(task_names()),
    pool_size: Annotated[int, typer.Option(help="At most this many common-correct examples per task and MDM.")] = 500,
    k_edges: Annotated[int | None, typer.Option(help="K of the top-K edge overlap, at most the graph's edges. [default: min(1000, edges / 10)]")] = None,
    steps: Annotated[int, typer.Option(help="EAP-IG interpolation steps m.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Examples per forward/backward pass.")] = 16,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for every interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of examples and bootstraps.")] = 0,
    extras: Annotated[bool, typer.Option("--extras/--no-extras", help="Also faithfulness, ablations, units and denoising in each MDM's report (slow).")] = False,
    null_pair: Annotated[bool, typer.Option("--null-pair/--no-null-pair", help="Attribute each model twice and report it against itself.")] = True,
    all_examples: Annotated[bool, typer.Option("--all-examples", help="Analyse every aligned example, not only those both models solve.")] = False,
    pool_criterion: Annotated[str, typer.Option(help=POOL_CRITERION_HELP)] = "ld",
    given_order: Annotated[bool, typer.Option("--given-order", help="Keep the --mdm order (default: by block size, full attention last).")] = False,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "torch",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier `ar2mdm compare-series` in --out.")] = False,
    dtype: DtypeOption = "fp32",
    device: DeviceOption = "cpu",
    kv_receivers: KvReceiversOption = "grouped",
    trust_remote_code: TrustOption = False,
    device_map: DeviceMapOption = "",
    max_memory: MaxMemoryOption = "",
    offload_folder: OffloadFolderOption = "",
) -> None:  # fmt: skip
    """One ARM against several MDMs (e.g. block sizes 1, 4, 16, full): Jaccard with the ARM, early-layer
    mass and MDM accuracy per task and MDM, with each pair's own compare report."""
    from analyses.compare import CompareOptions, write_series
    from analyses.compare import compare_series as run_series
    from analyses.compare.pool import check_criterion
    from analyses.compare.series import series_markdown
    from ar2mdm.common.outputs import claim_output
    from probe import ProbedModel

    with errors(f"nothing was written to {out}.") as stack:
        if len(mdm) < 2:
            raise UserError(f"give two or more different MDMs (--mdm A --mdm B ...), got {mdm}.")
        refuse_repeated_checkpoints(mdm, "--mdm")
        opts = CompareOptions(
            tasks=tuple(tasks.split(",")),
            pool_size=pool_size,
            pool_criterion=check_criterion(pool_criterion),
            k_edges=k_edges,
            steps=steps,
            batch_size=batch_size,
            n_boot=n_boot,
            seed=seed,
            **{part: extras for part in ("faithfulness", "ablations", "neurons", "causal")},
            denoising=CompareOptions.denoising if extras else (),
            common_correct=not all_examples,
            null_pair=null_pair,
        ).checked()
        loading = probe_options(dtype, device, trust_remote_code, kv_receivers, device_map, max_memory, offload_folder)
        claim = stack.enter_context(claim_output(out, "compare-series"))
        refuse_earlier_results(claim, overwrite)
        pm_ar = ProbedModel.from_checkpoint(ar, backend=backend, expect="ar", role="compare-series --ar", **loading)
        pms = {
            p: ProbedModel.from_checkpoint(p, backend=backend, expect="mdm", role="compare-series --mdm", **loading)
            for p in mdm
        }
        result = run_series(pm_ar, pms, opts, order="given" if given_order else "block_size", log=plain)
        claim.clear()
        claim.mark()
        write_series(result, out)
    print(series_markdown(result.data))
    console.print(f"series: {out}/series.html, {out}/series.md, {out}/series.json")
