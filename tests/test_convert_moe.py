"""Converting a mixture-of-experts ARM (Qwen3-MoE): routers trained or frozen, the source's
load-balancing loss, the MDM probed for its routing.

Independent truths: the source's router weights (bit-equal after a frozen-router run), the Switch
Transformer load-balancing loss computed here by hand (E * sum_e f_e P_e, f the fraction of
top-k assignments, P the mean router probability), and the HF model's own forward.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import WORDS, build_tiny_model, tiny_tokenizer
from safetensors.torch import load_file
from test_probe_moe import moe_model

from ar2mdm.common.errors import UserError
from conversion.moe import RouterLogits, moe_settings
from conversion.train import TrainConfig, train
from probe import ProbedModel


@pytest.fixture
def moe_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainConfig:
    """A tiny Qwen3-MoE ARM (4 experts, top-2, 3 layers) saved as an HF folder, a corpus, 4 steps."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "qwen3-moe-ar"
    moe_model("qwen3_moe").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(40)))
    return TrainConfig(
        model=str(folder), data=str(corpus), out=str(tmp_path / "run"), steps=4, seq_len=16, batch_size=4,
        lr=3e-3, held_out=0.2, eval_blocks=4, seed=1,
    )  # fmt: skip


def experts_and_routers(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    w = load_file(folder / "model.safetensors")
    routers = {k: v for k, v in w.items() if k.endswith("mlp.gate.weight")}
    experts = {k: v for k, v in w.items() if ".mlp.experts." in k}
    return experts, routers


@pytest.mark.e2e
def test_frozen_routers_keep_the_source_weights_and_the_mdm_probes(moe_setup: TrainConfig) -> None:
    source_experts, source_routers = experts_and_routers(Path(moe_setup.model))
    assert len(source_routers) == 3 and source_experts
    result = train(replace(moe_setup, router="freeze"))
    experts, routers = experts_and_routers(result.out)
    assert routers.keys() == source_routers.keys()
    assert all(torch.equal(routers[k], source_routers[k]) for k in routers)  # bit-equal: never trained
    assert any(not torch.equal(experts[k], source_experts[k]) for k in experts)  # the experts trained
    pm = ProbedModel.from_checkpoint(str(result.out), backend="torch")
    assert pm.config.kind == "mdm" and pm.shape.moe_layers == (0, 1, 2)
    ids = torch.randint(5, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    logits, cache = pm.run_with_cache(ids, names="L1.routing")
    torch.testing.assert_close(logits, pm.model(ids, attention_mask=torch.ones_like(ids)).logits, atol=1e-5, rtol=0)
    assert bool(((cache["L1.routing"] > 0).sum(-1) == 2).all())
    trained = train(replace(moe_setup, out=str(Path(moe_setup.out).parent / "run-trained"), router="train"))
    _, moved = experts_and_routers(trained.out)
    assert any(not torch.equal(moved[k], source_routers[k]) for k in moved)  # trained routers move


def test_load_balancing_loss_equals_the_switch_formula_by_hand() -> None:
    model = moe_model("qwen3_moe")
    ids = torch.randint(5, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with RouterLogits(model) as collected:
        model(ids, attention_mask=mask)
        logits = list(collected.logits)
        got = collected.loss(mask)
    E, k = 4, 2
    keep = mask.reshape(-1).bool()
    f = torch.zeros(E)
    p = torch.zeros(E)
    for layer in logits:
        probs = layer.float().softmax(-1)[keep]
        top = probs.topk(k, dim=-1).indices
        f += torch.bincount(top.reshape(-1), minlength=E).float()
        p += probs.sum(0)
    n = keep.sum() * len(logits)
    expected = E * ((f / n) * (p / n)).sum()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_aux_loss_source_coefficient_and_its_effect(moe_setup: TrainConfig) -> None:
    model = moe_model("qwen3_moe")
    assert moe_settings(model, "train", "source") == (False, pytest.approx(0.001))  # Qwen3-MoE's router_aux_loss_coef
    assert moe_settings(model, "freeze", "off") == (True, 0.0)
    off = train(replace(moe_setup, aux_loss="off", steps=2))
    strong = train(replace(moe_setup, aux_loss="5", steps=2, out=str(Path(moe_setup.out).parent / "run-aux")))
    _, r_off = experts_and_routers(off.out)
    _, r_aux = experts_and_routers(strong.out)
    assert any(not torch.equal(r_off[k], r_aux[k]) for k in r_off)  # the balancing loss reached the routers


def test_router_options_on_a_dense_model_or_misspelt_are_errors(tmp_path: Path, moe_setup: TrainConfig) -> None:
    with pytest.raises(UserError, match="router must be 'train' or 'freeze'"):
        replace(moe_setup, router="frozen").validate()
    with pytest.raises(UserError, match="aux_loss must be 'source', 'off' or a coefficient"):
        replace(moe_setup, aux_loss="lots").validate()
    dense = build_tiny_model("llama", tmp_path / "dense")
    with pytest.raises(UserError, match="no mixture-of-experts layers"):
        train(replace(moe_setup, model=str(dense), router="freeze", out=str(tmp_path / "run-dense")))
