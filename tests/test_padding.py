"""Padding never changes a real token's logits, on any path that batches text.

The matrix: families with rotary positions (Llama, Qwen2, Gemma3, Mistral: all grouped-query
here, 4 query heads over 2 KV heads) and with learned absolute positions (GPT-2), x padding on
the left or right x the three probe backends x AR and MDM. Each batch holds prompts of three
different lengths; every row's logits at its real tokens must equal the logits of that prompt run
alone (1e-5). Left padding broke absolute-position models until every backend passed position
ids that skip padding (`ar2mdm.diffusion.attention.position_ids`).

Then the paths built on top, on GPT-2 (the family where a wrong position shows): task metrics,
greedy generation, EAP-IG per example, the generation evals' samplers and gen-PPL all give the
same numbers batched as one example at a time.
"""

from __future__ import annotations

import pytest
import torch
from test_probe import MASK_ID, folder, probed
from transformers import AutoTokenizer

from analyses.circuits import attribute
from analyses.generation import SamplerSpec, gen_ppl, task_accuracy
from ar2mdm.tasks import Example, render
from ar2mdm.tasks.evaluate import greedy_generate, logit_metrics
from ar2mdm.tasks.jsonl import JsonlTask
from conversion.checkpoints import load_any

FAMILIES = ("llama", "qwen2", "gemma3_text", "mistral", "gpt2")
TEXTS = (
    "When Mary and John went to the store , John gave a drink to",
    "Then Alice and Bob went",
    "the war lasted from year 17 to",
)


def _padded(family: str, side: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    tok = AutoTokenizer.from_pretrained(folder(family))
    tok.padding_side = side
    enc = tok(list(TEXTS), return_tensors="pt", padding=True)
    alone = [tok(t, return_tensors="pt").input_ids for t in TEXTS]
    assert len({a.shape[1] for a in alone}) == len(TEXTS)  # three lengths: real padding
    return enc.input_ids, enc.attention_mask, alone


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["torch", "nnsight", "tl"])
@pytest.mark.parametrize("kind", ["ar", "mdm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_real_token_logits_do_not_depend_on_padding(family: str, kind: str, backend: str, side: str) -> None:
    pm = probed(family, kind, backend)
    ids, mask, alone = _padded(family, side)
    batched = pm(ids, attention_mask=mask)
    for row, single in enumerate(alone):
        real = mask[row].bool()
        torch.testing.assert_close(batched[row, real], pm(single)[0], atol=1e-5, rtol=0, msg=f"row {row}")


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_text_inputs_pad_on_the_tokenizers_side_and_still_agree(kind: str) -> None:
    """`pm(list_of_texts)` pads with the tokenizer; a left-padding tokenizer must not matter."""
    pm = probed("gpt2", kind)
    side = pm.tokenizer.padding_side
    try:
        pm.tokenizer.padding_side = "left"
        batched = pm(list(TEXTS))
        _, mask, alone = _padded("gpt2", "left")
    finally:
        pm.tokenizer.padding_side = side
    for row, single in enumerate(alone):
        torch.testing.assert_close(batched[row, mask[row].bool()], pm(single)[0], atol=1e-5, rtol=0)


# --- paths above the probe, on GPT-2 ----------------------------------------------------------


def _examples() -> list[Example]:
    """IOI-like pairs of three different lengths (clean and corrupted always of equal length)."""
    return [
        Example(
            task="t",
            prompt="When Mary and John went to the store , John gave a drink to",
            answer=" Mary",
            corrupted_prompt="When Tom and Sarah went to the store , Alice gave a drink to",
            correct=(" Mary",),
            counterfactual=(" John",),
        ),
        Example(
            task="t",
            prompt="Then Alice gave a drink to",
            answer=" Bob",
            corrupted_prompt="Then Sarah gave a drink to",
            correct=(" Bob",),
            counterfactual=(" Alice",),
        ),
        Example(
            task="t",
            prompt="he said",
            answer=" yes",
            corrupted_prompt="she said",
            correct=(" yes",),
            counterfactual=(" no",),
        ),
    ]


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_task_metrics_batched_equal_one_by_one(kind: str) -> None:
    loaded = load_any(folder("gpt2", kind))
    exs = _examples()
    whole = logit_metrics(
        loaded.model, loaded.tokenizer, exs, mode=kind, meta=loaded.meta, batch_size=3, corrupted=True
    )
    for i, ex in enumerate(exs):
        one = logit_metrics(loaded.model, loaded.tokenizer, [ex], mode=kind, meta=loaded.meta, corrupted=True)
        for key in ("logit_diff", "corrupted_logit_diff"):
            torch.testing.assert_close(whole[key][i], one[key][0], atol=1e-5, rtol=0)


def test_greedy_generation_left_pads_without_changing_outputs() -> None:
    loaded = load_any(folder("gpt2"))
    prompts = [ex.prompt for ex in _examples()]
    batched = greedy_generate(loaded.model, loaded.tokenizer, prompts, 4, batch_size=3)
    assert batched == [greedy_generate(loaded.model, loaded.tokenizer, [p], 4)[0] for p in prompts]


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_eap_ig_per_example_scores_equal_each_example_alone(kind: str) -> None:
    pm = probed("gpt2", kind)
    items = [render(ex, pm.tokenizer, kind, shift=True, mask_id=MASK_ID) for ex in _examples()]
    graph = attribute(pm, items, method="eap-ig-inputs", steps=2, batch_size=3, per_example=True)
    for i in range(len(items)):
        alone = attribute(pm, items[i : i + 1], method="eap-ig-inputs", steps=2)
        torch.testing.assert_close(graph.examples[i].double(), alone.scores, atol=1e-5, rtol=1e-4)


def test_sampler_evals_and_gen_ppl_batched_equal_one_by_one() -> None:
    mdm = load_any(folder("gpt2", "mdm"))
    exs = _examples()
    for ex in exs[1:]:  # one answer length for all: the eval batches them together
        assert len(render(ex, mdm.tokenizer, "mdm", mask_id=MASK_ID).answer_ids) == 1

    def generations(batch_size: int, chosen: list[Example]) -> dict[str, str]:
        seen: dict[str, str] = {}

        def check(example: Example, generated: str) -> bool:
            seen[example.prompt] = generated
            return True

        task_accuracy(
            mdm,
            JsonlTask("t", chosen, "local"),
            chosen,
            SamplerSpec("low-confidence"),
            batch_size=batch_size,
            check=check,
        )
        return seen

    whole = generations(3, exs)
    for ex in exs:
        assert generations(1, [ex]) == {ex.prompt: whole[ex.prompt]}
    ar = load_any(folder("gpt2"))
    texts = [ex.prompt for ex in exs]
    batched = gen_ppl(texts, ar, batch_size=3)
    singles = [gen_ppl([t], ar) for t in texts]
    assert batched["tokens"] == sum(s["tokens"] for s in singles)
    assert batched["nll"] * batched["tokens"] == pytest.approx(sum(s["nll"] * s["tokens"] for s in singles), rel=1e-5)


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_depth_and_neuron_scores_batched_equal_one_by_one(kind: str) -> None:
    """Depth (baseline logit differences, logit lens) and unit attributions on examples of three
    lengths: batching them changes nothing."""
    from analyses.depth import baseline_logit_diffs, lens_profile
    from analyses.neurons import unit_attributions

    pm = probed("gpt2", kind)
    items = [render(ex, pm.tokenizer, kind, shift=True, mask_id=MASK_ID) for ex in _examples()]
    clean, corrupt = baseline_logit_diffs(pm, items, batch_size=3)
    lens = lens_profile(pm, items, batch_size=3)
    units = unit_attributions(pm, items, "neurons", batch_size=3)
    for i in range(len(items)):
        c1, k1 = baseline_logit_diffs(pm, items[i : i + 1])
        torch.testing.assert_close(clean[i : i + 1], c1, atol=1e-5, rtol=0)
        torch.testing.assert_close(corrupt[i : i + 1], k1, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            lens.logit_diffs[:, i : i + 1], lens_profile(pm, items[i : i + 1]).logit_diffs, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            units[i : i + 1], unit_attributions(pm, items[i : i + 1], "neurons"), atol=1e-5, rtol=1e-4
        )
