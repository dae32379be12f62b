"""analyses.neurons: every metric against a hand computation, attributions against plain autograd
on the HF model, streaming against one pass, and a constructed model whose only useful neuron is
known (see test_depth for the models)."""

from __future__ import annotations

import math

import pytest
import torch
from test_depth import MASK_ID, hf_model, items, probed3

from analyses.neurons import (
    Moments,
    UnitProfile,
    causal_check,
    compare_profiles,
    excess_kurtosis,
    gini,
    hoyer,
    normalised_entropy,
    profile_units,
    selectivity,
    selectivity_index,
    unit_attributions,
    unit_names,
    units_for_share,
    vocab_projection,
)
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import collate
from probe.lens import answer_logit_diff

# --- metrics by hand --------------------------------------------------------------------------------


def test_gini_by_hand() -> None:
    assert float(gini(torch.tensor([0.0, 0.0, 0.0, 1.0]))) == pytest.approx(3 / 4)
    assert float(gini(torch.tensor([1.0, 1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    # mean absolute difference form: sum_ij |xi - xj| / (2 n^2 mean) = 20 / 80
    assert float(gini(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == pytest.approx(0.25)
    assert float(gini(torch.tensor([-4.0, 1.0, 3.0, 2.0]))) == pytest.approx(0.25)  # magnitudes
    rows = gini(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(rows, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert math.isnan(float(gini(torch.zeros(3))))


def test_hoyer_by_hand() -> None:
    assert float(hoyer(torch.tensor([0.0, 0.0, 0.0, 1.0]))) == pytest.approx(1.0)
    assert float(hoyer(torch.tensor([2.0, 2.0, 2.0, 2.0]))) == pytest.approx(0.0)
    assert float(hoyer(torch.tensor([3.0, 4.0]))) == pytest.approx((math.sqrt(2) - 7 / 5) / (math.sqrt(2) - 1))
    with pytest.raises(UserError, match="at least 2"):
        hoyer(torch.tensor([1.0]))


def test_kurtosis_by_hand() -> None:
    # mean 2.5; m2 = 1.25; m4 = 2.5625; 2.5625 / 1.5625 - 3
    assert float(excess_kurtosis(torch.tensor([1.0, 2.0, 3.0, 4.0]))) == pytest.approx(2.5625 / 1.5625 - 3)
    # one outlier among nine zeros: central moments about the mean 0.1, summed directly
    x = torch.tensor([0.0] * 9 + [1.0])
    d = x - 0.1
    assert float(excess_kurtosis(x)) == pytest.approx(float((d**4).mean() / (d**2).mean() ** 2 - 3))
    assert math.isnan(float(excess_kurtosis(torch.ones(5))))


def test_entropy_and_selectivity_by_hand() -> None:
    assert float(normalised_entropy(torch.tensor([1.0, 1.0]))) == pytest.approx(1.0)
    assert float(normalised_entropy(torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    assert float(normalised_entropy(torch.tensor([2.0, 1.0, 1.0]))) == pytest.approx(h)
    assert float(selectivity_index(torch.tensor([4.0, 1.0, 1.0]))) == pytest.approx(3 / 5)
    assert float(selectivity_index(torch.tensor([0.0, 0.0, 2.0]))) == pytest.approx(1.0)
    assert float(selectivity_index(torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    sel = selectivity(torch.tensor([3.0, 1.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))
    sd = math.sqrt(2.0)
    torch.testing.assert_close(sel, torch.tensor([2 / sd, -1 / sd, -1 / sd], dtype=torch.float64))
    assert torch.isnan(selectivity(torch.tensor([3.0, 1.0]), torch.zeros(2))).all()
    with pytest.raises(UserError, match="differ in shape"):
        selectivity(torch.ones(3), torch.ones(2))


def test_units_for_share_by_hand() -> None:
    assert units_for_share(torch.tensor([1.0, 5.0, -3.0, 1.0])) == {0.5: 1, 0.8: 2, 0.9: 3}
    assert units_for_share(torch.tensor([1.0, 1.0, 1.0, 1.0]), (0.25, 0.5, 1.0)) == {0.25: 1, 0.5: 2, 1.0: 4}
    with pytest.raises(UserError, match="zero"):
        units_for_share(torch.zeros(3))
    with pytest.raises(UserError, match="shares"):
        units_for_share(torch.ones(3), (1.5,))


def test_streaming_moments_equal_one_pass() -> None:
    x = torch.randn(103, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 100
    m = Moments()
    for chunk in x.split(17):
        m.update(chunk)
    assert m.n == 103
    torch.testing.assert_close(m.mean, x.mean(0))
    torch.testing.assert_close(m.var, x.var(0, unbiased=False))
    torch.testing.assert_close(m.kurtosis, excess_kurtosis(x.T))


# --- attributions against autograd -----------------------------------------------------------------


def hand_attributions(model, rendered, kind: str) -> torch.Tensor:
    """[N, U] AtP by hand on the HF model: hooks on the down / output projections, autograd."""
    batch = collate(rendered, 0)
    layers = model.model.layers
    d_head = model.config.hidden_size // model.config.num_attention_heads

    def run(ids, grad: bool):
        seen = {}

        def pre(i):
            def hook(module, args):
                if grad:
                    args[0].retain_grad()
                seen[("in", i)] = args[0]

            return hook

        def post(i):
            def hook(module, args, out):
                if grad:
                    out.retain_grad()
                seen[("out", i)] = out

            return hook

        handles = []
        for i, layer in enumerate(layers):
            proj = layer.mlp.down_proj if kind == "neurons" else layer.self_attn.o_proj
            handles.append(proj.register_forward_pre_hook(pre(i)))
            handles.append(proj.register_forward_hook(post(i)))
        with torch.set_grad_enabled(grad):
            logits = model(ids, attention_mask=batch.attention_mask).logits
            if grad:
                answer_logit_diff(logits, rendered).sum().backward()
        for h in handles:
            h.remove()
        return seen

    clean, corrupt = run(batch.input_ids, True), run(batch.corrupted_ids, False)
    real = batch.attention_mask[..., None].float()
    cols = []
    for i, layer in enumerate(layers):
        if kind == "neurons":
            a, b = clean[("in", i)], corrupt[("in", i)]
            cols.append(((b - a) * a.grad * real).sum(1))
        else:
            w = layer.self_attn.o_proj.weight
            grad = clean[("out", i)].grad
            for h in range(model.config.num_attention_heads):
                s = slice(h * d_head, (h + 1) * d_head)
                delta = (corrupt[("in", i)][..., s] - clean[("in", i)][..., s]) @ w[:, s].T
                cols.append(((delta * grad).sum(-1) * real[..., 0]).sum(1)[:, None])
    return torch.cat(cols, 1).detach().double()


@pytest.mark.parametrize("kind", ["neurons", "heads"])
def test_attributions_equal_autograd_on_the_hf_model(kind: str) -> None:
    pm = probed3()
    rendered = items()
    got = unit_attributions(pm, rendered, kind, batch_size=3)
    assert got.shape == (8, len(unit_names(pm, kind)))
    torch.testing.assert_close(got, hand_attributions(hf_model(), rendered, kind), atol=1e-5, rtol=1e-4)


# --- profiles ---------------------------------------------------------------------------------------


def two_tasks(kind: str = "ar"):
    return {"ioi": items("ioi", kind), "greater_than": items("greater_than", kind)}


def test_profile_statistics_by_hand_and_streaming() -> None:
    pm = probed3()
    tasks = two_tasks()
    prof = profile_units(pm, tasks, batch_size=3, top_k_tokens=4)
    whole = profile_units(pm, tasks, batch_size=64, top_k_tokens=4)
    for f in ("attr_mean", "attr_var", "attr_signed", "act_mean", "act_var", "act_abs", "token_kurtosis", "top_values"):
        torch.testing.assert_close(getattr(prof, f), getattr(whole, f), atol=1e-6, rtol=1e-5)
    assert prof.units == unit_names(pm, "neurons") and prof.tasks == ["ioi", "greater_than"]
    assert prof.counts.tolist() == [8, 8] and prof.token_count == sum(
        len(r.input_ids) for t in tasks.values() for r in t
    )
    for t, name in enumerate(tasks):
        attr = unit_attributions(pm, tasks[name], "neurons")
        torch.testing.assert_close(prof.attr_mean[:, t], attr.abs().mean(0))
        torch.testing.assert_close(prof.attr_var[:, t], attr.abs().var(0, unbiased=False))
        torch.testing.assert_close(prof.attr_signed[:, t], attr.mean(0))
    # activations at the read position, and every token's activation, from one plain cache
    acts, read = [], {}
    for name, rendered in tasks.items():
        batch = collate(rendered, 0)
        _, cache = pm.run_with_cache(batch, "L*.mlp.neurons")
        x = torch.cat([cache[f"L{i}.mlp.neurons"] for i in range(3)], -1).double()
        pos = torch.stack([r.read_positions[0] for r in rendered])
        read[name] = x[torch.arange(len(pos)), pos]
        acts.append(x[batch.attention_mask.bool()])
    every = torch.cat(acts)
    torch.testing.assert_close(prof.act_mean[:, 1], read["greater_than"].mean(0))
    torch.testing.assert_close(prof.act_abs[:, 0], read["ioi"].abs().mean(0))
    torch.testing.assert_close(prof.token_kurtosis, excess_kurtosis(every.T), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prof.top_values, every.topk(4, dim=0).values.T)
    # derived metrics are the pure functions applied to the profile's tensors
    torch.testing.assert_close(prof.selectivity(), selectivity(prof.attr_mean, prof.attr_var))
    torch.testing.assert_close(prof.entropy("activation"), normalised_entropy(prof.act_abs))
    torch.testing.assert_close(prof.selectivity_index(), selectivity_index(prof.attr_mean))
    c = prof.concentration("ioi")
    assert c["gini"] == pytest.approx(float(gini(prof.attr_mean[:, 0])))
    assert c["k50"] == units_for_share(prof.attr_mean[:, 0])[0.5] and c["n_units"] == 3 * 64
    s = prof.summary()
    assert set(s["concentration"]) == {"ioi", "greater_than"} and "selectivity_index" in s["attribution"]
    heads = profile_units(pm, tasks, kind="heads", batch_size=5)
    assert heads.attr_mean.shape == (12, 2) and heads.units[0] == "L0.H0"


def test_the_only_useful_neuron_is_found() -> None:
    """Only neuron 7 of layer 1 (besides layer-0 attention) writes into the residual stream: it
    carries all neuron attribution, tops both rankings, and ablating it moves the metric while
    ablating random neurons of the same layer changes nothing at all."""
    pm = probed3("neuron")
    tasks = two_tasks()
    prof = profile_units(pm, tasks, batch_size=4)
    j = prof.units.index("L1.mlp.neuron7")
    others = torch.ones(len(prof.units), dtype=torch.bool)
    others[j] = False
    assert prof.attr_mean[others].abs().max() == 0 and prof.attr_mean[j].min() > 1e-4
    for task in tasks:
        assert prof.ranking(task, "attribution")[0] == "L1.mlp.neuron7"
        assert prof.ranking(task, "selectivity")[0] == "L1.mlp.neuron7"  # the others are NaN: last
        c = prof.concentration(task)
        assert (c["k50"], c["k80"], c["k90"]) == (1, 1, 1)
        assert c["gini"] == pytest.approx((len(prof.units) - 1) / len(prof.units), abs=1e-6)
        assert c["hoyer"] == pytest.approx(1.0, abs=1e-6)
    for method in ("zero", "mean"):
        check = causal_check(pm, prof, tasks, "ioi", n_units=1, by="attribution", method=method, n_random=4, n_boot=300)
        assert check.units == ("L1.mlp.neuron7",)
        assert (check.target.ablated - check.target.clean).abs().min() > 1e-4
        assert check.random.ablated.sub(check.random.clean).abs().max() < 1e-5
        assert all(
            len(d) == 1 and d[0].startswith("L1.mlp.neuron") and d[0] != "L1.mlp.neuron7"
            for d in check.random.draw_components
        )
        assert check.versus_random.estimate == pytest.approx(check.target.drop.estimate, abs=1e-5)
        assert set(check.off_target) == {"greater_than"}
    heads = profile_units(pm, tasks, kind="heads", batch_size=4)
    silent = [i for i, u in enumerate(heads.units) if not u.startswith("L0.")]
    assert heads.attr_mean[silent].abs().max() < 1e-6


def test_causal_check_is_seeded_and_refuses_bad_input(unchecked_types) -> None:
    pm = probed3()
    tasks = two_tasks()
    prof = profile_units(pm, tasks, batch_size=8)
    a = causal_check(pm, prof, tasks, "greater_than", n_units=3, n_random=2, n_boot=200, off_target=False)
    b = causal_check(pm, prof, tasks, "greater_than", n_units=3, n_random=2, n_boot=200, off_target=False)
    assert a.to_dict() == b.to_dict() and a.off_target == {}
    with pytest.raises(UserError, match="no examples here"):
        causal_check(pm, prof, tasks, "sudoku")
    with pytest.raises(UserError, match="n_units"):
        causal_check(pm, prof, tasks, "ioi", n_units=0)
    with pytest.raises(UserError, match="rank units by"):
        prof.ranking("ioi", "kurtosis")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="not in this profile"):
        prof.concentration("sudoku")
    one = profile_units(pm, {"ioi": tasks["ioi"]}, batch_size=8)
    with pytest.raises(UserError, match="at least two tasks"):
        one.selectivity()
    heads = profile_units(pm, tasks, kind="heads", batch_size=8)
    other = UnitProfile(**{**heads.__dict__, "units": heads.units[:-1]})
    with pytest.raises(UserError, match="another shape"):
        causal_check(pm, other, tasks, "ioi", n_units=1)
    with pytest.raises(UserError, match="'neurons' or 'heads'"):
        profile_units(pm, tasks, kind="mlps")  # type: ignore[arg-type]


def test_profile_on_an_mdm_reading() -> None:
    pm = probed3(kind="mdm")
    tasks = two_tasks("mdm")
    prof = profile_units(pm, tasks, kind="heads", batch_size=8)
    assert torch.isfinite(prof.attr_mean).all() and prof.counts.tolist() == [8, 8]
    assert tasks["ioi"][0].input_ids.tolist().count(MASK_ID) >= 1


def test_vocab_projection_by_hand() -> None:
    pm = probed3()
    model = hf_model()
    proj = vocab_projection(pm, "L2.mlp.neuron5", k=3)
    w = model.model.layers[2].mlp.down_proj.weight[:, 5]
    logits = model.lm_head.weight @ (model.model.norm.weight * w)
    assert proj.top_ids == logits.topk(3).indices.tolist()
    assert proj.bottom_ids == (-logits).topk(3).indices.tolist()
    assert proj.top_values == pytest.approx(logits.topk(3).values.tolist(), abs=1e-5)
    with pytest.raises(UserError, match="Pass L"):
        vocab_projection(pm, "L0.H1")


def test_compare_profiles_estimates_and_intervals() -> None:
    tasks = two_tasks()
    a = profile_units(probed3(), tasks, batch_size=8, keep=True)
    b = profile_units(probed3("neuron"), tasks, batch_size=8, keep=True)
    for task in tasks:
        torch.testing.assert_close(a.per_example[task].abs().mean(0), a.attr_mean[:, a.tasks.index(task)])
    cmp = compare_profiles(a, b, n_boot=300)
    for task in tasks:
        ca, cb = a.concentration(task), b.concentration(task)
        assert cmp[f"{task}:gini"]["a"].estimate == pytest.approx(ca["gini"])
        assert cmp[f"{task}:share_k80"]["b"].estimate == pytest.approx(cb["share_k80"])
        assert cmp[f"{task}:gini"]["diff"].estimate == pytest.approx(cb["gini"] - ca["gini"])
        # the constructed model has one neuron with all attribution, in every resample
        assert cmp[f"{task}:share_k90"]["b"].low == cmp[f"{task}:share_k90"]["b"].high == 1 / len(b.units)
    assert cmp["median_selectivity_index"]["a"].estimate == pytest.approx(float(a.selectivity_index().nanmedian()))
    same = compare_profiles(a, a, n_boot=300)
    assert all(v["diff"].low == v["diff"].high == 0 for v in same.values())  # paired: identical resamples
    assert compare_profiles(a, b, n_boot=300) == cmp  # seeded
    with pytest.raises(UserError, match="keep=True"):
        compare_profiles(profile_units(probed3(), tasks, batch_size=8), b)
