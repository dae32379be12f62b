"""analyses.compare: the statistics against hand computations, the pool against its definition,
and a whole comparison on tiny models checked against independent recomputation from the saved
graphs (analyses.graph's own Jaccard and layer distribution), plus the CLI's errors.

Models: test_depth's random 3-layer Llama as the ARM and the same weights read as an MDM (answer
masked in place): an ARM and an MDM of one architecture, as the comparison needs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer
from test_depth import MASK_ID, hf_model, probed3
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.circuits import attribute
from analyses.compare import (
    CompareOptions,
    check_pair,
    claims,
    common_pool,
    compare,
    node_examples,
    revealed,
    write_report,
)
from analyses.compare.controls import PairStats
from analyses.depth import baseline_logit_diffs, layer_distribution
from analyses.graph import Graph, jaccard
from analyses.statistics import Interval, floor_bound, jaccard_bootstrap, jaccard_rows, pooled, verdict
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.tasks import TASKS as TASK_REGISTRY
from ar2mdm.tasks import get_task, render
from probe import ProbedModel

TASKS = ("ioi", "greater_than", "countdown", "sudoku")


def quick_options(**overrides) -> CompareOptions:
    """CompareOptions for a seconds-long comparison of the tiny models: a pool of 8, m = 2, 50
    bootstrap resamples, K = 20 edges and 3 nodes, circuits and depth only (no faithfulness,
    ablations, units, denoising or null pair); `overrides` replace any of them."""
    quick = dict(
        tasks=TASKS,
        pool_size=8,
        steps=2,
        n_boot=50,
        k_edges=20,
        k_nodes=3,
        batch_size=8,
        faithfulness=False,
        ablations=False,
        neurons=False,
        causal=False,
        denoising=(),
        null_pair=False,
    )
    return CompareOptions(**{**quick, **overrides})


def task_examples(n: int = 12) -> dict:
    tok = tiny_tokenizer()
    return {t: get_task(t, tok).generate_aligned(n, tok, seed=1, modes=("ar", "mdm"), mask_id=MASK_ID) for t in TASKS}


# --- statistics -------------------------------------------------------------------------------------


def test_jaccard_rows_by_hand() -> None:
    a = torch.tensor([[3.0, -2.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, -5.0, 4.0]])
    assert float(jaccard_rows(a, b, 2)[0]) == 0.0  # {0, 1} vs {2, 3}
    assert float(jaccard_rows(a, b, 3)[0]) == 0.5  # {0, 1, 2} vs {1, 2, 3}: 2 shared of 4
    assert float(jaccard_rows(a, a, 2)[0]) == 1.0


def test_jaccard_bootstrap_estimate_is_the_graph_jaccard_of_the_means() -> None:
    shape = probed3().shape
    n_edges = len(Graph(shape).edges)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, n_edges, generator=gen)
    b = a + 0.8 * torch.randn(30, n_edges, generator=gen)
    for k in (5, 40):
        interval, reps = jaccard_bootstrap(a, b, k, n_boot=200, seed=0)
        expected = jaccard(Graph(shape, a.double().mean(0)), Graph(shape, b.double().mean(0)), k)
        assert interval.estimate == pytest.approx(expected)
        assert reps.shape == (200,) and interval.low <= interval.high
        assert 0.0 <= float(reps.min()) and float(reps.max()) <= 1.0
    with pytest.raises(UserError, match="same examples"):
        jaccard_bootstrap(a, b[:10], 5, n_boot=10, seed=0)
    _, reps = jaccard_bootstrap(a, b, n_edges, n_boot=10, seed=0)  # K = every edge: accepted
    assert bool((reps == 1.0).all())
    with pytest.raises(UserError, match=f"largest allowed value is {n_edges}"):
        jaccard_bootstrap(a, b, n_edges + 1, n_boot=10, seed=0)


def test_top_ks_take_the_graph_size_and_refuse_more() -> None:
    """compare's K: the graph's own edge and node counts are accepted, one more is refused (not
    silently cut to the graph, where every edge is selected and Jaccard reads 1.00)."""
    from analyses.compare.run import top_ks

    graph = Graph(probed3().shape)
    n_edges, n_nodes = len(graph.edges), len(graph.senders) - 1
    assert top_ks(CompareOptions(k_edges=n_edges, k_nodes=n_nodes).checked(), graph) == (n_edges, n_nodes)
    assert top_ks(CompareOptions().checked(), graph)[0] <= n_edges
    with pytest.raises(UserError, match=rf"k_edges \(--k-edges\) is {n_edges + 1}"):
        top_ks(CompareOptions(k_edges=n_edges + 1).checked(), graph)
    with pytest.raises(UserError, match=f"largest allowed value is {n_nodes}"):
        top_ks(CompareOptions(k_nodes=n_nodes + 1).checked(), graph)


def test_pooled_adds_replicates_term_by_term() -> None:
    reps = [torch.arange(101, dtype=torch.float64), torch.zeros(101, dtype=torch.float64) + 10]
    out = pooled([50.0, 10.0], reps, [0.5, -1.0])
    assert out.estimate == 15.0
    # replicate j = 0.5 j - 10 for j = 0..100: its 2.5 / 97.5 percentiles
    assert out.low == pytest.approx(0.5 * 2.5 - 10) and out.high == pytest.approx(0.5 * 97.5 - 10)


def test_verdicts() -> None:
    assert verdict(Interval(0.2, 0.1, 0.3), 1) == "holds"
    assert verdict(Interval(-0.2, -0.3, -0.1), 1) == "reversed"
    assert verdict(Interval(-0.2, -0.3, -0.1), -1) == "holds"
    assert verdict(Interval(0.0, -0.1, 0.1), 1) == "inconclusive"
    assert verdict(Interval(0.1, float("nan"), float("nan")), 1) == "untested"
    assert verdict(None, 1) == "untested"


def test_node_examples_sum_outgoing_edges_per_example() -> None:
    pm = probed3(kind="mdm")
    items = [render(ex, pm.tokenizer, "mdm", shift=True, mask_id=MASK_ID) for ex in task_examples(6)["ioi"]]
    g = attribute(pm, items, method="eap-ig-inputs", steps=2, per_example=True)
    per = node_examples(g)
    assert set(per) == set(g.senders) - {"embed"}
    for name, values in per.items():
        assert values.shape == (6,)
        assert float(values.mean()) == pytest.approx(g.node_scores[name], abs=1e-6)
    with pytest.raises(UserError, match="per_example"):
        node_examples(attribute(pm, items, method="eap", steps=2))


def test_revealed_writes_the_answer_after_its_first_token() -> None:
    tok = tiny_tokenizer()
    ex = task_examples(4)["countdown"][0]
    item = render(ex, tok, "mdm", shift=True, mask_id=MASK_ID)
    n = len(item.answer_positions)
    assert n >= 3
    assert revealed(item, 1.0, random.Random(0)) is item
    full = revealed(item, 0.0, random.Random(0))
    pos = item.answer_positions
    assert int(full.input_ids[pos[0]]) == MASK_ID  # the token read stays masked
    assert torch.equal(full.input_ids[pos[1:]], item.answer_ids[1:])
    assert torch.equal(full.corrupted_ids[pos[1:]], item.answer_ids[1:])
    half = revealed(item, 0.5, random.Random(0))
    shown = int((half.input_ids[pos[1:]] != MASK_ID).sum())
    assert shown == round(0.5 * (n - 1))
    assert torch.equal(half.input_ids[: pos[0]], item.input_ids[: pos[0]])  # the prompt is untouched
    with pytest.raises(UserError, match="MDM"):
        revealed(render(ex, tok, "ar"), 0.5, random.Random(0))


# --- the pool ---------------------------------------------------------------------------------------


def test_common_pool_keeps_exactly_the_examples_both_models_solve() -> None:
    ar, mdm = probed3(), probed3(kind="mdm")
    examples = task_examples(16)["ioi"]
    pool = common_pool(ar, mdm, "ioi", examples, pool_size=100)
    r_ar = [render(ex, ar.tokenizer, "ar") for ex in examples]
    r_mdm = [render(ex, mdm.tokenizer, "mdm", shift=True, mask_id=MASK_ID) for ex in examples]
    both = (baseline_logit_diffs(ar, r_ar)[0] > 0) & (baseline_logit_diffs(mdm, r_mdm)[0] > 0)
    expected = [ex.prompt for ex, ok in zip(examples, both.tolist(), strict=True) if ok]
    assert [r.example.prompt for r in pool.ar] == expected == [r.example.prompt for r in pool.mdm]
    assert 0 < len(pool) < len(examples)  # the random models solve some, not all
    assert pool.stats["both_correct"] == len(expected) and pool.stats["aligned"] == len(examples)
    capped = common_pool(ar, mdm, "ioi", examples, pool_size=2)
    assert [r.example.prompt for r in capped.ar] == expected[:2]
    everything = common_pool(ar, mdm, "ioi", examples, pool_size=100, require_correct=False)
    assert len(everything) == len(examples)


def test_check_pair_refuses_wrong_kinds() -> None:
    with pytest.raises(UserError, match="autoregressive"):
        check_pair(probed3(kind="mdm"), probed3(kind="mdm"))
    with pytest.raises(UserError, match="masked diffusion"):
        check_pair(probed3(), probed3())


def stats(jaccard: torch.Tensor, early: torch.Tensor) -> PairStats:
    """PairStats from bootstrap replicates; estimates are their means, intervals their range."""
    j, e = float(jaccard.mean()), float(early.mean())
    return PairStats(
        Interval(j, float(jaccard.min()), float(jaccard.max())),
        jaccard,
        Interval(e, float(early.min()), float(early.max())),
        early,
    )


def test_claims_read_their_intervals() -> None:
    """Claim (a) pools the per-task Jaccard replicates with +1/n_local and -1/n_global, (b) the
    global tasks' early-mass differences; each control pair goes through the same statistics."""
    n = 50
    tasks = ["ioi", "greater_than", "countdown"]
    jac = {
        "ioi": torch.full((n,), 0.8),
        "greater_than": torch.full((n,), 0.6),
        "countdown": torch.linspace(0.1, 0.3, n),
    }
    main = {t: stats(jac[t], torch.full((n,), 0.1)) for t in tasks}
    out = claims(tasks, {"main": main}, {"main": Interval(-0.05, -0.08, -0.02)})
    holds = "holds (no seed floor: not tested against training-seed noise)"  # no floor: the verdict says so
    assert out["a"]["interval"].estimate == pytest.approx(0.7 - 0.2)
    assert out["a"]["verdict"] == holds and out["a"]["local_tasks"] == ["ioi", "greater_than"]
    assert out["b"]["interval"].estimate == pytest.approx(0.1) and out["b"]["verdict"] == holds
    assert out["c"]["verdict"] == holds  # MDM - AR selectivity below 0
    assert all(out[k]["verdict_without_floor"] == "holds" for k in "abc")
    assert all(c["floor_missing"] and "--ar-seed-twin" in c["floor_missing"] for c in out.values())
    # (a)'s replicates: 0.7 - linspace(0.1, 0.3) spans 0.4..0.6, so the 2.5/97.5% quantiles by hand
    reps = 0.7 - torch.linspace(0.1, 0.3, n).double()
    lo, hi = torch.quantile(reps, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert (out["a"]["interval"].low, out["a"]["interval"].high) == pytest.approx((lo, hi))
    assert out["a"]["detectable_effect"] == pytest.approx(0.7146 * (hi - lo), rel=1e-3)  # (1.96 + 0.84) / 3.92

    null = {t: stats(torch.ones(n), torch.zeros(n)) for t in tasks}
    # seed floor: local circuits of two seeds overlap more than global ones, by more than ARM vs MDM's effect
    floor = {
        "ioi": stats(torch.full((n,), 0.95), torch.linspace(-0.2, 0.2, n)),
        "greater_than": stats(torch.full((n,), 0.85), torch.zeros(n)),
        "countdown": stats(torch.full((n,), 0.3), torch.linspace(-0.2, 0.2, n)),
    }
    sel = {
        "main": Interval(-0.05, -0.08, -0.02),
        "null_ar": Interval(0.0, 0.0, 0.0),
        "floor_ar": Interval(0.0, -0.01, 0.01),
    }
    out = claims(tasks, {"main": main, "null_ar": null, "floor_ar": floor}, sel)
    for key in "abc":
        assert out[key]["null"]["null_ar"]["verdict"] == "no difference", key
        assert (out[key]["null"]["null_ar"]["interval"].low, out[key]["null"]["null_ar"]["interval"].high) == (0, 0)
    assert out["a"]["floor"]["floor_ar"].estimate == pytest.approx(0.9 - 0.3)
    assert out["a"]["floor_bound"] == pytest.approx(0.6)  # signed: the floor's far end (a point here)
    assert out["a"]["verdict"] == "within the seed floor" and out["a"]["verdict_without_floor"] == "holds"
    # (b): the floor is countdown's early-mass difference of two seeds, +/-0.2 (unsigned: its largest magnitude)
    lo, hi = torch.quantile(torch.linspace(-0.2, 0.2, n).double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert out["b"]["floor_bound"] == pytest.approx(max(-float(lo), float(hi)))
    assert out["b"]["verdict"] == "within the seed floor"  # 0.1 does not clear 0.19
    assert out["c"]["floor_bound"] == pytest.approx(0.01) and out["c"]["verdict"] == "holds"  # -0.02 clears 0.01
    assert "--mdm-seed-twin" in out["a"]["floor_missing"] and "--ar-seed-twin" not in out["a"]["floor_missing"]
    only_local = claims(["ioi"], {"main": main}, {})
    assert only_local["a"]["verdict"] == "untested" and only_local["b"]["verdict"] == "untested"
    assert only_local["c"]["verdict"] == "untested"


def test_verdict_reads_equivalence_and_the_floor() -> None:
    assert verdict(Interval(0.0, 0.0, 0.0), 1) == "no difference"
    assert verdict(Interval(0.004, -0.002, 0.008), 1, margin=0.01) == "no difference"
    assert verdict(Interval(0.004, -0.002, 0.008), 1) == "inconclusive"
    assert verdict(Interval(0.2, 0.1, 0.3), 1, floor=0.05) == "holds"
    assert verdict(Interval(0.2, 0.1, 0.3), 1, floor=0.15) == "within the seed floor"
    assert verdict(Interval(-0.2, -0.3, -0.1), 1, floor=0.05) == "reversed"
    assert verdict(Interval(-0.2, -0.3, -0.1), -1, floor=0.2) == "within the seed floor"
    assert floor_bound(Interval(0.1, -0.3, 0.2), 1, signed=False) == 0.3
    assert floor_bound(Interval(0.1, -0.3, 0.2), 1, signed=True) == 0.2
    assert floor_bound(Interval(-0.4, -0.5, -0.3), 1, signed=True) == 0.0  # a floor on the other side asks nothing
    assert floor_bound(None, 1, signed=True) is None


# --- a whole comparison -----------------------------------------------------------------------------


def seed_twin(kind: str = "ar", seed: int = 1) -> ProbedModel:
    """The 3-layer model with every weight matrix moved by noise of half its spread: a stand-in
    for the same recipe trained with another seed (same graph, tokenizer and mask id)."""
    model = hf_model()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std())
    meta = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID) if kind == "mdm" else None
    return ProbedModel(model, tiny_tokenizer(), meta, backend="torch")


@pytest.mark.e2e
def test_compare_end_to_end_agrees_with_the_saved_graphs(tmp_path: Path) -> None:
    """Every number against an independent computation from the saved graphs; the null pairs
    give Jaccard 1.0, effects 0 and "no difference"; the seed floors read like the main pair."""
    ar, mdm = probed3(), probed3(kind="mdm")
    twins = {"ar": seed_twin(), "mdm": seed_twin("mdm", 2)}
    opts = CompareOptions(
        tasks=TASKS,
        pool_size=8,
        steps=2,
        n_boot=50,
        n_random=2,
        k_edges=20,
        k_nodes=3,
        denoising=(1.0, 0.0),
        batch_size=8,
    )
    result = compare(ar, mdm, opts, examples=task_examples(40), twins=twins, log=lambda _: None)
    write_report(result, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    analysed = list(data["tasks"])
    assert analysed and set(analysed) <= set(TASKS)
    floor_jaccard = {}
    for task in analysed:
        ga, gm, gat, gmt = (
            Graph.load(tmp_path / "graphs" / f"{task}-{m}.json") for m in ("ar", "mdm", "ar_twin", "mdm_twin")
        )
        entry = data["tasks"][task]
        assert entry["n"] == data["pools"][task]["pool"] == ga.meta["n_examples"] == gat.meta["n_examples"]
        assert entry["circuits"]["jaccard"]["estimate"] == pytest.approx(jaccard(ga, gm, 20))
        controls = entry["controls"]
        for null in ("null_ar", "null_mdm"):
            assert controls[null]["jaccard"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "level": 0.95}
            assert [controls[null]["early_mass_diff"][k] for k in ("estimate", "low", "high")] == [0, 0, 0]
        assert controls["floor_ar"]["jaccard"]["estimate"] == pytest.approx(jaccard(ga, gat, 20))
        assert controls["floor_mdm"]["jaccard"]["estimate"] == pytest.approx(jaccard(gm, gmt, 20))
        floor_jaccard[task] = jaccard(ga, gat, 20)
        assert jaccard(ga, gat, 20) < 1  # the twin is another model
        cmp = entry["depth"]["compare"]
        for key, g in (("a", ga), ("b", gm)):
            dist = layer_distribution({s: v for s, v in g.node_scores.items() if s != "embed"}, 3, 3)
            assert cmp[key]["early_mass"] == pytest.approx(dist.early_mass)
        assert len(entry["depth"]["ar"]["lens"]["top1"]) == 4  # embedding + 3 layers
    for key, claim in data["claims"].items():
        iv = claim["interval"]
        expected = verdict(
            Interval(iv["estimate"], iv["low"], iv["high"]) if iv else None,
            -1 if key == "c" else 1,
            floor=claim["floor_bound"],
            margin=0.01,
        )
        assert claim["verdict"] == expected
        assert claim["floor_missing"] is None and set(claim["floor"]) == {"floor_ar", "floor_mdm"}
        for null in ("null_ar", "null_mdm"):
            if claim["null"][null]["interval"] is not None:
                assert [claim["null"][null]["interval"][k] for k in ("estimate", "low", "high")] == [0, 0, 0]
                assert claim["null"][null]["verdict"] == "no difference"
    local = [t for t in analysed if TASK_REGISTRY[t].kind == "local"]
    glob = [t for t in analysed if t not in local]
    if local and glob:
        by_hand = sum(floor_jaccard[t] for t in local) / len(local) - sum(floor_jaccard[t] for t in glob) / len(glob)
        assert data["claims"]["a"]["floor"]["floor_ar"]["estimate"] == pytest.approx(by_hand)
    for d in data["denoising"].values():
        if "points" in d:
            assert [p["t"] for p in d["points"]] == [1.0, 0.0]
            assert d["points"][0]["jaccard_t1"] == 1.0
    assert "neurons" in data["units"] and "heads" in data["units"]
    page = (tmp_path / "report.html").read_text()
    assert "Claims of the reference study" in page and "<script src=" not in page and "Plotly" in page
    summary = (tmp_path / "summary.md").read_text()
    assert "| task | kind | pool |" in summary and "(a) edge overlap" in summary and "Denoising trajectory" in summary


def test_compare_with_no_common_examples_says_so() -> None:
    examples = {t: [] for t in TASKS}
    with pytest.raises(UserError, match="both models answer correctly"):
        compare(probed3(), probed3(kind="mdm"), CompareOptions(tasks=TASKS), examples=examples, log=lambda _: None)
    with pytest.raises(UserError, match="unknown"):
        CompareOptions(tasks=("ioi", "poetry")).checked()
    with pytest.raises(UserError, match="denoising"):
        CompareOptions(denoising=(1.5,)).checked()


def test_cli_compare_errors_are_one_line(tmp_path: Path) -> None:
    from test_probe import folder

    runner = CliRunner()
    ar, mdm = str(folder("llama")), str(folder("llama", "mdm"))
    res = runner.invoke(app, ["compare", "--ar", mdm, "--mdm", mdm, "--out", str(tmp_path)])
    assert res.exit_code == 2 and "autoregressive" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compare", "--ar", ar, "--mdm", mdm, "--out", str(tmp_path), "--tasks", "ioi,poetry"])
    assert res.exit_code == 2 and "unknown" in res.output
    res = runner.invoke(app, ["compare", "--ar", ar, "--mdm", mdm, "--out", str(tmp_path), "--track", str(tmp_path)])
    assert res.exit_code == 2 and "snapshot" in res.output


def test_check_pair_warns_when_the_mdm_is_not_the_arms_own_conversion() -> None:
    """The MDM's recorded source hash is compared with the ARM's weights; tokenizers must agree."""
    from dataclasses import replace

    from test_probe import probed

    from analyses.compare import check_pair

    ar, mdm = probed("llama"), probed("llama", "mdm")
    assert ar.meta.source_hash

    def with_meta(**changes) -> ProbedModel:
        return ProbedModel(mdm.model, mdm.tokenizer, replace(mdm.meta, **changes), backend="torch")

    assert check_pair(ar, with_meta(source_hash=ar.meta.source_hash)) == []
    warnings = check_pair(ar, with_meta(source_hash="0" * 64, source="elsewhere"))
    assert len(warnings) == 1 and "not the ARM's own conversion" in warnings[0] and "elsewhere" in warnings[0]
    with pytest.raises(UserError, match="must be a masked diffusion"):
        check_pair(ar, ar)


def test_undefined_early_mass_reads_as_a_dash() -> None:
    """A model whose top-K nodes all score 0 (the read position cannot see the corruption, as a
    block-1 MDM on infilling) has no layer distribution: JSON holds None, tables show "-" and the
    layer figure draws nothing for it instead of failing."""
    from analyses.compare import figures, summary_rows

    interval = {"estimate": 0.1, "low": 0.05, "high": 0.15, "level": 0.95}
    entry = {
        "n": 8,
        "circuits": {
            "jaccard": interval,
            "jaccard_curve": {"k": [1, 2], "jaccard": [0.0, 0.1]},
            "ar": {"clean_ld": 3.0, "corrupt_ld": 0.0},
            "mdm": {"clean_ld": 1.0, "corrupt_ld": 1.0},
        },
        "depth": {
            "ar": {"lens": {"top1": [0.0, 0.5, 1.0]}},
            "mdm": {"lens": {"top1": [0.0, 0.0, 0.0]}},
            "compare": {
                "a": {"mass": [0.5, 0.5], "early_mass": 0.5},
                "b": {"mass": [None, None], "early_mass": None},
                "early_mass_diff": {"estimate": None, "low": None, "high": None, "level": 0.95},
            },
        },
    }
    data = {
        "pools": {"infilling": {"pool": 8, "accuracy_ar": 1.0, "accuracy_mdm": 0.5}},
        "tasks": {"infilling": entry},
        "shape": {"n_layers": 2},
        "options": {"k_nodes": 2, "method": "eap-ig-inputs"},
    }
    (row,) = summary_rows(data)
    assert row["early mass MDM"] == "-" and row["early mass AR"] == "0.50" and row["MDM - AR"] == "-"
    layers = figures(data)["layers"]
    mdm_bars = [t for t in layers.data if t.name.startswith("MDM")]
    assert [list(t.y) for t in mdm_bars] == [[0.0], [0.0]]
