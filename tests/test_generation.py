"""Generation evals: answer extraction, entropy, gen-PPL against a direct computation, task
accuracy bookkeeping against an oracle model, and the `sample` / `eval` commands end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lm_eval
import pytest
import torch
from conftest import tiny_tokenizer
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.generation import (
    SamplerSpec,
    evaluate_samplers,
    gen_ppl,
    gsm_answer,
    gsm_match,
    task_accuracy,
    unigram_entropy,
    write_report,
)
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.tasks import Example
from ar2mdm.tasks.jsonl import JsonlTask
from conversion.checkpoints import Loaded, load_ar
from conversion.mdm import add_mask_token, save_mdm

runner = CliRunner()


def test_gsm_answer_extraction():
    assert gsm_answer("Natalia sold 48 + 24 = 72 clips.\n#### 72") == "72"
    assert gsm_answer("The answer is 1,234.50") == "1234.50"  # as the harness's gsm8k: no rounding
    assert gsm_answer("no digits here") is None
    assert gsm_match("so it is 18", "#### 18") and not gsm_match("so it is 17", "#### 18")
    assert not gsm_match("nothing", "#### 18")


def test_gsm_match_scores_as_the_harness_gsm8k_task_does():
    """gsm_match against lm-eval's own pipeline for gsm8k: its task config's filters, then its
    exact_match metric with the config's options, on generations of every kind."""
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    config_text = (Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
    config = yaml.safe_load(config_text)
    (metric,) = config["metric_list"]
    options = {k: metric[k] for k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    filters = {
        f["name"]: RegexFilter(f["filter"][0]["regex_pattern"], f["filter"][0].get("group_select", 0))
        for f in config["filter_list"]
    }
    reference = "Tom has 3 + 4 = 7 apples, so he has $1,207.\n#### 1207"
    for generated in [
        "#### 1207",
        "so 1,207 apples.",
        "He pays $1207.",
        "3 + 4 = 7 #### 1207 and 12",
        "it is 12.07",
        "1207 or maybe 18",
        "no number",
        "-1207",
    ]:
        strict = filters["strict-match"].apply([[generated]], [{}])[0][0]
        pick = strict if strict != "[invalid]" else filters["flexible-extract"].apply([[generated]], [{}])[0][0]
        harness = exact_match_hf_evaluate([pick], [reference], **options)["exact_match"] == 1.0
        assert gsm_match(generated, reference) == harness, generated


def test_unigram_entropy_by_hand():
    assert unigram_entropy([[5, 5, 5, 5]]) == 0.0
    assert math.isclose(unigram_entropy([[1, 2, 3, 4], [7, 7]]), (math.log(4) + 0.0) / 2)


def test_gen_ppl_matches_a_direct_computation(make_tiny_model):
    ref = load_ar(make_tiny_model("llama"))
    tok, model = ref.tokenizer, ref.model
    texts = [" Mary gave a drink to John", " the war lasted from 17 to 18 ,"]
    got = gen_ppl(texts, ref)
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            for j in range(1, len(ids)):
                nll -= float(logp[j - 1, ids[j]])
                count += 1
    assert got["tokens"] == count
    assert math.isclose(got["gen_ppl"], math.exp(nll / count), rel_tol=1e-5)
    # chunked scoring: each chunk restarts, so it can only differ; it scores every token but the
    # first of each chunk
    chunked = gen_ppl(texts, ref, chunk=4)
    assert chunked["tokens"] < count and chunked["entropy"] == got["entropy"]


EXAMPLES = [
    Example(
        task="toy",
        prompt="When Mary and John went to the store , John gave a drink to",
        answer=" Mary",
        corrupted_prompt="When Mary and John went to the store , Mary gave a drink to",
    ),
    Example(
        task="toy",
        prompt="Then Alice had a long argument with Bob . Alice said",
        answer=" 1 7 + 8 = 2 5",
        corrupted_prompt="Then Alice had a long argument with Tom . Alice said",
    ),
    Example(
        task="toy",
        prompt="Tom said the war lasted from",
        answer=" 17 to 18",
        suffix=" , yes",
        corrupted_prompt="Sarah said the war lasted from",
        corrupted_suffix=" , no",
    ),
]


class Oracle(torch.nn.Module):
    """An 'MDM' that knows the clean text of every example (keyed by its first three tokens) and
    predicts it at every position (shift off), or a wrong token if `wrong`."""

    def __init__(self, tok, examples, vocab, wrong=False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.clean = {}
        for ex in examples:
            ids = tok(ex.prompt, add_special_tokens=True)["input_ids"]
            full = tok(ex.prompt + ex.answer + ex.suffix, add_special_tokens=True)["input_ids"]
            self.clean[tuple(ids[:3])] = full
        self.vocab, self.wrong = vocab, wrong

    def forward(self, input_ids, **kwargs):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            full = self.clean[tuple(input_ids[b, :3].tolist())]
            for i, t in enumerate(full):
                logits[b, i, (t + 1) % 40 if self.wrong else t] = 10.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("wrong", [False, True])
def test_task_accuracy_against_an_oracle(wrong):
    tok = tiny_tokenizer()
    meta = ModelMeta(kind="mdm", shift=False, mask_id=tok.convert_tokens_to_ids("<mask>"), noise="absorbing")
    loaded = Loaded(model=Oracle(tok, EXAMPLES, len(tok), wrong), tokenizer=tok, meta=meta)
    task = JsonlTask("toy", EXAMPLES, "local")
    lengths = [len(tok(e.prompt + e.answer)["input_ids"]) - len(tok(e.prompt)["input_ids"]) for e in EXAMPLES]
    for spec in [
        SamplerSpec("low-confidence"),
        SamplerSpec("threshold"),
        SamplerSpec("ancestral"),
        SamplerSpec("margin"),
    ]:
        row = task_accuracy(loaded, task, EXAMPLES, spec, fraction=1.0, batch_size=2)
        assert row.accuracy == (0.0 if wrong else 1.0), spec
        assert row.tokens == sum(lengths) and row.n == 3
    # one token per call at fraction 1; the threshold sampler is sure of everything: one call
    lc = task_accuracy(loaded, task, EXAMPLES, SamplerSpec("low-confidence"), fraction=1.0)
    assert math.isclose(lc.nfe, sum(lengths) / 3)
    half = task_accuracy(loaded, task, EXAMPLES, SamplerSpec("low-confidence"), fraction=0.5)
    assert math.isclose(half.nfe, sum(max(1, round(n * 0.5)) for n in lengths) / 3)
    assert task_accuracy(loaded, task, EXAMPLES, SamplerSpec("threshold")).nfe == 1.0


def test_evaluate_and_report(tmp_path):
    tok = tiny_tokenizer()
    meta = ModelMeta(kind="mdm", shift=False, mask_id=tok.convert_tokens_to_ids("<mask>"), noise="absorbing")
    loaded = Loaded(model=Oracle(tok, EXAMPLES, len(tok)), tokenizer=tok, meta=meta)
    rows = evaluate_samplers(
        loaded,
        {"toy": (JsonlTask("toy", EXAMPLES, "local"), EXAMPLES)},
        [SamplerSpec("entropy"), SamplerSpec("threshold")],
        fractions=(1.0, 0.5),
        progress=False,
    )
    assert [(r.sampler, r.fraction) for r in rows] == [("entropy", 1.0), ("entropy", 0.5), ("threshold", None)]
    write_report(rows, tmp_path / "rep")
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert len(data["rows"]) == 3 and (tmp_path / "rep" / "generation.html").stat().st_size > 1000


@pytest.fixture
def tiny_mdm(make_tiny_model, tmp_path) -> tuple[Path, Path]:
    """(AR folder, MDM folder): an untrained tiny Llama saved as an MDM whose source is the AR."""
    ar_folder = make_tiny_model("llama")
    loaded = load_ar(ar_folder)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(
        kind="mdm", source=str(ar_folder), shift=True, mask_id=mask_id, noise="absorbing", schedule="linear"
    )
    return ar_folder, save_mdm(loaded.model, loaded.tokenizer, meta, tmp_path / "mdm")


def test_cli_sample_prints_prompt_and_continuation(tiny_mdm, tmp_path):
    ar_folder, mdm = tiny_mdm
    for sampler in ["low-confidence", "threshold", "ancestral", "remask", "arpc", "entropy"]:
        result = runner.invoke(
            app,
            [
                "sample",
                "--model",
                str(mdm),
                "--prompt",
                "When Mary and John",
                "--prompt",
                "Tom said",
                "--sampler",
                sampler,
                "--max-new-tokens",
                "5",
                "--trace",
                str(tmp_path / "t.json"),
            ],
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert lines[0].startswith("When Mary and John") and lines[1].startswith("Tom said")
        trace = json.loads((tmp_path / "t.json").read_text())
        committed = sum(len(c) for s in trace["steps"] for c in s["committed"])
        assert committed >= 10  # 2 prompts x 5 tokens, more if tokens were re-masked
    ar = runner.invoke(
        app, ["sample", "--model", str(ar_folder), "--prompt", "When Mary", "--sampler", "ar", "--max-new-tokens", "3"]
    )
    assert ar.exit_code == 0 and ar.stdout.startswith("When Mary")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--sampler", "uniform"], "absorbing noise"),
        (["--sampler", "ar"], "MDM sampler"),
        (["--sampler", "arpc", "--ar-scorer", "/nonexistent"], "ar-scorer"),
        (["--sampler", "low-confidence", "--max-new-tokens", "500"], "context"),
        (["--sampler", "low-confidence", "--steps", "1", "--block-length", "2"], "fewer than"),
        (["--sampler", "threshold", "--tau", "2"], "tau"),
        (["--sampler", "ancestral", "--tau", "0.5"], "is not an option of the sampler ancestral"),
    ],
)
def test_cli_sample_errors_are_clean(tiny_mdm, args, match):
    _, mdm = tiny_mdm
    result = runner.invoke(app, ["sample", "--model", str(mdm), "--prompt", "When Mary", *args], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split()) and "Traceback" not in result.output


def test_cli_eval_writes_results(tiny_mdm, tmp_path):
    _, mdm = tiny_mdm
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(mdm),
            "--out",
            str(out),
            "--tasks",
            "greater_than",
            "--samplers",
            "low-confidence,arpc",
            "--n",
            "4",
            "--fractions",
            "1,0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["sampler"], r["fraction"]) for r in rows} == {
        ("low-confidence", 1.0),
        ("low-confidence", 0.5),
        ("arpc", 1.0),
        ("arpc", 0.5),
    }
    assert all(r["n"] == 4 and r["nfe"] > 0 for r in rows)


def test_jsonl_task_with_gsm_check(tmp_path):
    tok = tiny_tokenizer()
    rows = [
        {
            "prompt": "Tom had 17 and 1 more , so",
            "answer": " 18",
            "corrupted_prompt": "Tom had 17 and 1 more , so",
            "meta": {"check": "gsm"},
        }
    ]
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    meta = ModelMeta(kind="mdm", shift=False, mask_id=tok.convert_tokens_to_ids("<mask>"), noise="absorbing")
    from analyses.generation import task_sets

    ex = task_sets(Loaded(model=torch.nn.Module(), tokenizer=tok, meta=meta), [str(path)], 5)  # no model needed
    task, examples = ex["gsm"]
    loaded = Loaded(model=Oracle(tok, examples, len(tok)), tokenizer=tok, meta=meta)
    assert task_accuracy(loaded, task, examples, SamplerSpec("low-confidence")).accuracy == 1.0
    wrong = Loaded(model=Oracle(tok, examples, len(tok), wrong=True), tokenizer=tok, meta=meta)
    assert task_accuracy(wrong, task, examples, SamplerSpec("low-confidence")).accuracy == 0.0
