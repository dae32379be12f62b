"""EAP-GP's GradPath (`analyses.attribution.EAPGP.path`) against plain autograd through the Hugging
Face model, and the straight EAP-IG path it replaces."""

from __future__ import annotations

import torch
from test_probe import batch, hf, probed

from analyses.attribution import EAPGP, EAPIGInputs, PathContext
from analyses.metrics import Targets


def last_position(n: int, length: int) -> Targets:
    """Targets reading the last position of each of n rows (answer and counterfactual ids unused
    by the path)."""
    ids = torch.zeros(n, 1, dtype=torch.long)
    ok = torch.ones(n, 1, dtype=torch.bool)
    return Targets(torch.full((n,), length - 1), ids, ok, ids, ok)


def setup(steps: int = 4):
    pm = probed("llama")
    ids, corrupted, mask = batch("llama")
    ids, corrupted, mask = ids[:1], corrupted[:1], mask[:1]  # one unpadded row
    _, clean = pm.run_with_cache(ids, names=["embed"])
    corrupt_logits, corrupt = pm.run_with_cache(corrupted, names=["embed"])
    along = PathContext(
        {"input_ids": ids, "attention_mask": mask}, last_position(*ids.shape), corrupt_logits[:, -1], mask
    )
    ends = {"embed": (corrupt["embed"], clean["embed"])}
    return pm, ids, ends, along


def test_the_first_step_descends_the_logit_distance_as_autograd_says() -> None:
    steps = 4
    pm, ids, ends, along = setup(steps)
    corrupt, clean = ends["embed"]
    points = list(EAPGP(steps=steps).path(pm, ["embed"], ends, along))
    assert len(points) == steps
    # independent: autograd through the HF model fed the clean embedding
    x = clean.clone().requires_grad_(True)
    logits = hf("llama")(inputs_embeds=x).logits
    ((logits[:, -1] - along.corrupt_rows) ** 2).sum().backward()
    g = x.grad
    span = (clean - corrupt).norm()
    expected = clean - span / steps * g / g.norm()
    torch.testing.assert_close(points[0]["embed"], expected, rtol=1e-4, atol=1e-5)


def test_every_step_is_a_fixed_fraction_of_the_span() -> None:
    """Each step is ||x - x'|| / steps long (a step may overshoot the distance's minimum: the
    length is fixed, not searched)."""
    steps = 4
    pm, ids, ends, along = setup(steps)
    corrupt, clean = ends["embed"]
    span = float((clean - corrupt).norm())
    previous = clean
    for p in EAPGP(steps=steps).path(pm, ["embed"], ends, along):
        assert abs(float((p["embed"] - previous).norm()) - span / steps) < 1e-4 * span
        previous = p["embed"]


def test_eap_ig_path_is_the_straight_midpoint_line() -> None:
    pm, ids, ends, along = setup()
    corrupt, clean = ends["embed"]
    points = list(EAPIGInputs(steps=4).path(pm, ["embed"], ends, along))
    for k, p in enumerate(points):
        torch.testing.assert_close(p["embed"], corrupt + (k + 0.5) / 4 * (clean - corrupt))
