"""Gradients w.r.t. node outputs and receiver inputs agree with finite differences taken through
interventions (float64 tiny models, Richardson-extrapolated central differences; one backward pass
gives all the gradients)."""

from __future__ import annotations

import types
from functools import cache

import pytest
import torch
from test_probe import batch, folder

from ar2mdm.common.errors import UserError
from conversion.checkpoints import load_ar
from conversion.mdm import load_mdm
from probe import ProbedModel

EPS = 1e-3  # relative to the perturbed tensor's scale


def exact_rms_norms(model) -> None:
    """Make HF's RMSNorms compute in the model's dtype. They upcast to float32 only, which would
    put float32 rounding (~1e-7 relative) into a float64 model and drown finite differences."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            offset = 1.0 if type(module).__name__.startswith("Gemma") else 0.0  # Gemma scales by 1 + w

            def forward(self, x, eps=eps, offset=offset):
                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (offset + self.weight)

            module.forward = types.MethodType(forward, module)


@cache
def probed64(family: str, kind: str) -> ProbedModel:
    path = folder(family, kind)
    loaded = load_mdm(path, dtype=torch.float64) if kind == "mdm" else load_ar(path, dtype=torch.float64)
    exact_rms_norms(loaded.model)
    return ProbedModel.from_checkpoint(loaded)


def metric_weights(vocab: int) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# (name, how to perturb it by `d`): node outputs through `add`, receivers through their own edit
# (q/k/v) or an edge patch from embed whose new value is embed + d (the MLP's and logits' input).
TARGETS = [
    ("out", "embed"),
    ("out", "L0.H1"),
    ("out", "L1.H3"),
    ("out", "L0.mlp"),
    ("out", "L1.mlp"),
    ("out", "L0.mlp.neuron3"),
    ("out", "L1.resid_pre"),
    ("out", "L0.resid_post"),
    ("in", "L1.H2.q"),
    ("in", "L1.H1.k"),
    ("in", "L1.H0.v"),
    ("in", "L1.mlp"),
    ("in", "logits"),
]


@pytest.fixture
def float64_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF's eager attention takes its softmax in float32 even in a float64 model; keep float64."""
    softmax = torch.nn.functional.softmax

    def exact(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", exact)


def scale_of(side: str, name: str, clean) -> torch.Tensor:
    """The typical size of what is perturbed: the node's value, or the residual a receiver reads."""
    if side == "out":
        return clean[name].std()
    return clean["L1.resid_post" if name == "logits" else "L1.resid_pre"].std()


@pytest.mark.parametrize(("family", "kind"), [("llama", "ar"), ("gpt2", "mdm"), ("gemma3_text", "mdm")])
def test_gradients_match_finite_differences(family: str, kind: str, float64_softmax: None) -> None:
    ids, _, mask = batch(family)
    pm = probed64(family, kind)
    w = metric_weights(pm.config.d_vocab)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 5] * w).sum() + logits[0, 9, 7]

    outs = [n for side, n in TARGETS if side == "out"]
    ins = [n for side, n in TARGETS if side == "in"]
    result = pm.run_with_grads(ids, metric, outputs=outs, receivers=ins, attention_mask=mask)
    with torch.no_grad():
        torch.testing.assert_close(result.metric, metric(pm(ids, attention_mask=mask)))
    _, clean = pm.run_with_cache(ids, attention_mask=mask)

    def central(side: str, name: str, d: torch.Tensor, eps: float) -> torch.Tensor:
        values = []
        for sign in (1.0, -1.0):
            with pm.intervene() as iv:
                if side == "out" or name.endswith((".q", ".k", ".v")):
                    iv.add(name, sign * eps * d)
                else:  # the MLP's or the final norm's own input: via an edge from embed
                    iv.patch_edge("embed", name, clean["embed"] + sign * eps * d)
                values.append(metric(pm(ids, attention_mask=mask)))
        return (values[0] - values[1]) / (2 * eps)

    gen = torch.Generator().manual_seed(7)
    for side, name in TARGETS:
        grad = (result.outputs if side == "out" else result.inputs)[name]
        d = torch.randn(grad.shape, generator=gen, dtype=torch.float64) * scale_of(side, name, clean)
        finite = (4 * central(side, name, d, EPS / 2) - central(side, name, d, EPS)) / 3  # Richardson: error O(eps^4)
        analytic = (grad * d).sum()
        assert abs(float(analytic)) > 1e-4, f"{name}: gradient vanishes, the check would be empty"
        torch.testing.assert_close(analytic, finite, rtol=1e-6, atol=1e-12, msg=f"{side} {name}")


def test_head_gradients_share_their_layer_and_neurons_slice() -> None:
    ids, _, mask = batch()
    pm = probed64("llama", "ar")
    result = pm.run_with_grads(
        ids,
        lambda lg: lg[:, -1, :5].sum(),
        attention_mask=mask,
        outputs=["L0.H*", "L0.mlp.neurons", "L0.mlp.neuron3"],
        names="L0.H0",
    )
    torch.testing.assert_close(result.outputs["L0.H0"], result.outputs["L0.H3"])
    torch.testing.assert_close(result.outputs["L0.mlp.neuron3"], result.outputs["L0.mlp.neurons"][..., 3])
    assert list(result.cache) == ["L0.H0"]


def test_gradient_errors() -> None:
    ids, _, mask = batch()
    pm = probed64("llama", "ar")
    with pytest.raises(UserError, match="scalar"):
        pm.run_with_grads(ids, lambda lg: lg[:, -1], outputs="L0.H0")
    with pytest.raises(UserError, match="does not depend"):
        pm.run_with_grads(ids, lambda lg: torch.tensor(1.0), outputs="L0.H0")
    with pytest.raises(UserError, match="not available here"):
        pm.run_with_grads(ids, lambda lg: lg.sum(), receivers="L0.H0")
