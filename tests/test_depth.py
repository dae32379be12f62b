"""analyses.depth against hand computations, hand-edited weights and constructed models.

Models: a tiny random 3-layer Llama (so the thirds of depth are L0 | L1 | L2) over conftest's
tokenizer, and constructed variants of it in which only some components write into the residual
stream (their output projections zeroed by hand), so the answer to "what matters" is known.
The helpers here are imported by test_neurons.py.
"""

from __future__ import annotations

import atexit
import copy
import math
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_tokenizer
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from analyses.depth import (
    ablate,
    ablated_logit_diffs,
    baseline_logit_diffs,
    centre_of_mass,
    compare_depth,
    dla_scores,
    early_mass,
    layer_components,
    layer_distribution,
    layer_of,
    lens_profile,
    node_patching_scores,
    reference_means,
    region,
    targeted_ablation,
    top_components,
)
from analyses.statistics import Interval, bootstrap_ci, ratio_of_means
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.tasks import collate, get_task, render
from probe import ProbedModel, answer_logit_diff

MASK_ID = 4  # "<mask>" in conftest's tokenizer
N_LAYERS = 3


# --- models and examples ----------------------------------------------------------------------------


@cache
def _folder() -> Path:
    """A random 3-layer Llama and its tokenizer, saved once per session."""
    root = Path(tempfile.mkdtemp(prefix="ar2mdm-depth-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tok = tiny_tokenizer()
    config = tiny_config("llama", len(tok))
    config.num_hidden_layers = N_LAYERS
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def hf_model(writers: str = "all") -> LlamaForCausalLM:
    """The 3-layer model; `writers` says which components keep their output weights:
    "all"; "layer0" (every head and MLP of layers 1 and 2 zeroed); "neuron" (attention of
    layer 0 and neuron 7 of layer 1 only: every other head's and neuron's output zeroed)."""
    model = AutoModelForCausalLM.from_pretrained(_folder()).eval()
    layers = model.model.layers
    with torch.no_grad():
        if writers == "layer0":
            for layer in layers[1:]:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        elif writers == "neuron":
            for i, layer in enumerate(layers):
                if i > 0:
                    layer.self_attn.o_proj.weight.zero_()
                keep = layer.mlp.down_proj.weight[:, 7].clone()
                layer.mlp.down_proj.weight.zero_()
                if i == 1:  # make it matter: a larger input and output (random init is ~0.02)
                    layer.mlp.down_proj.weight[:, 7] = keep * 100
                    layer.mlp.gate_proj.weight[7] *= 20
                    layer.mlp.up_proj.weight[7] *= 20
        elif writers != "all":
            raise ValueError(writers)
    return model


@cache
def probed3(writers: str = "all", kind: str = "ar") -> ProbedModel:
    meta = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID) if kind == "mdm" else None
    return ProbedModel(hf_model(writers), tiny_tokenizer(), meta, backend="torch")


@cache
def examples(task: str = "ioi", n: int = 8, seed: int = 0):
    tok = tiny_tokenizer()
    return tuple(get_task(task, tok).generate_aligned(n, tok, seed=seed))


def items(task: str = "ioi", kind: str = "ar", n: int = 8, seed: int = 0):
    tok = tiny_tokenizer()
    return [render(ex, tok, kind, shift=True, mask_id=MASK_ID) for ex in examples(task, n, seed)]


def hf_logit_diff(model, rendered) -> torch.Tensor:
    batch = collate(rendered, tiny_tokenizer().pad_token_id)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    return answer_logit_diff(logits, rendered)


def with_bias(linear: nn.Linear, bias: torch.Tensor) -> nn.Linear:
    """A copy of `linear` with an added output bias (Llama's projections have none)."""
    new = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(linear.weight)
        new.bias.copy_(bias)
    return new


# --- layers and the layer distribution --------------------------------------------------------------


def test_regions_by_bin_centre() -> None:
    assert [region(i, 3) for i in range(3)] == ["early", "middle", "late"]
    assert [region(i, 4) for i in range(4)] == ["early", "middle", "middle", "late"]
    assert [region(i, 30) for i in range(30)] == ["early"] * 10 + ["middle"] * 10 + ["late"] * 10
    assert region(0, 1) == "middle"
    with pytest.raises(UserError, match="does not exist"):
        region(3, 3)
    assert layer_of("L2.H1") == 2 and layer_of("L1.mlp.neuron5") == 1 and layer_of("embed") is None
    with pytest.raises(UserError, match="not a component"):
        layer_of("L0.resid_pre")
    with pytest.raises(UserError, match="not a component name"):
        layer_of("L0.attn")


def test_layer_distribution_by_hand() -> None:
    scores = {"embed": 10.0, "L0.H0": 3.0, "L0.mlp": -1.0, "L1.H1": 2.0, "L2.mlp": -4.0, "logits": 9.0}
    d = layer_distribution(scores, 3, k=3)
    assert d.top == ("L2.mlp", "L0.H0", "L1.H1") and d.scores == (-4.0, 3.0, 2.0)
    assert d.mass == pytest.approx((3 / 9, 2 / 9, 4 / 9))
    assert d.early_mass == pytest.approx(3 / 9)
    assert d.centre == pytest.approx(3 / 9 * 1 / 6 + 2 / 9 * 1 / 2 + 4 / 9 * 5 / 6)
    assert d.mean_layer == pytest.approx(2 / 9 + 2 * 4 / 9)
    c = layer_distribution(scores, 3, k=3, weight="count")
    assert c.mass == pytest.approx((1 / 3, 1 / 3, 1 / 3)) and c.centre == pytest.approx(0.5)
    every = layer_distribution(scores, 3)  # k=None: all four layered components
    assert every.k == 4 and every.mass == pytest.approx((4 / 10, 2 / 10, 4 / 10))
    # ties keep the given order; the functional forms agree with the dataclass
    tie = layer_distribution({"L1.H0": 1.0, "L0.H0": 1.0, "L2.H0": 1.0}, 3, k=2)
    assert tie.top == ("L1.H0", "L0.H0")
    mass = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(early_mass(mass), torch.tensor([0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        centre_of_mass(mass), torch.tensor([0.5 / 6 + 0.125 + 0.25 * 5 / 6, 5 / 6], dtype=torch.float64)
    )
    assert top_components(scores, 2) == ["embed", "logits"]
    zero = layer_distribution({"L0.H0": 0.0, "L1.H0": 0.0}, 2)
    assert all(math.isnan(m) for m in zero.mass)


def test_layer_distribution_refuses_bad_input(unchecked_types) -> None:
    with pytest.raises(UserError, match="k=5 but only 2"):
        layer_distribution({"L0.H0": 1.0, "L1.mlp": 2.0}, 3, k=5)
    with pytest.raises(UserError, match="k must be a positive integer"):
        layer_distribution({"L0.H0": 1.0}, 3, k=0)
    with pytest.raises(UserError, match="layer 3 does not exist"):
        layer_distribution({"L3.H0": 1.0}, 3)
    with pytest.raises(UserError, match="finite"):
        layer_distribution({"L0.H0": float("nan")}, 3)
    with pytest.raises(UserError, match="no head, MLP or neuron"):
        layer_distribution({"embed": 1.0}, 3)
    with pytest.raises(UserError, match="weight="):
        layer_distribution({"L0.H0": 1.0}, 3, weight="mass")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="not a component"):
        layer_distribution({"L0.resid_post": 1.0}, 3)


# --- bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_true_mean_and_is_seeded() -> None:
    gen = torch.Generator().manual_seed(1)
    x = 1.5 + torch.randn(400, generator=gen)
    ci = bootstrap_ci(x, n_boot=2000, seed=0)
    assert ci.estimate == pytest.approx(float(x.mean())) and ci.contains(1.5)
    width = 2 * 1.96 * float(x.std()) / 20
    assert ci.high - ci.low == pytest.approx(width, rel=0.15)
    assert bootstrap_ci(x, n_boot=2000, seed=0) == ci  # seeded: identical
    assert bootstrap_ci(x, n_boot=2000, seed=1) != ci
    # coverage over many synthetic data sets (nominal 95%)
    hits = 0
    for i in range(100):
        sample = 1.5 + torch.randn(60, generator=torch.Generator().manual_seed(100 + i))
        hits += bootstrap_ci(sample, n_boot=500, seed=i).contains(1.5)
    assert hits >= 88
    # a statistic of paired columns: the ratio of means, by hand
    num, den = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    assert ratio_of_means(num, den).estimate == pytest.approx(1.0)
    const = bootstrap_ci(torch.full((10,), 2.0))
    assert (const.low, const.estimate, const.high) == (2.0, 2.0, 2.0)
    with pytest.raises(UserError, match="non-empty"):
        bootstrap_ci(torch.tensor([]))
    with pytest.raises(UserError, match="level"):
        bootstrap_ci(x, level=1.5)


def test_compare_depth_paired_intervals() -> None:
    n = 50
    gen = torch.Generator().manual_seed(0)
    ar = {
        "L0.H0": 2 + 0.1 * torch.randn(n, generator=gen),
        "L2.H0": 0.1 * torch.randn(n, generator=gen),
        "embed": torch.ones(n),
    }
    mdm = {"L0.H0": 0.1 * torch.randn(n, generator=gen), "L2.H0": 2 + 0.1 * torch.randn(n, generator=gen)}
    cmp = compare_depth(ar, mdm, 3, k=1, task="ioi")
    assert cmp.a.top == ("L0.H0",) and cmp.b.top == ("L2.H0",)
    assert cmp.early_mass_diff.estimate == -1.0 and cmp.early_mass_diff.low == cmp.early_mass_diff.high == -1.0
    assert cmp.centre_diff.estimate == pytest.approx(5 / 6 - 1 / 6)
    assert cmp.early_mass["ar"].estimate == 1.0 and cmp.early_mass["mdm"].estimate == 0.0
    assert compare_depth(ar, mdm, 3, k=2, seed=3).to_dict() == compare_depth(ar, mdm, 3, k=2, seed=3).to_dict()
    noisy = compare_depth(ar, mdm, 3, k=2)
    assert noisy.early_mass_diff.low <= noisy.early_mass_diff.estimate <= noisy.early_mass_diff.high
    floats = compare_depth({"L0.H0": 1.0}, {"L1.H0": 1.0}, 3)
    assert floats.early_mass_diff.estimate == -1.0 and math.isnan(floats.early_mass_diff.low)


# --- logit lens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_lens_profile_ends_at_the_model_and_streams(kind: str) -> None:
    pm = probed3(kind=kind)
    rendered = items("greater_than", kind)  # candidate sets: the lens LD is a logsumexp over each
    profile = lens_profile(pm, rendered, batch_size=3)
    assert profile.points == ["L0.resid_pre", "L0.resid_post", "L1.resid_post", "L2.resid_post"]
    assert profile.ranks.shape == profile.logit_diffs.shape == (4, 8)
    batch = collate(rendered, 0)
    logits = pm(batch)
    torch.testing.assert_close(profile.logit_diffs[-1], answer_logit_diff(logits, batch), atol=1e-5, rtol=0)
    rows = torch.arange(8)
    pos = torch.stack([r.read_positions[0] for r in rendered])
    first = torch.stack([r.correct_ids[0] for r in rendered])
    final = logits[rows, pos]
    assert torch.equal(profile.ranks[-1], (final > final[rows, first][:, None]).sum(1))
    whole = lens_profile(pm, rendered, batch_size=64)
    torch.testing.assert_close(whole.logit_diffs, profile.logit_diffs, atol=1e-5, rtol=0)
    s = profile.summary()
    assert len(s["mean_rank"]) == 4 and 0 <= s["top1"][-1] <= 1
    assert profile.first_point(0.0) == "L0.resid_pre"


# --- ablations --------------------------------------------------------------------------------------


def test_zero_ablation_equals_hand_edited_weights() -> None:
    pm = probed3()
    rendered = items()
    got = ablated_logit_diffs(pm, rendered, ["L0.H1", "L2.mlp", "L1.mlp.neuron7"], method="zero", batch_size=3)
    model = copy.deepcopy(hf_model())
    d_head = pm.config.d_head
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, d_head : 2 * d_head] = 0
        model.model.layers[2].mlp.down_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight[:, 7] = 0
    torch.testing.assert_close(got, hf_logit_diff(model, rendered), atol=1e-5, rtol=0)
    assert torch.equal(ablated_logit_diffs(pm, rendered, [], method="zero"), baseline_logit_diffs(pm, rendered)[0])


def test_mean_ablation_equals_hand_edited_biases() -> None:
    pm = probed3()
    rendered = items()
    comps = ["L0.H1", "L1.mlp.neuron7", "L2.mlp"]
    means = reference_means(pm, rendered, comps, batch_size=3)
    # the streamed means are the masked means over every real token of one big batch
    batch = collate(rendered, 0)
    _, cache = pm.run_with_cache(batch, ["L0.H1", "L1.mlp.neurons", "L2.mlp"])
    real = batch.attention_mask.bool()
    torch.testing.assert_close(means["L0.H1"], cache["L0.H1"][real].mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(means["L1.mlp.neuron7"], cache["L1.mlp.neuron7"][real].mean(), atol=1e-6, rtol=0)
    got = ablated_logit_diffs(pm, rendered, comps, method="mean", means=means)
    model = copy.deepcopy(hf_model())
    d_head = pm.config.d_head
    layers = model.model.layers
    with torch.no_grad():  # head: its W_O columns removed, its mean output added as a bias
        layers[0].self_attn.o_proj.weight[:, d_head : 2 * d_head] = 0
        layers[0].self_attn.o_proj = with_bias(layers[0].self_attn.o_proj, means["L0.H1"])
        w7 = layers[1].mlp.down_proj.weight[:, 7].clone()  # neuron: c * w_7 as a bias
        layers[1].mlp.down_proj.weight[:, 7] = 0
        layers[1].mlp.down_proj = with_bias(layers[1].mlp.down_proj, means["L1.mlp.neuron7"] * w7)
        layers[2].mlp.down_proj.weight.zero_()  # MLP: its mean output, whatever the input
        layers[2].mlp.down_proj = with_bias(layers[2].mlp.down_proj, means["L2.mlp"])
    torch.testing.assert_close(got, hf_logit_diff(model, rendered), atol=1e-5, rtol=0)
    result = ablate(pm, rendered, comps, method="mean", means=means)
    assert result.drop.estimate == pytest.approx(float((result.clean - got).mean()), abs=1e-6)


def test_ablating_the_only_useful_layer() -> None:
    """Only layer 0 writes: patching it from the corrupted run gives exactly the corrupted
    metric, zeroing it gives the embedding-only prediction (computed by hand), and ablating the
    silent layers changes nothing."""
    pm = probed3("layer0")
    rendered = items()
    clean, corrupted = baseline_logit_diffs(pm, rendered)
    assert (clean - corrupted).abs().min() > 1e-3
    layer0 = layer_components(pm, 0)
    torch.testing.assert_close(
        ablated_logit_diffs(pm, rendered, layer0, method="corrupt"), corrupted, atol=1e-5, rtol=0
    )
    model = hf_model("layer0")
    batch = collate(rendered, 0)
    with torch.no_grad():  # embedding -> final norm -> unembedding
        logits = model.lm_head(model.model.norm(model.model.embed_tokens(batch.input_ids)))
    torch.testing.assert_close(
        ablated_logit_diffs(pm, rendered, layer0, method="zero"), answer_logit_diff(logits, batch), atol=1e-5, rtol=0
    )
    for method in ("zero", "mean", "corrupt"):
        torch.testing.assert_close(
            ablated_logit_diffs(
                pm,
                rendered,
                layer_components(pm, [1, 2]),
                method=method,
                means=reference_means(pm, rendered, layer_components(pm, [1, 2])),
            ),
            clean,
            atol=1e-5,
            rtol=0,
        )
    result = ablate(pm, rendered, layer0, method="corrupt")
    assert result.gap_share.estimate == pytest.approx(1.0, abs=1e-5)


def test_node_scores_on_the_constructed_model() -> None:
    pm = probed3("layer0")
    rendered = items()
    scores = node_patching_scores(pm, rendered, batch_size=3)
    assert list(scores) == [n for n in pm.senders() if n != "embed"]
    for name, v in scores.items():
        assert v.shape == (8,)
        if layer_of(name) > 0:
            assert v.abs().max() < 1e-5, name
    # one node by hand: the same patch through ablated_logit_diffs
    clean, _ = baseline_logit_diffs(pm, rendered)
    torch.testing.assert_close(
        scores["L0.H2"], clean - ablated_logit_diffs(pm, rendered, ["L0.H2"], method="corrupt"), atol=1e-5, rtol=0
    )
    dla = dla_scores(pm, rendered)
    for name, v in dla.items():
        if layer_of(name) > 0:
            assert v.abs().max() < 1e-5, name


def test_targeted_ablation_early_against_controls() -> None:
    pm = probed3("layer0")
    rendered = items()
    scores = dict.fromkeys((n for n in pm.senders() if n != "embed"), 0.0)
    scores |= {"L0.H0": 5.0, "L0.H1": -4.0, "L0.mlp": 3.0, "L0.H3": 2.5, "L1.H3": 1.0, "L1.mlp": 0.5, "L2.H2": 0.9}
    result = targeted_ablation(pm, rendered, scores, k=4, method="zero", n_random=3, task="ioi", n_boot=500)
    assert len(result.target.components) == 4 and all(layer_of(c) == 0 for c in result.target.components)
    assert set(result.controls) == {"random", "middle", "late"}
    for where, layer in (("middle", 1), ("late", 2)):
        ctrl = result.controls[where]
        assert len(ctrl.components) == 4 and all(layer_of(c) == layer for c in ctrl.components)
        assert abs(ctrl.drop.estimate) < 1e-5  # silent layers: no drop at all
        assert result.versus[where].estimate == pytest.approx(result.target.drop.estimate, abs=1e-5)
    assert result.target.components == ("L0.H0", "L0.H1", "L0.mlp", "L0.H3")
    # kind-matched (3 heads, 1 MLP), most important of the region first, ties in forward order
    assert result.controls["middle"].components == ("L1.H3", "L1.H0", "L1.H1", "L1.mlp")
    assert result.controls["late"].components == ("L2.H2", "L2.H0", "L2.H1", "L2.mlp")
    rand = result.controls["random"]
    assert len(rand.draw_components) == 3 and all(len(d) == 4 for d in rand.draw_components)
    assert all(not set(d) & set(result.target.components) for d in rand.draw_components)
    assert rand.drop.estimate == pytest.approx(sum(rand.draws) / 3, abs=1e-6)
    again = targeted_ablation(pm, rendered, scores, k=4, method="zero", n_random=3, task="ioi", n_boot=500)
    assert again.to_dict() == result.to_dict()  # seeded
    with pytest.raises(UserError, match="none of the top-1"):
        targeted_ablation(pm, rendered, {"L2.H0": 5.0, "L0.H0": 1.0}, k=1)


def test_ablation_errors_name_the_fix(unchecked_types) -> None:
    pm = probed3()
    rendered = items()
    with pytest.raises(UserError, match="unknown ablation method"):
        ablated_logit_diffs(pm, rendered, ["L0.H0"], method="resample")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="reference_means"):
        ablated_logit_diffs(pm, rendered, ["L0.H0"], method="mean")
    with pytest.raises(UserError, match="cannot ablate"):
        ablated_logit_diffs(pm, rendered, ["L0.resid_pre"], method="zero")
    with pytest.raises(UserError, match="rendered for 'mdm' reading"):
        ablated_logit_diffs(pm, items(kind="mdm"), ["L0.H0"], method="zero")
    with pytest.raises(UserError, match="no examples"):
        baseline_logit_diffs(pm, [])
    assert isinstance(Interval(1.0, 0.0, 2.0).to_dict(), dict)
