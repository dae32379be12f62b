"""lm-evaluation-harness integration: the "ar2mdm" model, ar2mdm's tasks exported to the harness,
and the log-likelihoods behind `loglikelihood` (exact for ARMs, Monte-Carlo ELBO for MDMs).

Independent truths: the HF model's own logits (log-softmax sums by hand), the ELBO's expectation
by enumerating every mask subset by hand, Hoeffding's inequality for the estimate's error,
ar2mdm's own evaluation (`analyses.generation.task_accuracy`, `ar2mdm.tasks.evaluate.logit_metrics`) of
the same examples, and accuracies fixed in advance from the model's own greedy predictions.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import lm_eval
import pytest
import torch
from conftest import ship_marker_code
from lm_eval.tasks import TaskManager
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.generation import SamplerSpec, task_accuracy
from analyses.harness import ModelAdapter
from analyses.harness_tasks import export_tasks, harness_name
from analyses.likelihood import ar_loglikelihoods, mdm_elbo_exact, mdm_elbo_samples, mdm_loglikelihoods
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.sampling import ModelContext
from ar2mdm.tasks import load_jsonl_task
from ar2mdm.tasks.evaluate import logit_metrics
from conversion.checkpoints import load_any, load_ar
from conversion.mdm import add_mask_token, save_mdm

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{"ar": folder, "mdm": folder}: an untrained tiny Llama and the same weights saved as an MDM."""
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("harness")
    ar = build_tiny_model("llama", root / "ar", seed=3)
    loaded = load_ar(ar)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(kind="mdm", source=str(ar), shift=True, mask_id=mask_id, noise="absorbing", schedule="linear")
    return {"ar": ar, "mdm": save_mdm(loaded.model, loaded.tokenizer, meta, root / "mdm")}


def _ids(tok, text: str, special: bool = True) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _evaluate(lm: ModelAdapter, names: list[str], include: Path) -> dict:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
        num_fewshot=0,
        bootstrap_iters=0,
        log_samples=True,
        verbosity="ERROR",
    )


# --- log-likelihoods ---------------------------------------------------------------------------------


def test_ar_loglikelihood_is_the_models_own_log_probability(models):
    loaded = load_any(models["ar"])
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    tok = loaded.tokenizer
    pairs = [
        (_ids(tok, "When Mary and John went"), _ids(tok, " to the store", False)),
        (_ids(tok, "Tom"), _ids(tok, " said", False)),
    ]
    got = ar_loglikelihoods(loaded.model, ctx, pairs, batch_size=2)
    for (c, a), g in zip(pairs, got, strict=True):
        ids = torch.tensor([c + a])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].double(), -1)
        want = sum(float(logp[len(c) + i - 1, t]) for i, t in enumerate(a))
        greedy = all(int(logp[len(c) + i - 1].argmax()) == t for i, t in enumerate(a))
        assert g.logprob == pytest.approx(want, abs=1e-4) and g.greedy == greedy and g.stderr == 0


def _masked_logp(loaded, context: list[int], answer: list[int], subset: tuple[int, ...]) -> list[float]:
    """By hand: the canvas context + answer with `subset` masked, one bidirectional forward, and
    log p(answer_i) at each masked i read at position i - 1 (shift), the mask id excluded."""
    mask_id = loaded.meta.mask_id
    row = context + [mask_id if i in subset else t for i, t in enumerate(answer)]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([row]), is_causal=False).logits[0].double()
    logits[:, mask_id] = -math.inf
    logp = torch.log_softmax(logits, -1)
    return [float(logp[len(context) + i - 1, answer[i]]) for i in subset]


def test_mdm_elbo_of_one_token_is_its_exact_log_probability(models):
    loaded = load_any(models["mdm"])
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    context, answer = _ids(loaded.tokenizer, "When Mary and John went to the"), _ids(loaded.tokenizer, " store", False)
    assert len(answer) == 1
    values = mdm_elbo_samples(loaded.model, ctx, context, answer, samples=5)
    want = _masked_logp(loaded, context, answer, (0,))[0]
    assert torch.allclose(values, torch.full((5,), want, dtype=values.dtype), atol=1e-5)
    (est,) = mdm_loglikelihoods(loaded.model, ctx, [(context, answer)], samples=5)
    assert est.logprob == pytest.approx(want, abs=1e-5) and est.stderr == pytest.approx(0.0, abs=1e-9)


def test_mdm_elbo_estimate_converges_to_the_enumerated_expectation(models):
    loaded = load_any(models["mdm"])
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    context = _ids(loaded.tokenizer, "When Mary and John went")
    answer = _ids(loaded.tokenizer, " to the store , Mary", False)
    L = len(answer)
    assert L == 5
    # The expectation by hand: l uniform on 1..L, then a uniform l-subset, weight L / l.
    per_subset = {}
    for n in range(1, L + 1):
        for subset in combinations(range(L), n):
            per_subset[subset] = L / n * sum(_masked_logp(loaded, context, answer, subset))
    exact = sum(v / math.comb(L, len(s)) for s, v in per_subset.items()) / L
    assert mdm_elbo_exact(loaded.model, ctx, context, answer) == pytest.approx(exact, abs=1e-4)
    # Hoeffding: every sample lies in [lo, hi], so |mean of n - exact| <= (hi - lo) sqrt(ln(2/d) / 2n)
    # with probability 1 - d (d = 1e-6 here); stratifying l only tightens it.
    lo, hi = min(per_subset.values()), max(per_subset.values())
    errors = {}
    for n in (4, 16, 64, 256):
        values = mdm_elbo_samples(loaded.model, ctx, context, answer, samples=n, seed=n)
        assert lo - 1e-6 <= float(values.min()) and float(values.max()) <= hi + 1e-6
        errors[n] = abs(float(values.mean()) - exact)
        assert errors[n] <= (hi - lo) * math.sqrt(math.log(2 / 1e-6) / (2 * n))
    assert errors[256] < 0.25 * (hi - lo) / math.sqrt(2)  # far inside the range at 256 samples
    (est,) = mdm_loglikelihoods(loaded.model, ctx, [(context, answer)], samples=256, greedy=False)
    assert abs(est.logprob - exact) <= 5 * est.stderr and est.stderr > 0


def test_mdm_likelihood_refuses_what_it_cannot_estimate(models):
    loaded = load_any(models["mdm"])
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    with pytest.raises(UserError, match="block-diffusion"):
        mdm_elbo_samples(loaded.model, ModelContext(**{**ctx.__dict__, "block_size": 4}), [1], [5], samples=2)
    with pytest.raises(UserError, match="uniform"):
        mdm_elbo_samples(loaded.model, ModelContext(**{**ctx.__dict__, "noise": "uniform"}), [1], [5], samples=2)
    with pytest.raises(UserError, match="empty continuation"):
        mdm_elbo_samples(loaded.model, ctx, [1], [], samples=2)


# --- the harness model against ar2mdm's own evaluation ---------------------------------------------------


def _greedy_first_token(loaded, prompt_ids: list[int]) -> int:
    """The token greedy decoding puts after `prompt_ids`, from one forward of the HF model."""
    mdm = loaded.meta.kind == "mdm"
    row = prompt_ids + ([loaded.meta.mask_id] if mdm else [])
    with torch.no_grad():
        kwargs = {"is_causal": False} if mdm else {}
        logits = loaded.model(input_ids=torch.tensor([row]), **kwargs).logits[0, len(prompt_ids) - 1]
    if mdm:
        logits[loaded.meta.mask_id] = -math.inf
    return int(logits.argmax())


def _planted_task(loaded, folder: Path) -> tuple[Path, float]:
    """A JSONL task whose answer is the model's own greedy next token on even rows and a different
    word on odd rows; returns (file, the accuracy any correct evaluation must report)."""
    from conftest import WORDS

    tok = loaded.tokenizer
    specials = set(tok.all_special_ids)
    rows, expected = [], []
    for i in range(24):
        prompt = " ".join(WORDS[(3 * i + k) % len(WORDS)] for k in range(4))
        ids = _ids(tok, prompt)
        best = _greedy_first_token(loaded, ids)
        text = tok.decode([best])
        if best in specials or not text.strip() or _ids(tok, prompt + text)[len(ids) :] != [best]:
            continue  # keep rows whose answer is exactly that one token after the prompt
        answer = text if len(rows) % 2 == 0 else next(w for w in (" Mary", " Tom") if w.strip() != text.strip())
        rows.append({"prompt": prompt, "answer": answer, "corrupted_prompt": prompt})
        expected.append(len(rows) % 2 == 1)
    assert len(rows) >= 8
    path = folder / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, sum(expected) / len(expected)


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_harness_generation_accuracy_equals_ar2mdm_eval(models, tmp_path, kind):
    loaded = load_any(models[kind])
    path, expected = _planted_task(loaded, tmp_path)
    task = load_jsonl_task(path)
    examples = list(task.examples)
    sampler = "ar" if kind == "ar" else "low-confidence"
    own = task_accuracy(loaded, task, examples, SamplerSpec(sampler))
    exported = export_tasks(loaded, [str(path)], len(examples), tmp_path / "tasks")
    assert exported == {"planted": [harness_name("planted")]}  # no counterfactuals: no _mc form
    lm = ModelAdapter.from_loaded(loaded, sampler=sampler)
    res = _evaluate(lm, exported["planted"], tmp_path / "tasks")
    got = res["results"][harness_name("planted")]["acc,none"]
    assert own.accuracy == pytest.approx(expected) and got == pytest.approx(expected)
    assert 0 < expected < 1


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_harness_multiple_choice_equals_logit_metrics(models, tmp_path, kind):
    loaded = load_any(models[kind])
    exported = export_tasks(loaded, ["ioi"], 12, tmp_path / "tasks")
    assert exported == {"ioi": ["ar2mdm_ioi", "ar2mdm_ioi_mc"]}
    lm = ModelAdapter.from_loaded(loaded, mc_samples=4)
    res = _evaluate(lm, ["ar2mdm_ioi_mc"], tmp_path / "tasks")
    docs = sorted(res["samples"]["ar2mdm_ioi_mc"], key=lambda s: s["doc_id"])
    from analyses.generation import task_sets

    ((_, examples),) = task_sets(loaded, ["ioi"], 12).values()
    own = logit_metrics(loaded.model, loaded.tokenizer, examples, mode=kind, meta=loaded.meta)
    assert [d["doc"]["context"] for d in docs] == [ex.prompt for ex in examples]
    assert [bool(d["acc"]) for d in docs] == (own["logit_diff"] > 0).tolist()
    assert res["results"]["ar2mdm_ioi_mc"]["acc,none"] == pytest.approx(own["accuracy"])
    if kind == "mdm":  # one-token answers: the ELBO is exact, every estimate has zero spread
        assert lm.spread()["requests"] == 24 and lm.spread()["max_stderr"] == pytest.approx(0.0, abs=1e-9)


def _request(kind: str, args: tuple):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_harness_generation_and_rolling_likelihood_of_an_arm_match_hugging_face(models):
    loaded = load_any(models["ar"])
    tok, model = loaded.tokenizer, loaded.model
    lm = ModelAdapter.from_loaded(loaded, batch_size=2)
    prompts = ["When Mary and John went", "Tom said"]
    gen = {"until": [], "max_gen_toks": 6, "do_sample": False}
    got = lm.generate_until([_request("generate_until", (p, gen)) for p in prompts])
    for prompt, text in zip(prompts, got, strict=True):
        ids = torch.tensor([_ids(tok, prompt)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)[
            0, ids.shape[1] :
        ]
        want = out.tolist()
        if tok.eos_token_id in want:
            want = want[: want.index(tok.eos_token_id)]
        assert text == tok.decode(want, skip_special_tokens=True)
    first_word = got[0].split()[0] if got[0].split() else None
    if first_word:  # a stop string cuts the text before it
        cut = lm.generate_until([_request("generate_until", (prompts[0], {**gen, "until": [first_word]}))])[0]
        assert cut == got[0].split(first_word, 1)[0]
    text = " Mary and John went to the store"
    (rolling,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", (text,))])
    ids = [lm.prefix_token_id] + _ids(tok, text, False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    assert rolling == pytest.approx(sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))), abs=1e-4)


def test_harness_model_arguments_are_checked(models):
    with pytest.raises(UserError, match="pretrained"):
        ModelAdapter()
    with pytest.raises(UserError, match="tau"):
        ModelAdapter(pretrained=str(models["mdm"]), sampler="threshold", taus=0.5)
    with pytest.raises(UserError, match="unknown sampler"):
        ModelAdapter(pretrained=str(models["mdm"]), sampler="nope")
    with pytest.raises(UserError, match="mc_samples"):
        ModelAdapter(pretrained=str(models["mdm"]), mc_samples=0)


@pytest.mark.e2e
def test_cli_eval_lm_eval_and_the_passthrough(models, tmp_path):
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        ["eval", "--model", str(models["mdm"]), "--out", str(out), "--lm-eval", "ioi", "--n", "4", "--mc-samples", "2"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "lm_eval" / "results.json").read_text())
    assert (
        set(data["results"]) == {"ar2mdm_ioi", "ar2mdm_ioi_mc"}
        and data["ar2mdm"]["loglikelihood_spread"]["requests"] == 8
    )
    assert (out / "lm_eval" / "tasks" / "ar2mdm_ioi.yaml").exists() and "ar2mdm_ioi_mc" in (
        out / "results.md"
    ).read_text()
    args = f"pretrained={models['mdm']},sampler=threshold,tau=0.5,mc_samples=2"
    passthrough = runner.invoke(
        app,
        ["lm-eval", "--model", "ar2mdm", "--model_args", args, "--tasks", "ar2mdm_ioi_mc",
         "--include_path", str(out / "lm_eval" / "tasks"), "--output_path", str(tmp_path / "pt")],
    )  # fmt: skip
    assert passthrough.exit_code == 0, passthrough.output
    assert list((tmp_path / "pt").rglob("results_*.json"))
    bad = runner.invoke(app, ["lm-eval", "--model", "ar2mdm", "--model_args", f"pretrained={models['mdm']},nope=1", "--tasks", "ar2mdm_ioi_mc", "--include_path", str(out / "lm_eval" / "tasks")])  # fmt: skip
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output


# --- bad input: model arguments, task names, sampler flags, a failed run's --out ------------------------

NO = ("no", "No", "off", "false", "0", "FALSE")


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> Path:
    """A folder of exported harness tasks (ioi: ar2mdm_ioi and ar2mdm_ioi_mc), for --include_path."""
    folder = tmp_path_factory.mktemp("exported") / "tasks"
    export_tasks(load_any(models["mdm"]), ["ioi"], 4, folder)
    return folder


@pytest.fixture(scope="module")
def marker_folder(models, tmp_path_factory) -> tuple[Path, Path]:
    """A model folder whose config names code shipped in the folder (auto_map); importing that code
    writes `marker`."""
    import shutil

    root = tmp_path_factory.mktemp("remote")
    folder = Path(shutil.copytree(models["ar"], root / "model"))
    marker = root / "code-ran.txt"
    ship_marker_code(folder, marker)
    return folder, marker


def _lm_eval(model_args: str, include: Path, *extra: str):
    return runner.invoke(
        app,
        ["lm-eval", "--model", "ar2mdm", "--model_args", model_args, "--tasks", "ar2mdm_ioi_mc",
         "--include_path", str(include), *extra],
        terminal_width=400,
    )  # fmt: skip


@pytest.mark.e2e
def test_harness_trust_remote_code_no_never_runs_the_folders_code(marker_folder, exported):
    """Every spelling of no, as a keyword, as --model_args text the harness parses (its two parsers)
    and on the command line: the folder's code never runs; a non-word is a one-line error; yes does
    run it (the positive control, so the test can fail)."""
    from lm_eval._cli.utils import key_val_to_dict

    folder, marker = marker_folder
    calls = {
        "keyword": lambda v: ModelAdapter(pretrained=str(folder), trust_remote_code=v),
        "lm_eval.utils's parser": lambda v: ModelAdapter.create_from_arg_string(
            f"pretrained={folder},trust_remote_code={v}"
        ),
        "the harness CLI's parser": lambda v: ModelAdapter.create_from_arg_obj(
            key_val_to_dict(f"pretrained={folder},trust_remote_code={v}")
        ),
    }
    for value in NO:
        for how, call in calls.items():
            with pytest.raises(UserError, match="ships its own code"):
                call(value)
            assert not marker.exists(), f"trust_remote_code={value!r} ({how}) ran the folder's code"
    result = _lm_eval(f"pretrained={folder},trust_remote_code=No", exported)
    assert result.exit_code == 2 and "ships its own code" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    result = _lm_eval(f"pretrained={folder},trust_remote_code=maybe", exported)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: model argument trust_remote_code must be a yes/no value" in " ".join(result.output.split())
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - the marker model is not a loadable LM; only its import matters
        ModelAdapter.create_from_arg_string(f"pretrained={folder},trust_remote_code=yes")
    assert marker.read_text() == "ran"
    marker.unlink()


def test_harness_model_argument_values_are_checked_and_named(models):
    mdm = models["mdm"]
    bad = {
        "dtype=int4": "model argument dtype 'int4' is not a dtype",
        "device=gpu0": "model argument device 'gpu0' is not a device name",
        "seed=abc": r"model argument seed='abc' must be a whole number",
        "batch_size=1.5": r"model argument batch_size=1.5 must be a whole number",
        "mc_samples=two": "model argument mc_samples='two' must be a whole number",
        "greedy_check=maybe": "model argument greedy_check must be a yes/no value",
        "sampler=threshold,stop_at_eos=maybe": "option 'stop_at_eos' must be true or false",
        "sampler=threshold,tau=abc": "option 'tau' must be a number",
    }
    for args, message in bad.items():
        with pytest.raises(UserError, match=message) as err:
            ModelAdapter.create_from_arg_string(f"pretrained={mdm},{args}")
        assert "--dtype" not in str(err.value) and "--device" not in str(err.value)
    # the CLI's spellings, yes/no words for the sampler's booleans, and the harness's --batch_size /
    # --device (always passed) overridden by the same model arguments instead of colliding with them
    lm = ModelAdapter.create_from_arg_string(
        f"pretrained={mdm},dtype=bf16,device=cpu,batch_size=4,seed=7,greedy_check=off,sampler=threshold,stop_at_eos=no",
        {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"},
    )
    assert lm.model.dtype == torch.bfloat16 and lm._device.type == "cpu"
    assert (lm.batch_size, lm.seed, lm.greedy_check, lm.options) == (4, 7, False, {"stop_at_eos": False})
    lm = ModelAdapter.create_from_arg_obj(
        {"pretrained": str(mdm), "sampler": "threshold", "stop_at_eos": "yes"}, {"batch_size": 2}
    )
    assert lm.options == {"stop_at_eos": True} and lm.batch_size == 2


def test_cli_lm_eval_unknown_tasks_are_one_line(models, exported):
    """An unknown task, and an exported ar2mdm task without --include_path: one line each, decided
    from the harness's task index before the harness starts."""
    base = ["lm-eval", "--model", "ar2mdm", "--model_args", f"pretrained={models['mdm']}"]
    result = runner.invoke(app, [*base, "--tasks", "no_such_task"], terminal_width=400)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, result.output
    assert "error: unknown task(s) ['no_such_task']" in text and "`ar2mdm lm-eval ls tasks`" in text
    result = runner.invoke(app, [*base, "--tasks", "ar2mdm_ioi_mc"], terminal_width=400)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, result.output
    assert "--include_path DIR" in text and "OUT/lm_eval/tasks" in text and "export_tasks" in text
    result = runner.invoke(app, [*base, "--tasks", "ar2mdm_nope", "--include_path", str(exported)], terminal_width=400)
    assert result.exit_code == 2 and f"nor in --include_path {exported}" in " ".join(result.output.split())


def test_cli_eval_lm_eval_uses_or_refuses_every_sampler_flag(models, tmp_path):
    out = tmp_path / "ev"
    base = ["eval", "--model", str(models["mdm"]), "--out", str(out), "--lm-eval", "ioi", "--n", "2"]
    for extra, default in ((["--samplers", "low-confidence"], ""), ([], " (the default for this checkpoint)")):
        result = runner.invoke(app, [*base, *extra, "--tau", "0.5"], terminal_width=400)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in text, result.output
        assert f"sampler 'low-confidence'{default}, which does not take --tau" in text
        assert "its options: steps, block_length, temperature" in text and "--samplers (threshold)" in text
        assert not out.exists()
    result = runner.invoke(
        app, [*base, "--samplers", "threshold", "--tau", "0.5", "--no-stop-at-eos", "--mc-samples", "2"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "lm_eval" / "results.json").read_text())
    assert data["ar2mdm"]["sampler"] == "threshold" and data["ar2mdm"]["options"] == {"tau": 0.5, "stop_at_eos": False}


def test_failed_eval_lm_eval_releases_its_out(models, tmp_path, monkeypatch):
    """A run that fails (a bad option value, found before anything is written; the harness failing
    mid-run, after the tasks were exported) leaves --out free: the corrected rerun is not refused as
    'holds the results of an earlier `ar2mdm eval`'."""
    out = tmp_path / "ev"
    base = [
        "eval",
        "--model",
        str(models["mdm"]),
        "--out",
        str(out),
        "--lm-eval",
        "ioi",
        "--n",
        "2",
        "--mc-samples",
        "2",
    ]
    out.mkdir()  # an existing empty folder stays, empty
    bad = runner.invoke(app, [*base, "--samplers", "threshold", "--tau", "2"])
    assert bad.exit_code == 2 and "tau must be in (0, 1]" in bad.output
    assert sorted(p.name for p in out.iterdir()) == []

    def crash(*args, **kwargs):
        assert (out / "lm_eval" / "tasks" / "ar2mdm_ioi.yaml").exists()  # it fails after writing
        raise UserError("the harness failed")

    monkeypatch.setattr(lm_eval, "simple_evaluate", crash)
    failed = runner.invoke(app, base)
    assert failed.exit_code == 2 and "the harness failed" in failed.output
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.undo()
    good = runner.invoke(app, base)
    assert good.exit_code == 0, good.output
    assert (out / "lm_eval" / "results.json").exists() and (out / "results.md").exists()
    again = runner.invoke(app, base)  # a finished run still needs --overwrite
    assert again.exit_code == 2 and "--overwrite" in again.output
