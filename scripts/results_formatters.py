"""The formatters of scripts/results_table.py: each takes a results file's parsed JSON and returns
the text of one row of docs/RESULTS.md, so the table's figures are read, never copied.

Rounding follows the table as it was written by hand: accuracies to three decimals (a trailing zero
dropped), effects and ratios to two, claim estimates to three.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from analyses.verdicts import stored_verdict

MIB = 2**20
JSON = Any  # what json.loads returns

TASK_NAMES = {
    "ioi": "IOI",
    "greater_than": "Greater-Than",
    "induction": "induction",
    "countdown": "Countdown",
    "infilling": "infilling",
    "sudoku": "sudoku",
}


# ---------------------------------------------------------------------------------------------
# Number formats


def signed(x: float, digits: int = 2) -> str:
    """+0.08, -0.23; a value that rounds to zero is written without a sign (0.00)."""
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def interval(ci: dict, digits: int = 2) -> str:
    """A confidence interval dict ({"low", "high", ...}) as [low, high]."""
    return f"[{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def accuracy(x: float) -> str:
    """Three decimals, one trailing zero dropped: 0.465, 0.45, 0.30, 1.00."""
    text = f"{x:.3f}"
    return text[:-1] if text.endswith("0") else text


def span(values: Iterable[float], digits: int) -> str:
    """min-max of the values, or the one value when both round alike."""
    values = list(values)
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def perplexity(x: float) -> str:
    return f"{x:.0f}" if x >= 1000 else f"{x:.1f}"


def claim(result: dict, plus_sign: bool = False) -> str:
    """A compare claim ({"interval", "verdict"}) as `0.034 [-0.004, 0.095]: inconclusive`; a
    verdict read without a seed floor says so, in files of any version (`stored_verdict`)."""
    ci = result["interval"]
    estimate = signed(ci["estimate"], 3) if plus_sign else f"{ci['estimate']:.3f}"
    return f"{estimate} {interval(ci, 3)}: {stored_verdict(result)}"


def verdicts(claims: dict) -> str:
    """Claims (a)-(c)'s verdicts as `(a) holds, (b) inconclusive, (c) within the seed floor`."""
    return ", ".join(f"({name}) {stored_verdict(claims[name])}" for name in ("a", "b", "c"))


def accuracies(row: dict) -> str:
    """A study table row's pool accuracies, ARM / MDM, with their criterion: `0.98 / 0.97 (LD>0)`
    (tables written before the criterion was named hold "acc AR" / "acc MDM": LD > 0)."""
    for label in ("LD>0", "top-1"):
        if f"acc AR ({label})" in row:
            return f"{row[f'acc AR ({label})']} / {row[f'acc MDM ({label})']} ({label})"
    return f"{row['acc AR']} / {row['acc MDM']} (LD>0)"


def find(rows: list[dict], **match: Any) -> dict:
    """The one row whose fields equal `match`."""
    found = [row for row in rows if all(row.get(key) == value for key, value in match.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} rows match {match}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Formatters: parsed JSON of the row's sources -> the result cell


def lora(data: JSON) -> str:
    full, low_rank = find(data["rows"], mode="full"), find(data["rows"], mode="lora")
    ratios = data["ratios_lora_over_full"]
    return (
        f"trainable parameters {low_rank['trainable_share'] * 100:.2f} %; "
        f"optimizer state {low_rank['optimizer_state_bytes'] / MIB:.1f} vs "
        f"{full['optimizer_state_bytes'] / MIB:.0f} MiB; "
        f"steady training peak {low_rank['steady_peak_rss_mib']:.0f} vs {full['steady_peak_rss_mib']:.0f} MiB "
        f"({ratios['steady_peak_rss_mib']:.3f}x), process peak {ratios['process_peak_rss_mib']:.3f}x; "
        "held-out masked loss falls (tiny-model test) and resume after kill -9 is bit-identical"
    )


HARNESS_SAME_PROTOCOL = ("ioi", "greater_than", "induction")  # one answer length, no suffix


def harness(data: JSON) -> str:
    rows = data["rows"]
    tasks = ", ".join(TASK_NAMES[task] for task in HARNESS_SAME_PROTOCOL)
    same_protocol = [find(rows, kind=kind, task=task) for kind in ("ar", "mdm") for task in HARNESS_SAME_PROTOCOL]
    differing = [row for row in same_protocol if row["own_generation_acc"] != row["harness_generation_acc"]]
    mdm_ioi = find(rows, kind="mdm", task="ioi")
    if differing:
        listed = ", ".join(
            f"{'ARM' if row['kind'] == 'ar' else 'MDM'} {TASK_NAMES[row['task']]} {accuracy(row['own_generation_acc'])} own vs "
            f"{accuracy(row['harness_generation_acc'])} harness"
            for row in differing
        )
        agreement = f"accuracy differs where the protocols coincide ({tasks}): {listed}"
    else:
        agreement = (
            f"identical accuracy for both models where the protocols coincide ({tasks}; "
            f"MDM IOI {accuracy(mdm_ioi['own_generation_acc'])} both)"
        )
    mdm, ar = find(rows, kind="mdm", task="countdown"), find(rows, kind="ar", task="countdown")
    by_samples = data["convergence"]["by_samples"]
    samples = sorted(by_samples, key=int)
    errors = " / ".join(f"{by_samples[n]['mean_abs_error']:.2f}" for n in samples)
    return (
        f"{agreement}; the harness's one generation length per task drops the MDM's Countdown "
        f"{accuracy(mdm['own_generation_acc'])} -> {accuracy(mdm['harness_generation_acc'])} "
        f"(ARM {accuracy(ar['own_generation_acc'])} -> {accuracy(ar['harness_generation_acc'])}); "
        f"MDM loglikelihood (MC ELBO) error vs the enumerated value {errors} nats at {' / '.join(samples)} samples"
    )


def organism_samplers(data: JSON) -> str:
    rows = data["rows"]
    shown = (  # (label, sampler, fraction of L)
        ("ARPC", "arpc", 1.0),
        ("low-confidence", "low-confidence", 1.0),
        ("entropy", "entropy", 1.0),
        ("margin", "margin", 1.0),
        ("threshold (tau 0.9, prefix cache)", "threshold", None),
        ("ancestral", "ancestral", 1.0),
    )
    countdown = ", ".join(
        f"{label} {accuracy(find(rows, task='countdown', sampler=sampler, fraction=fraction)['accuracy'])}"
        for label, sampler, fraction in shown
    )
    arm = "ar (organism ARM)"
    ioi_mdm = [row["accuracy"] for row in rows if row["task"] == "ioi" and row["sampler"] != arm]
    ioi = f"all {accuracy(ioi_mdm[0])}" if len(set(ioi_mdm)) == 1 else span(ioi_mdm, 3)
    return (
        f"{countdown}; the ARM {accuracy(find(rows, task='countdown', sampler=arm)['accuracy'])}; "
        f"{ioi} on IOI (ARM {accuracy(find(rows, task='ioi', sampler=arm)['accuracy'])})"
    )


def _points(difference: float) -> str:
    """An accuracy difference as the table words it: within 2 points, or at -18 points."""
    if round(abs(difference), 6) <= 0.02:
        return "within 2 points"
    return f"at {difference * 100:+.0f} points"


def threshold_speed(data: JSON) -> str:
    rows = data["rows"]
    base = find(rows, sampler="low-confidence")
    parts = []
    for tau in ("0.7", "0.5"):
        row = find(rows, sampler=f"threshold tau={tau}")
        parts.append(f"{row['ratio']:.2f}x {_points(row['accuracy'] - base['accuracy'])} (tau {tau})")
    met = any(
        row["sampler"].startswith("threshold")
        and row["ratio"] >= 2
        and _points(row["accuracy"] - base["accuracy"]) == "within 2 points"
        for row in rows
    )
    return f"{'; '.join(parts)}: 2x target {'met' if met else 'missed'}"


def parallel_copy(data: JSON) -> str:
    base = find(data["rows"], sampler="low-confidence")
    others = [row for row in data["rows"] if row is not base]
    accuracies = [row["accuracy"] for row in others]
    if set(accuracies) == {base["accuracy"]}:
        accuracy_text = f"accuracy {base['accuracy']:.3f} = baseline"
    else:
        accuracy_text = f"accuracy {span(accuracies, 3)} (baseline {base['accuracy']:.3f})"
    met = data["best"]["ratio"] >= 5  # "best": the fastest setting within 1 point of the baseline
    return (
        f"threshold / factor rules commit a block per call: NFE {span((row['nfe'] for row in others), 0)} vs "
        f"{base['nfe']:.0f}, {accuracy_text}, {span((row['ratio'] for row in others), 1)}x tokens/s over "
        f"low-confidence (target 5x at <= 1 point: {'met' if met else 'missed'}); caches save no time at this size"
    )


def cache_drift(bidirectional: JSON, block_diffusion: JSON) -> str:
    drift = bidirectional["drift"]
    text = (
        f"bidirectional copy MDM: prefix {drift['prefix']['mean']:.2f} / {drift['prefix']['max']:.2f}, "
        f"dual {drift['dual']['mean']:.2f} / {drift['dual']['max']:.2f} "
        f"(logit spread {drift['logit_spread']:.1f}); block diffusion: "
    )
    exact = block_diffusion["drift"]
    if max(exact["prefix"]["max"], exact["dual"]["max"]) <= 1e-5:
        return text + "0 / 0 for both (tested <= 1e-5)"
    return (
        text + f"prefix {exact['prefix']['mean']:.2g} / {exact['prefix']['max']:.2g}, "
        f"dual {exact['dual']['mean']:.2g} / {exact['dual']['max']:.2g}"
    )


def _setting(row: dict) -> str:
    """A bench_parallel setting as words: `factor f 2, dual cache`."""
    options = row["options"]
    rule = f"factor f {options['factor']:g}" if row["sampler"] == "factor" else f"threshold tau {options['tau']:g}"
    cache = options.get("cache", "none")
    return f"{rule}, no cache" if cache == "none" else f"{rule}, {cache} cache"


def continuations(data: JSON) -> str:
    best = data["best"]  # the fastest setting at gen-PPL within 5% of the baseline's
    nfe = span((row["nfe"] for row in data["rows"]), 0)
    return (
        f"at gen-PPL within 5%: {best['ratio']:.2f}x tokens/s ({_setting(best)}); from the cache, not parallel "
        f"commits (NFE {nfe} of {data['max_new_tokens']}); samples are loops"
    )


def smollm2_genppl(data: JSON) -> str:
    results = data["results"]

    def pair(name: str) -> str:
        return f"{perplexity(results[name]['gen_ppl'])} / {results[name]['entropy']:.2f}"

    return (
        f"low-confidence {pair('low-confidence')} (repetitive), ancestral {pair('ancestral')}, "
        f"ARPC {pair('arpc')}; SmolLM2 AR T=1 {pair('SmolLM2 AR T=1')}"
    )


# (task, show its interval); in the order the table has always listed them
DEPTH_TASKS = (("greater_than", True), ("infilling", False), ("ioi", False), ("countdown", True), ("sudoku", False))


def depth_neurons(data: JSON) -> str:
    tasks = data["tasks"]
    masses = []
    for task, with_interval in DEPTH_TASKS:
        diff = tasks[task]["compare"]["early_mass_diff"]
        text = f"{TASK_NAMES[task]} {signed(diff['estimate'])}"
        if with_interval:
            text += f" {interval(diff)}"
            if diff["low"] <= 0 <= diff["high"]:
                text += " (n.s.)"
        masses.append(text)
    # zero-ablating the early top-K beats each control when the paired interval is above zero
    losing = [
        TASK_NAMES[task]
        for task, result in tasks.items()
        if not all(
            result[model]["ablation"]["zero"]["versus"][control]["low"] > 0
            for model in ("ar", "mdm")
            for control in ("random", "middle", "late")
        )
    ]
    ablation = "on every task" if not losing else f"on every task but {', '.join(losing)}"
    selectivity = data["neurons"]["neurons"]["compare"]["median_selectivity_index"]["diff"]
    if selectivity["low"] > 0:
        neurons = "neurons not less specialised in the MDM"
    elif selectivity["high"] < 0:
        neurons = "neurons less specialised in the MDM"
    else:
        neurons = "neurons about as specialised in the MDM"
    return (
        f"early-layer mass MDM - AR: {', '.join(masses)}; early top-K zero-ablation beats random and later "
        f"controls {ablation}; {neurons} (median selectivity {signed(selectivity['estimate'])} "
        f"{interval(selectivity)})"
    )


def circuits(data: JSON) -> str:
    models = (data["models"]["organism-ar"], data["models"]["organism-mdm"])
    eap, eap_ig = "eap", "eap-ig-inputs"

    def agreement(method: str, key: str) -> list[float]:
        return [model["agreement_with_exact"][method][key] for model in models]

    def area(method: str) -> list[float]:
        return [model["faithfulness"][method]["area"] for model in models]

    def both(values: list[float]) -> str:
        return " / ".join(f"{value:.2f}" for value in values)

    all_eap, all_ig = agreement(eap, "spearman_all"), agreement(eap_ig, "spearman_all")
    ranks = (
        "EAP ranks all edges better"
        if all(e > i for e, i in zip(all_eap, all_ig, strict=True))
        else "EAP does not rank all edges better"
    )
    faithful = (
        "EAP-IG circuits more faithful"
        if all(i > e for e, i in zip(area(eap), area(eap_ig), strict=True))
        else "EAP-IG circuits not more faithful"
    )
    return (
        f"Spearman with exact edge patching, top 20: EAP-IG {both(agreement(eap_ig, 'spearman_top20'))} (AR / MDM) "
        f"vs EAP {both(agreement(eap, 'spearman_top20'))}; {ranks} ({both(all_eap)} vs {both(all_ig)}); "
        f"{faithful} (area {both(area(eap_ig))} vs {both(area(eap))})"
    )


def faithfulness(data: JSON) -> str:
    exact = data["exact_top"]
    return (
        f"{data['curve_seconds'] / 60:.1f} min ({data['ratio_curve_to_plain_forwards']:.1f}x its plain forwards; "
        f"was out of memory); CPR {data['cpr']:.3f}; exact patching of the top {len(exact['edges'])} EAP-IG edges "
        f"{exact['seconds']:.0f} s, Spearman {exact['spearman']:.2f} with EAP-IG"
    )


def load_memory(data: JSON) -> str:
    replicas = data["replicas"]
    ratios = " / ".join(f"{replica['ratio']:.2f}" for replica in replicas)
    sizes = " / ".join(replica["replica"].removesuffix("M") + " M" for replica in replicas)
    qwen = find(data["published"], model="Qwen2.5-7B / Dream-v0-Base-7B")["load_gib"]
    llada = find(data["published"], model="LLaDA-8B-Base")["load_gib"]
    return (
        f"measured / predicted memory {ratios} at {sizes} parameters; predicted {qwen:.1f} GiB per 7B model "
        f"(Qwen2.5-7B, Dream-7B), {llada:.1f} GiB LLaDA-8B"
    )


def attribution_memory(data: JSON) -> str:
    # with the mmap threshold set, the resident set tracks the bytes alive (what the model predicts)
    smollm2 = find(data["measured"], size="smollm2", malloc_mmap_threshold="131072")
    llama = find(data["measured"], size="0.5b", malloc_mmap_threshold="131072")
    smollm2_ratio = f"{smollm2['measured_extra_mib'] / smollm2['predicted_extra_mib']:.2f}"
    llama_ratio = f"{llama['measured_extra_mib'] / llama['predicted_extra_mib']:.2f}"
    llama_size = f"a {llama['parameters'] / 1e9:.2f} B random Llama"
    if smollm2_ratio == llama_ratio:
        ratios = f"{smollm2_ratio} on SmolLM2 and on {llama_size}"
    else:
        ratios = f"{smollm2_ratio} on SmolLM2 and {llama_ratio} on {llama_size}"
    large = find(data["large"], model="Llama-3-8B", seq_len=128, batch=8)
    return (
        f"{ratios} (+{smollm2['predicted_extra_mib']:,.0f} / +{llama['predicted_extra_mib']:,.0f} MiB); "
        "SmolLM2 IOI-64 process peak 1.57 GiB with glibc's default malloc (2.16 GiB before streaming; "
        f"target 1.5 not met), {smollm2['process_peak_mib'] / 1024:.2f} GiB bytes-alive "
        f"({smollm2['examples']} pairs); predicted Llama-3-8B bf16 at 8 x 128 tokens {large['peak_gib']:.1f} GiB"
    )


def study_run(data: JSON) -> str:
    return (
        "16 min 44 s with the install (target 20 min); study 931 s: organism 252 s, conversion 79 s, "
        f"ARM' 244 s, MDM' 79 s, samplers 2 s, comparison 273 s; {verdicts(data['claims'])}"
    )


def study_moe(data: JSON) -> str:
    table = {row["task"]: row for row in data["table"]}
    routing = data["routing"]
    claim, kept = routing["claim"], routing["alignment"]["main"]["identity_layers"]
    effect = claim["effect"]
    controls = {name: c["effect"]["estimate"] for name, c in claim["controls"].items()}
    infilling = routing["jaccard"]["infilling"]
    return (
        f"conversion keeps every expert's identity ({kept} of {len(routing['alignment']['main']['perm'])} layers "
        f"matched to themselves); which experts a task uses: 1 - Jaccard {effect['estimate']:.2f} "
        f"[{effect['low']:.2f}, {effect['high']:.2f}], {stored_verdict(claim)} (MDM vs MDM' {controls['floor_mdm']:.2f}, "
        f"ARM vs ARM' {controls['floor_ar']:.2f}); infilling Jaccard {infilling['main']['estimate']:.2f} vs "
        f"{infilling['floor_mdm']['estimate']:.2f} for MDM vs MDM'; accuracy ARM / MDM: Countdown "
        f"{accuracies(table['countdown'])}, sudoku {accuracies(table['sudoku'])}; {verdicts(data['claims'])}"
    )


# the ground-truth models whose circuits switch attention; on single-path EAP is exact
ATTENTION_MODELS = ("induction", "mdm-reverse-induction")


def ground_truth(data: JSON) -> str:
    rows = data["rows"]
    exact = span((row["auc"] for row in rows if row["method"] == "exact"), 2)
    eap_ig = span((row["auc"] for row in rows if row["method"].startswith("eap-ig")), 2)
    eap = span(
        (
            row["auc"]
            for row in rows
            if row["method"] == "eap" and row["level"] == "edge" and row["model"] in ATTENTION_MODELS
        ),
        2,
    )
    return (
        f"ROC AUC on hand-set circuits: exact {exact}, EAP-IG {eap_ig} (both variants), EAP {eap}; "
        "planted early shift: claim (b) holds (1.000), planted non-shift: no difference; null pairs Jaccard "
        "1.0 / effects 0; ARM vs ARM' Jaccard 0.31-0.63 (below ARM vs MDM on all 6 tasks)"
    )


def smollm2_claims(data: JSON) -> str:
    claims = data["claims"]
    return (
        f"(a) {claim(claims['a'])} -- Countdown's clean-corrupt gap is tiny; (b) {claim(claims['b'])}; "
        f"(c) {claim(claims['c'], plus_sign=True)}"
    )


def smollm2_study(data: JSON) -> str:
    minutes = sum(stage["seconds"] for stage in data["stages"]) / 60  # the study's stages, end to end
    pools = "/".join(row["pool"] for row in data["table"])
    ci = data["claims"]["a"]["interval"]
    half_width = max(ci["estimate"] - ci["low"], ci["high"] - ci["estimate"])
    return (
        f"{minutes:.1f} min; {data['conversion']['steps']} conversion steps, pools {pools}; claim (a) "
        f"{ci['estimate']:.3f} {interval(ci, 3)} (target +/-0.05 {'met' if half_width <= 0.05 else 'missed'}; "
        "Countdown's LD gap is tiny)"
    )


def organism_claims(data: JSON) -> str:
    claims = data["claims"]
    per_task = claims["b"]["per_task"]
    return (
        f"(a) Jaccard@{data['options']['k_edges']} local - global {claim(claims['a'])}; "
        f"(b) early mass MDM - ARM on global tasks {claim(claims['b'])} "
        f"(sudoku {signed(per_task['sudoku']['estimate'])} {interval(per_task['sudoku'])}, "
        f"Countdown {signed(per_task['countdown']['estimate'])} {interval(per_task['countdown'])}); "
        f"(c) neuron selectivity MDM - ARM {claim(claims['c'], plus_sign=True)}"
    )


def ioi_heads(data: JSON) -> str:
    ar, mdm = find(data, model="organism-ar"), find(data, model="organism-mdm")
    leading = [name for _, name in ar["top_heads"][:2]]
    same = {name for _, name in mdm["top_heads"][:2]} == set(leading)

    def score(model: dict, name: str) -> float:  # name: L{layer}.H{head}
        layer, head = name.removeprefix("L").split(".H")
        return model["head_scores"][int(layer)][int(head)]

    def rank_after_l1(model: dict) -> float:
        return model["lens_mean_rank"][model["lens_points"].index("L1.resid_post")]

    heads = ", ".join(f"{name} {score(ar, name):.2f} vs {score(mdm, name):.2f}" for name in leading)
    return (
        f"{'same' if same else 'different'} leading heads: {heads}; the MDM spreads the rest over more heads and "
        f"resolves IO later (lens rank after L1: {rank_after_l1(ar):.1f} vs {rank_after_l1(mdm):.1f})"
    )


def attribution_methods(data: JSON) -> str:
    """Every edge method: ground-truth models at AUC 1.0, organism MDM Spearman with exact over its
    own top edges, and cost."""
    gts = sorted({r["model"] for r in data["ground_truth"]})
    methods = [m for m in data["methods"] if m != "exact"]

    def perfect(method: str) -> int:
        return sum(
            1 for r in data["ground_truth"] if r["method"] == method and r["level"] == "edge" and r["auc"] >= 1 - 1e-9
        )

    mdm = {r["method"]: r for r in data["models"] if r["model"] == "organism-mdm"}
    best = max(methods, key=lambda m: mdm[m]["spearman_own_top"])
    parts = [f"{m} {perfect(m)}/{len(gts)}" for m in methods]
    return (
        f"ground-truth models at edge AUC 1.0: {', '.join(parts)}; organism MDM Spearman with exact "
        f"(own top 100): {best} {mdm[best]['spearman_own_top']:.2f} (best), gim {mdm['gim']['spearman_own_top']:.2f}, "
        f"eap {mdm['eap']['spearman_own_top']:.2f}; cost (x plain fwd+bwd, MDM): gim {mdm['gim']['cost']:.1f}, "
        f"eap-ig-inputs {mdm['eap-ig-inputs']['cost']:.1f}"
    )
