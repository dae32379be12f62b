"""The published mixture-of-experts diffusion LMs against a forward written from their own modeling
code (tests/moe_reference.py: no transformers), the routing included; how they are told apart
from dense LLaDA; broken checkpoints (an expert missing, another expert count, a router setting
transformers' class does not compute) as one-line errors. The samplers, EAP-IG, compare and the
missing / extra tensor checks run for them in tests/test_published.py with the dense families.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import replicas
import replicas_moe
import torch
from moe_reference import reference_forward
from safetensors.torch import load_file, save_file
from test_published import edit_json

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import FAMILIES, detect_family
from conversion.checkpoints import load_any
from probe import ProbedModel
from probe.moe import topk_of

NAMES = tuple(replicas_moe.BUILDERS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("published-moe")
    made: dict[str, replicas.Replica] = {}

    def get(name: str) -> replicas.Replica:
        if name not in made:
            made[name] = replicas_moe.BUILDERS[name](root / name)
        return made[name]

    return get


def ids_of(n: int = 2, t: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 300, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_routing_equal_the_familys_own_forward(name: str, built) -> None:
    """The loaded model (bidirectional) and the probe (the family's block-causal mask, where it has
    one) give the logits of the forward written from the family's modeling code, and the probe's
    recorded routing is its routing: the same experts per token with the same weights."""
    r = built(name)
    loaded = load_any(str(r.path))
    ids = ids_of()
    t = ids.shape[1]
    with torch.no_grad():
        plain = loaded.model(ids).logits
    ref_all, _ = reference_forward(r.path, ids, block_size=t)  # one block: all positions visible
    torch.testing.assert_close(plain.double(), ref_all, atol=1e-5, rtol=0)
    pm = ProbedModel.from_checkpoint(loaded, backend="torch")
    assert pm.config.block_size == r.block_size
    moe_layers = pm.shape.moe_layers
    logits, cache = pm.run_with_cache(ids, names=[f"L{layer}.routing" for layer in moe_layers])
    ref, routing = reference_forward(r.path, ids, block_size=r.block_size or t)
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=0)
    assert set(routing) == set(moe_layers)
    k = pm.config.top_k
    for layer in moe_layers:
        got_ids, got_w = topk_of(cache[f"L{layer}.routing"].reshape(-1, pm.shape.n_experts), k)
        order = got_ids.argsort(-1)
        want_ids, want_w = routing[layer]
        assert torch.equal(got_ids.gather(-1, order), want_ids), f"L{layer}: other experts chosen"
        torch.testing.assert_close(got_w.gather(-1, order).double(), want_w, atol=1e-5, rtol=0)
    if name == "llada2":  # the shared expert and the dense first layer are there too
        assert pm.shape.shared_expert and moe_layers == (1,)
        assert "L0.mlp.neurons" in pm.cache_names()


def test_llada_moe_is_told_from_dense_llada_by_its_experts(built, tmp_path: Path) -> None:
    """Both declare model_type "llada": LLaDA-MoE by its architecture, or by num_experts when a
    config lists no architecture; dense LLaDA's config has no num_experts."""
    moe, dense = built("llada-moe"), replicas.BUILDERS["llada"](tmp_path / "dense")
    assert detect_family(moe.path) is FAMILIES["llada-moe"]
    assert detect_family(dense.path) is FAMILIES["llada"]
    folder = copy_of(moe.path, tmp_path)
    edit_json(folder / "config.json", architectures=None)
    assert detect_family(folder) is FAMILIES["llada-moe"]
    meta = load_any(str(folder)).meta
    assert (meta.source_format, meta.mask_id, meta.shift) == ("llada-moe", moe.mask_id, False)


def copy_of(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"copy-{path.name}"
    shutil.copytree(path, out)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_expert_or_another_expert_count_is_a_clear_error(name: str, built, tmp_path: Path) -> None:
    r = built(name)
    layer = 1
    folder = copy_of(r.path, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    gone = {k: v for k, v in tensors.items() if f"layers.{layer}.mlp.experts.2." not in k}
    assert len(gone) == len(tensors) - 3
    save_file(gone, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=rf"lack expert\(s\) \[2\] of layer {layer}.*Download the checkpoint again"
    ):
        load_any(str(folder))
    save_file(tensors, str(folder / "model.safetensors"))
    key = "num_experts"
    edit_json(folder / "config.json", **{key: 8})
    with pytest.raises(CheckpointError, match="holds 4 experts, but config.json says each MoE layer has 8"):
        load_any(str(folder))


@pytest.mark.parametrize(
    ("name", "setting", "value"),
    [
        ("llada2", "score_function", "softmax"),
        ("llada2", "use_bias", True),
        ("llada-moe", "moe_router_enable_expert_bias", True),
        ("llada-moe", "partial_rotary_factor", 0.5),
        ("llada-moe", "shared_expert_intermediate_size", 64),
    ],
)
def test_a_router_or_layout_setting_the_mapping_does_not_cover_is_refused(
    name: str, setting: str, value, built, tmp_path: Path
) -> None:
    folder = copy_of(built(name).path, tmp_path)
    edit_json(folder / "config.json", **{setting: value})
    with pytest.raises(CheckpointError, match=rf"sets \{{'{setting}': {value!r}\}}.*--trust-remote-code"):
        load_any(str(folder))
