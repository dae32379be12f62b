"""Circuit attribution and faithfulness against ground truth on tiny models.

- Constructed models whose answer is known: the only path that carries the answer is one head
  (embed -> L1.H0.v -> L1.H0 -> logits) or the direct path (embed -> logits). Every method must
  put those edges on top, exact patching must give each exactly M(corrupt) - M(clean), and the
  2-edge / 1-edge / 1-node circuits must be faithful, for every metric.
- Random tiny models (tests/conftest.py): EAP-IG ranks edges closer to exact edge patching than
  EAP does (Spearman over all edges and over the top 20), on weights sharp enough to be
  non-linear; EAP equals the finite-difference derivative of the edge-patched metric; EAP-IG
  satisfies completeness; node scores of gradient methods sum their outgoing edges.
- Faithfulness from `analyses.circuits` equals a patched forward pass written out here, and
  degenerate circuits (all edges, none, all but one node's edges) equal plain/patched runs.
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest
import torch
from conftest import tiny_tokenizer
from test_probe import MASK_ID, folder, probed
from test_probe_grads import float64_softmax, probed64  # noqa: F401  (a fixture, used by name)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from analyses.batching import batches
from analyses.circuit_plots import edges_figure, importance_heatmap
from analyses.circuits import FaithfulnessCurve, attribute, circuit_metrics, faithfulness, faithfulness_curve
from analyses.graph import Graph, compare_scores, node_importance
from analyses.metrics import Targets, metric_values
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import Example, collate, render
from probe import ProbedModel, answer_logit_diff

NAMES = ("Mary", "John", "Alice", "Bob", "Tom", "Sarah")
METHODS = ("exact", "eap", "eap-ig-inputs", "eap-ig-activations")
METRICS = ("logit_diff", "prob", "kl")


IOI = "When {} and {b} went to the store , {b} gave a drink to"
ONE_NAME = "When {} went to the store , they gave a drink to"
LAST_NAME = "When they went to the store , they gave a drink to {}"


def toy_examples(n: int, template: str = IOI) -> list[Example]:
    """Pairs over the tiny vocabulary: the name in the template's first slot is the answer in the
    clean prompt and another name in the corrupted one (`b` fills any second slot)."""
    out = []
    for a, b, c in itertools.permutations(NAMES, 3):
        out.append(
            Example(
                task="toy",
                prompt=template.format(a, b=b),
                answer=f" {a}",
                corrupted_prompt=template.format(c, b=b),
                correct=(f" {a}",),
                counterfactual=(f" {c}",),
            )
        )
    return out[:n]


def rendered(pm: ProbedModel, examples: list[Example]) -> list:
    cfg = pm.config
    return [render(ex, pm.tokenizer, cfg.kind, shift=cfg.shift, mask_id=cfg.mask_id) for ex in examples]


# --- a model whose answer is known ------------------------------------------------------------


@cache
def constructed(path: str) -> ProbedModel:
    """A 2-layer Llama in which every head and MLP writes nothing, except (path="head") head
    L1.H0: it attends uniformly (zero queries) and copies coordinates 0..7 of its normed input.
    Names are orthogonal there (3 x a basis vector), other tokens are zero there, and the
    unembedding reads only those coordinates: a name's logit is its weight in the head's output
    (path="head") or in the last token's embedding (path="direct")."""
    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(len(tok), 32, generator=gen)
    emb[:, :8] = 0
    for i, name in enumerate(NAMES):
        emb[tok.convert_tokens_to_ids("Ġ" + name), i] = 3.0
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :8] = emb[:, :8]
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        if path == "head":
            attn = model.model.layers[1].self_attn
            attn.q_proj.weight[:8] = 0
            attn.v_proj.weight[:8] = 12 * torch.eye(8, 32)
            attn.o_proj.weight[:, :8] = torch.eye(32, 8)
    return ProbedModel(model, tok, backend="torch")


def hand_logits(pm: ProbedModel, ids: torch.Tensor) -> torch.Tensor:
    """The "head" model's logits at the last position, computed from its weights by hand."""
    m = pm.model.model
    x = m.embed_tokens.weight[ids]  # [T, D]
    rms = lambda v, norm: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight  # noqa: E731
    attn = m.layers[1].self_attn
    v = rms(x, m.layers[1].input_layernorm) @ attn.v_proj.weight[:8].T  # head 0's values
    head = v.mean(0) @ attn.o_proj.weight[:, :8].T  # uniform attention at the last position
    return rms(x[-1] + head, m.norm) @ pm.model.lm_head.weight.T


def assert_estimates(score: float, gap: float, method: str) -> None:
    """An on-path edge's score against the true effect of corrupting it (here M(corrupt) -
    M(clean), since the path is the only one): exact for patching, within 30% for EAP-IG (5
    steps), the right sign for EAP (first order: it can be far off where the metric saturates)."""
    ratio = score / gap
    if method == "exact":
        assert ratio == pytest.approx(1.0, abs=1e-5)
    elif method == "eap":
        assert ratio > 0
    else:
        assert ratio == pytest.approx(1.0, abs=0.3), method


@pytest.mark.parametrize("metric", METRICS)
def test_one_head_model_every_method_and_metric(metric: str) -> None:
    pm = constructed("head")
    items = rendered(pm, toy_examples(8, ONE_NAME))
    batch = collate(items, 0)
    logits = pm(batch)
    targets = Targets.of(items)
    for b in range(2):  # the metric, computed from hand logits
        row = hand_logits(pm, items[b].input_ids)
        torch.testing.assert_close(logits[b, -1], row, atol=1e-5, rtol=0)
    ld = metric_values("logit_diff", logits, targets)
    torch.testing.assert_close(ld, answer_logit_diff(logits, items))
    assert bool((ld > 1).all()), "the head must make the model answer the clean name"
    probs = torch.softmax(logits[torch.arange(8), targets.positions], -1)
    torch.testing.assert_close(metric_values("prob", logits, targets), probs[torch.arange(8), targets.correct[:, 0]])

    on_path = {"embed->L1.H0.v", "L1.H0->logits"}
    for method in METHODS:
        g = attribute(pm, items, method=method, metric=metric, batch_size=4)
        gap = g.meta["corrupt_metric"] - g.meta["clean_metric"]
        off = torch.tensor([abs(g.score(e)) for e in g.edges if e not in on_path])
        assert float(off.max()) < 1e-6 * abs(gap), f"{method}: an edge off the head's path scored"
        if method == "eap" and metric == "kl":  # the KL's gradient vanishes at the clean input
            assert all(abs(g.score(e)) < 1e-5 * abs(gap) for e in on_path)
            continue
        assert set(g.top(2)) == on_path, method
        for e in on_path:
            assert_estimates(g.score(e), gap, method)
        s = node_importance(g, 2)
        assert max((v, k) for k, v in s.items() if k not in ("embed", "logits"))[1] == "L1.H0"
        assert all(v == 0 for k, v in s.items() if k not in ("embed", "logits", "L1.H0"))
        if method == "exact":
            assert g.node_scores["L1.H0"] == pytest.approx(gap, rel=1e-5)
            assert g.node_scores["embed"] == pytest.approx(gap, rel=1e-5)
            assert all(abs(v) < 1e-6 * abs(gap) for k, v in g.node_scores.items() if k not in ("embed", "L1.H0"))
            assert faithfulness(pm, items, g.select(top_n=2), metric=metric).value == pytest.approx(1.0, abs=1e-5)
            one_node = [
                e
                for e in g.edges
                if set(e.split("->")) <= {"embed", "L1.H0.q", "L1.H0.k", "L1.H0.v", "L1.H0", "logits"}
            ]
            assert faithfulness(pm, items, one_node, metric=metric).value == pytest.approx(1.0, abs=1e-5)
            assert faithfulness(pm, items, ["L1.H0->logits"], metric=metric).value == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_direct_path_model_one_edge_circuit(metric: str) -> None:
    pm = constructed("direct")
    items = rendered(pm, toy_examples(6, LAST_NAME))
    for method in METHODS:
        g = attribute(pm, items, method=method, metric=metric)
        gap = g.meta["corrupt_metric"] - g.meta["clean_metric"]
        if method == "eap" and metric == "kl":
            assert float(g.scores.abs().max()) < 1e-5 * abs(gap)
            continue
        assert g.top(1) == ["embed->logits"]
        assert_estimates(g.score("embed->logits"), gap, method)
        assert sorted(abs(v) for v in g.scores.tolist())[-2] < 1e-6 * abs(gap)
        assert {k for k, v in node_importance(g, 1).items() if v} == {"embed", "logits"}
    assert faithfulness(pm, items, ["embed->logits"], metric=metric).value == pytest.approx(1.0, abs=1e-5)


# --- EAP-IG against exact patching ----------------------------------------------------------------


@cache
def sharpened(seed: int) -> ProbedModel:
    """The tiny Llama (GQA) with larger random weights (std 0.12; embeddings and unembedding
    0.1), so attention and MLPs work in their non-linear range and first-order EAP errs."""
    path = folder("llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                std = 0.1 if ("embed" in name or "lm_head" in name) else 0.12
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return ProbedModel(model, AutoTokenizer.from_pretrained(path), backend="torch")


SHARP_SEEDS = (0, 1, 2)


@cache
def sharp_scores(seed: int) -> dict[str, dict[str, float]]:
    pm = sharpened(seed)
    items = rendered(pm, toy_examples(16))
    graphs = {m: attribute(pm, items, method=m, steps=5, batch_size=8) for m in METHODS}
    return {m: compare_scores(graphs[m], graphs["exact"], top=20) for m in METHODS[1:]}


@pytest.mark.parametrize("seed", SHARP_SEEDS)
def test_eap_ig_beats_eap_against_exact_patching(seed: int) -> None:
    scores = sharp_scores(seed)
    eap = scores["eap"]
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        ig = scores[method]
        assert ig["spearman_all"] > eap["spearman_all"], (method, ig, eap)
        assert ig["spearman_top"] > eap["spearman_top"], (method, ig, eap)
        assert ig["spearman_all"] > 0.85 and ig["spearman_top"] > 0.9, (method, ig)


def test_eap_equals_the_derivative_of_edge_patching(float64_softmax: None) -> None:  # noqa: F811
    pm = probed64("llama", "ar")
    items = rendered(pm, toy_examples(4))
    g = attribute(pm, items, method="eap", batch_size=None)
    batch = collate(items, 0)
    _, clean = pm.run_with_cache(batch, names=pm.senders())
    _, corrupt = pm.run_with_cache(
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}, names=pm.senders()
    )

    def moved(sender: str, receiver: str, eps: float) -> float:
        with pm.intervene() as iv:
            iv.patch_edge(sender, receiver, clean[sender] + eps * (corrupt[sender] - clean[sender]))
            return float(metric_values("logit_diff", pm(batch), Targets.of(items)).mean())  # float64

    for edge in (
        "embed->L0.H2.q",
        "embed->L1.H1.k",
        "L0.H1->L1.mlp",
        "L0.mlp->L1.H0.v",
        "L1.H2->logits",
        "L0.H3->logits",
    ):
        s, r = edge.split("->")
        eps = 1e-3
        d1 = (moved(s, r, eps) - moved(s, r, -eps)) / (2 * eps)
        d2 = (moved(s, r, eps / 2) - moved(s, r, -eps / 2)) / eps
        derivative = (4 * d2 - d1) / 3  # Richardson extrapolation
        assert abs(derivative) > 1e-8, edge
        assert g.score(edge) == pytest.approx(derivative, rel=1e-6), edge


def test_eap_ig_completeness() -> None:
    """Integrated gradients add up: the embedding's IG-inputs score approaches
    M(corrupt) - M(clean), and a group's IG-activations scores sum to patching the group."""
    pm = sharpened(0)
    items = rendered(pm, toy_examples(8))
    g = attribute(pm, items, method="eap-ig-inputs", steps=32, batch_size=None)
    gap = g.meta["corrupt_metric"] - g.meta["clean_metric"]
    assert g.node_scores["embed"] == pytest.approx(gap, rel=2e-3)
    g = attribute(pm, items, method="eap-ig-activations", steps=32, batch_size=None)
    batch = collate(items, 0)
    heads = [f"L1.H{h}" for h in range(4)]
    _, corrupt = pm.run_with_cache(
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}, names=heads
    )
    with pm.intervene() as iv:
        iv.patch(heads, corrupt)
        patched = float(answer_logit_diff(pm(batch), items).mean())
    assert sum(g.node_scores[h] for h in heads) == pytest.approx(patched - g.meta["clean_metric"], rel=2e-3)


def test_eap_node_scores_are_gradients_at_the_node_outputs() -> None:
    """A node's EAP score (the sum of its outgoing edges) equals (a_corrupt - a_clean) . dM/da
    taken at the node's own output: the gradient there is the sum of its receivers' gradients."""
    pm = sharpened(1)
    items = rendered(pm, toy_examples(6))
    g = attribute(pm, items, method="eap", batch_size=None)
    batch = collate(items, 0)
    targets = Targets.of(items)
    grads = pm.run_with_grads(
        batch, lambda lg: metric_values("logit_diff", lg, targets).sum(), outputs=pm.senders(), names=pm.senders()
    )
    _, corrupt = pm.run_with_cache(
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}, names=pm.senders()
    )
    for sender in pm.senders():
        expected = float(((corrupt[sender] - grads.cache[sender]) * grads.outputs[sender]).sum()) / len(items)
        assert g.node_scores[sender] == pytest.approx(expected, rel=1e-4, abs=1e-7), sender
        assert g.node_scores[sender] == pytest.approx(
            sum(g.score(e) for e in g.edges if e.startswith(sender + "->")), rel=1e-9, abs=1e-12
        )


@pytest.mark.parametrize(("family", "kind"), [("llama", "ar"), ("gpt2", "mdm"), ("gemma3_text", "mdm")])
def test_receiver_gradients_without_copies_equal_split_ones(family: str, kind: str) -> None:
    """probe computes the gradient of a receiver that is only differentiated from its projection
    output (J_norm^T W_h^T g_h); with an edit on the same receivers it splits per-head copies and
    lets autograd do it. Both must agree (the first is what EAP-IG uses)."""
    pm = probed(family, kind)
    items = rendered(pm, toy_examples(3))
    batch = collate(items, 0)
    targets = Targets.of(items)
    metric = lambda lg: metric_values("logit_diff", lg, targets).sum()  # noqa: E731
    receivers = [r for r in pm.receivers() if r.endswith((".q", ".k", ".v"))]
    plain = pm.run_with_grads(batch, metric, receivers=receivers)
    with pm.intervene() as iv:
        iv.add(receivers, 0.0)  # an edit (of nothing) on every head input forces the copies
        split = pm.run_with_grads(batch, metric, receivers=receivers)
    torch.testing.assert_close(plain.metric, split.metric)
    for r in receivers:
        assert float(split.inputs[r].abs().max()) > 0, r
        torch.testing.assert_close(plain.inputs[r], split.inputs[r], atol=1e-6, rtol=1e-4, msg=r)


def test_batching_and_stacking_do_not_change_scores() -> None:
    pm = probed("llama", "mdm")
    items = rendered(pm, toy_examples(5))
    for method in METHODS:
        whole = attribute(pm, items, method=method, steps=2, batch_size=None)
        split = attribute(pm, items, method=method, steps=2, batch_size=2, rows_per_pass=1)
        loader = attribute(pm, (collate(items[i : i + 3], 0) for i in (0, 3)), method=method, steps=2, rows_per_pass=7)
        for other in (split, loader):
            torch.testing.assert_close(other.scores, whole.scores, atol=1e-6, rtol=1e-4)
            assert other.meta["n_examples"] == 5


def test_per_example_scores_are_each_examples_own_attribution() -> None:
    """`per_example=True` keeps [N, edges] scores: their mean is the graph's score, and each row
    equals attributing that example alone (so a bootstrap can resample examples)."""
    pm = probed("llama", "mdm")
    items = rendered(pm, toy_examples(4))
    for method in METHODS:
        graph = attribute(pm, items, method=method, steps=2, batch_size=3, per_example=True)
        assert graph.examples is not None and graph.examples.shape == (4, len(graph.edges))
        torch.testing.assert_close(graph.examples.double().mean(0), graph.scores, atol=1e-5, rtol=1e-4)
        for i in (0, 3):
            alone = attribute(pm, items[i : i + 1], method=method, steps=2)
            torch.testing.assert_close(
                graph.examples[i].double(), alone.scores, atol=1e-5, rtol=1e-4, msg=f"{method} {i}"
            )
        assert float(graph.examples.std(0).max()) > 0, method  # examples differ: not a broadcast mean
    assert attribute(pm, items, method="eap", steps=2).examples is None


# --- faithfulness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "kind"), [("llama", "ar"), ("llama", "mdm"), ("gpt2", "ar"), ("gemma3_text", "mdm")]
)
def test_faithfulness_equals_a_direct_patched_pass(family: str, kind: str) -> None:
    pm = probed(family, kind)
    items = rendered(pm, toy_examples(6))
    g = attribute(pm, items, method="eap-ig-inputs", steps=2)
    circuit = g.select(top_n=12)
    assert 0 < len(circuit) <= 12
    got = faithfulness(pm, items, circuit, batch_size=4)

    batch = collate(items, 0)  # the same quantity, by hand, in one pass over all examples
    corrupt_in = {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}
    corrupt_logits, corrupt = pm.run_with_cache(corrupt_in, names=pm.senders())
    with pm.intervene() as iv:
        for edge in g.edges:
            if edge not in circuit:
                s, r = edge.split("->")
                iv.patch_edge(s, r, corrupt)
        circuit_ld = float(answer_logit_diff(pm(batch), items).mean())
    clean_ld = float(answer_logit_diff(pm(batch), items).mean())
    corrupt_ld = float(answer_logit_diff(corrupt_logits, items).mean())
    assert got.circuit == pytest.approx(circuit_ld, abs=1e-5)
    assert got.clean == pytest.approx(clean_ld, abs=1e-5) and got.corrupt == pytest.approx(corrupt_ld, abs=1e-5)
    assert got.value == pytest.approx((circuit_ld - corrupt_ld) / (clean_ld - corrupt_ld), rel=1e-4)

    # degenerate circuits: every edge (the clean run), none (the corrupted run), and every edge
    # but those leaving one node (patching that node)
    with pm.intervene() as iv:
        iv.patch("L0.H1", corrupt)
        node_patched = float(answer_logit_diff(pm(batch), items).mean())
    without = [e for e in g.edges if not e.startswith("L0.H1->")]
    (full, empty, node), clean_mean, corrupt_mean = circuit_metrics(pm, items, [g.edges, [], without], batch_size=4)
    assert full == pytest.approx(clean_mean, abs=1e-5) and empty == pytest.approx(corrupt_mean, abs=1e-5)
    assert node == pytest.approx(node_patched, abs=1e-5)


def test_faithfulness_curve_of_the_one_head_model() -> None:
    """110 edges; the top 2 (exact) are the head's path: f = 0 below 2 edges, 1 from 2 on."""
    pm = constructed("head")
    items = rendered(pm, toy_examples(6, ONE_NAME))
    g = attribute(pm, items, method="exact", nodes=False)
    curve = faithfulness_curve(pm, items, g)
    assert curve.total_edges == 110 and curve.sizes == [0, 1, 2, 3, 6, 11, 22, 55, 110]
    # pruning drops zero-score edges off the path; larger circuits take zero-score edges in
    # canonical order (ties), and those that join the path (embed -> L1.H0.q, ...) stay
    assert curve.kept[:6] == [0, 0, 2, 2, 2, 2] and curve.kept[-1] == 110
    assert curve.values == pytest.approx([0, 0, 1, 1, 1, 1, 1, 1, 1], abs=1e-5)
    assert curve.area == pytest.approx((0.5 + 108) / 110, abs=1e-6)  # trapezoids over size / 110
    assert curve.to_dict()["values"] == curve.values
    # MIB: CPR is the area; CMD the area of |1 - f|: 1/110 on [0, 1] edges, 0.5/110 on [1, 2], then 0
    assert curve.cpr == curve.area and curve.cmd == pytest.approx(1.5 / 110, abs=1e-6)
    assert curve.cpr + curve.cmd == pytest.approx(1.0, abs=1e-6)  # f in [0, 1] everywhere
    partial = faithfulness_curve(pm, items, g, [1, 2])
    assert partial.values == pytest.approx([0, 1], abs=1e-5) and partial.area == pytest.approx(0.5 / 110, abs=1e-7)


def test_cmd_splits_a_segment_where_the_curve_crosses_one() -> None:
    """f = 2x on [0, 1] (overshoots the model past half the edges): the integral of |1 - 2x| is
    1/2, not the 0 a trapezoid over the signed distance would give; f = 1 gives CMD 0."""
    over = FaithfulnessCurve([0, 10], [0, 10], [0.0, 2.0], 1.0, 1.0, 0.0, 10)
    assert over.cmd == pytest.approx(0.5) and over.cpr == 1.0
    exact = FaithfulnessCurve([0, 5, 10], [0, 5, 10], [1.0, 1.0, 1.0], 1.0, 1.0, 0.0, 10)
    assert exact.cmd == 0.0
    below = FaithfulnessCurve([0, 5, 10], [0, 5, 10], [0.0, 0.5, 1.0], 0.5, 1.0, 0.0, 10)
    assert below.cmd == pytest.approx(0.5)  # the triangle between f = x and 1


# --- views and errors -------------------------------------------------------------------------


def test_plots() -> None:
    g = Graph(probed("llama").shape, {"embed->L1.H0.k": 2.0, "L1.H3->logits": -1.0, "L0.mlp->L1.mlp": 0.5})
    heat = importance_heatmap(g, 3)
    assert len(heat.data[0].z) == 2 and len(heat.data[0].z[0]) == 5  # layers x (4 heads + mlp)
    assert heat.data[0].z[1][0] == pytest.approx(1.0) and heat.data[0].z[1][3] == pytest.approx(
        1.0
    )  # k shared by H0, H1
    fig = edges_figure(g, 3)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2 + 1 + 1  # the shared k receiver is drawn to both heads of its group
    assert {"embed", "L1.H0", "L1.H1", "logits"} <= set(fig.data[-1].text)


def test_errors() -> None:
    pm = probed("llama")
    items = rendered(pm, toy_examples(2))
    with pytest.raises(UserError, match="unknown attribution method"):
        attribute(pm, items, method="acdc")
    with pytest.raises(UserError, match="unknown metric"):
        attribute(pm, items, metric="accuracy")
    with pytest.raises(UserError, match="steps"):
        attribute(pm, items, method="eap-ig-inputs", steps=0)
    with pytest.raises(UserError, match="no examples"):
        attribute(pm, [])
    with pytest.raises(UserError, match="yield tasks Batch"):
        attribute(pm, iter([{"input_ids": torch.zeros(1, 3)}]))
    with pytest.raises(UserError, match="batch_size"):
        list(batches(pm, items, 0))
    mdm = probed("llama", "mdm")
    with pytest.raises(UserError, match="rendered for 'ar' reading given to a 'mdm' model"):
        attribute(mdm, items)
    unshifted = [render(ex, mdm.tokenizer, "mdm", shift=False, mask_id=MASK_ID) for ex in toy_examples(2)]
    with pytest.raises(UserError, match="shift=True"):
        attribute(mdm, unshifted)
    with pytest.raises(UserError, match="not an edge of this model"):
        faithfulness(pm, items, ["embed->L7.mlp"])
    same = [
        render(
            Example(
                task="toy",
                prompt="When Mary went",
                answer=" to",
                corrupted_prompt="When Mary went",
                counterfactual=(" the",),
            ),
            pm.tokenizer,
            "ar",
        )
    ]
    with pytest.raises(UserError, match="faithfulness is undefined"):
        faithfulness(pm, same, [])
    no_counter = [
        render(
            Example(task="toy", prompt="When Mary went", answer=" to", corrupted_prompt="When John went"),
            pm.tokenizer,
            "ar",
        )
    ]
    with pytest.raises(UserError, match="needs a counterfactual"):
        attribute(pm, no_counter, method="eap")
    attribute(pm, no_counter, method="eap", metric="prob")  # fine without one


# --- the organism (slow) --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", ["organism", "runs/organism-mdm-sft"])
def test_organism_eap_ig_finds_the_edges_exact_patching_ranks_first(source: str) -> None:
    """On the organism's IOI circuit the largest effects run through saturated attention, where
    EAP's gradient at the clean input sees almost nothing: EAP-IG ranks the top edges of exact
    patching far better than EAP, and its small circuits are faithful (docs/results/circuits.md)."""
    from pathlib import Path

    from ar2mdm.tasks import generate_aligned, get_task

    if source.startswith("runs/"):
        path = Path(__file__).resolve().parents[1] / source
        if not path.is_dir():
            pytest.skip(f"{source} is not here (ar2mdm convert makes it, see docs/results/conversion.md)")
        source = str(path)
    else:
        from conversion.checkpoints import organism_folder

        if not (organism_folder() / "config.json").is_file():
            pytest.skip(f"the organism is not trained in {organism_folder()} (ar2mdm organism train makes it)")
    pm = ProbedModel.from_checkpoint(source, backend="torch")
    cfg = pm.config
    examples = generate_aligned(
        get_task("ioi", pm.tokenizer), 16, pm.tokenizer, 0, modes=(cfg.kind,), mask_id=cfg.mask_id
    )
    items = rendered(pm, examples)
    graphs = {m: attribute(pm, items, method=m, steps=5, nodes=False) for m in ("exact", "eap", "eap-ig-inputs")}
    exact = graphs["exact"]
    eap, ig = (compare_scores(graphs[m], exact, 20) for m in ("eap", "eap-ig-inputs"))
    assert ig["spearman_top"] > 0.75 and ig["spearman_top"] > eap["spearman_top"] + 0.15, (ig, eap)
    assert graphs["eap-ig-inputs"].top(1) == exact.top(1) == ["embed->L0.H0.v"]
    assert abs(graphs["eap"].score("embed->L0.H0.v")) < 0.1 * abs(exact.score("embed->L0.H0.v"))
    circuit = graphs["eap-ig-inputs"].select(top_n=25)
    assert faithfulness(pm, items, circuit).value > 0.3
    assert faithfulness(pm, items, graphs["eap"].select(top_n=25)).value < 0.1


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_circuit_metrics_equal_the_per_edge_computation(family: str) -> None:
    """The fast path (one delta per sender shared by its edges; the complement of a large patched
    set read off the running sum) gives the metric of patching each edge on its own: every edge
    its own value tensor and position mask, so nothing is shared. Circuits from empty to full; on
    the post-norm family too (Gemma2)."""
    from analyses.batching import pair_inputs
    from analyses.graph import forward_edges
    from analyses.metrics import Targets, metric_values

    pm = probed(family)
    items = rendered(pm, toy_examples(6))
    edges = [f"{s}->{r}" for s, r in forward_edges(pm.shape)]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(edges), generator=gen).tolist()
    circuits = [[edges[i] for i in order[:n]] for n in (0, 3, len(edges) // 3, len(edges) - 5, len(edges))]
    fast, clean, corrupt = circuit_metrics(pm, items, circuits, batch_size=6)
    batch = collate(items, 0)
    clean_in, corrupt_in = pair_inputs(batch)
    targets = Targets.of(items)
    _, cache = pm.run_with_cache(corrupt_in, names=pm.senders())
    n_rows, length = batch.input_ids.shape
    for circuit, value in zip(circuits, fast, strict=True):
        kept = set(circuit)
        with pm.intervene() as iv:
            for edge in edges:
                if edge not in kept:
                    sender, receiver = edge.split("->")
                    own = cache[sender].clone()  # a tensor of its own: nothing to share
                    iv.patch_edge(sender, receiver, own, pos=torch.ones(n_rows, length, dtype=torch.bool))
            logits = pm(clean_in)
        reference = float(metric_values("logit_diff", logits, targets).mean())
        assert value == pytest.approx(reference, abs=2e-5)
    assert fast[0] == pytest.approx(corrupt, abs=2e-5) and fast[-1] == pytest.approx(clean, abs=2e-5)


def test_exact_patching_of_chosen_edges_through_attribute() -> None:
    """`attribute(..., method="exact", edges=[...])` scores exactly those edges, each as the full
    exact run scores it (per example too); the rest are NaN and sort last; bad names are errors."""
    pm = probed("llama")
    items = rendered(pm, toy_examples(6))
    full = attribute(pm, items, method="exact", batch_size=3, per_example=True)
    chosen = full.top(4) + [full.edges[-1]]
    part = attribute(pm, items, method="exact", batch_size=3, per_example=True, edges=chosen)
    index = {e: i for i, e in enumerate(full.edges)}
    for edge in chosen:
        assert part.score(edge) == pytest.approx(full.score(edge), abs=1e-6)
        torch.testing.assert_close(part.examples[:, index[edge]], full.examples[:, index[edge]])
    others = [i for e, i in index.items() if e not in set(chosen)]
    assert bool(torch.isnan(part.scores[others]).all()) and part.meta["edges_scored"] == len(chosen)
    assert set(part.top(len(chosen))) == set(chosen)  # NaN (unscored) edges sort last
    ig_full = attribute(pm, items, batch_size=3)
    ig_part = attribute(pm, items, batch_size=3, edges=chosen)  # gradients: all computed, others NaN
    assert [ig_part.score(e) for e in chosen] == pytest.approx([ig_full.score(e) for e in chosen], abs=1e-6)
    assert int(torch.isnan(ig_part.scores).sum()) == len(full.edges) - len(chosen)
    with pytest.raises(UserError, match="is not an edge of this model's graph"):
        attribute(pm, items, method="exact", edges=["L0.H0->embed"])
