"""Tests of the model organism: tokenizer, checkpoint format, determinism, learning, targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ar2mdm.common.outputs import write_folder_atomically
from ar2mdm.tasks import words
from ar2mdm.tasks.base import render
from conversion import organism as O

TINY = dict(
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_mlp=64,
    mixture={name: 2 for name in O.TASK_NAMES},
    tokenizer_examples=100,
    eval_examples=4,
    eval_every=0,
    threads=1,
)


@pytest.fixture(scope="module")
def tokenizer():
    return O.organism_tokenizer(n_per_task=200)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism") / "run"
    report = O.train_organism(out=out, seed=3, steps=3, config=O.OrganismConfig(**TINY), progress=False)
    return out, report


def test_round_trip_on_every_task(tokenizer):
    tasks = O.build_tasks(tokenizer)
    for name, task in tasks.items():
        for ex in task.generate(100, seed=12345):
            for text in O.example_texts(ex):
                ids = tokenizer(text)["input_ids"]
                assert ids[0] == tokenizer.bos_token_id
                assert tokenizer.decode(ids, skip_special_tokens=True) == text, (name, text)
    # Unseen text (spacing, unicode) still round-trips: byte fallback, never <unk>.
    odd = "  Zoë's  3*7+12 =\n\n 33\t(ok) 😀 "
    ids = tokenizer(odd, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == odd


def test_words_and_digits_are_single_tokens(tokenizer):
    for w in (*words.NAMES, *words.NOUNS):
        assert len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1, w
    assert tokenizer.convert_ids_to_tokens(tokenizer(" 3*7+12", add_special_tokens=False)["input_ids"]) == [
        "Ġ3",
        "*",
        "7",
        "+",
        "1",
        "2",
    ]


def test_tokenizer_is_deterministic():
    a = O.organism_tokenizer(n_per_task=50)
    b = O.organism_tokenizer(n_per_task=50)
    assert a.get_vocab() == b.get_vocab()


def test_mask_token_in_vocab(tokenizer, tiny_run):
    assert tokenizer.mask_token == "<mask>"
    assert tokenizer.convert_tokens_to_ids("<mask>") == tokenizer.mask_token_id
    out, report = tiny_run
    config = json.loads((out / "config.json").read_text())
    loaded = AutoTokenizer.from_pretrained(out)
    assert config["mask_token_id"] == loaded.mask_token_id == report.mask_token_id
    assert loaded.convert_ids_to_tokens(report.mask_token_id) == "<mask>"


def test_saved_folder_loads_with_same_logits(tmp_path, tokenizer):
    cfg = O.OrganismConfig(**TINY)
    model = O.build_model(cfg, tokenizer, seed=0).eval()
    folder = O.save_checkpoint(tmp_path / "ckpt", model, tokenizer, {"note.txt": "hi"})
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    text = "When Mary and John went to the store, John gave a drink to"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert (folder / "model.safetensors").is_file() and (folder / "note.txt").read_text() == "hi"
    assert not list(tmp_path.glob(".ckpt.*")), "temporary folders left behind"


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    write_folder_atomically(out, lambda folder: (folder / "a.txt").write_text("old"))

    def broken(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_folder_atomically(out, broken)
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_tiny_run_is_deterministic(tmp_path, tiny_run):
    out, report = tiny_run
    again = O.train_organism(out=tmp_path / "again", seed=3, steps=3, config=O.OrganismConfig(**TINY), progress=False)
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [c.loss for c in again.curve] == [c.loss for c in report.curve]
    other = O.train_organism(out=tmp_path / "other", seed=4, steps=3, config=O.OrganismConfig(**TINY), progress=False)
    c = load_file(tmp_path / "other" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other.steps == 3


def test_report_contents(tiny_run):
    out, report = tiny_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["steps"] == report.steps == 3
    assert set(saved["accuracy"]) == set(O.TASK_NAMES)
    assert all(0.0 <= a <= 1.0 for a in report.accuracy.values())
    assert report.tokens_seen > 0 and report.curve[-1].step == 3
    assert saved["task_options"] == O.TASK_OPTIONS
    # the LD gap per task, recomputed independently from the saved model's logits
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    eval_sets = O.held_out_sets(O.build_tasks(tok), report.eval_examples["ioi"], report.seed)
    assert set(report.ld_gap) == set(O.TASK_NAMES)
    for task, exs in eval_sets.items():
        diffs = []
        for ex in exs:
            r = render(ex, tok)
            for ids in (r.input_ids, r.corrupted_ids):
                with torch.no_grad():
                    lp = loaded(input_ids=ids[None]).logits[0, int(r.read_positions[0])]
                diffs.append(
                    float(torch.logsumexp(lp[r.correct_ids], 0) - torch.logsumexp(lp[r.counterfactual_ids], 0))
                )
        by_hand = sum(diffs[0::2]) / len(exs) - sum(diffs[1::2]) / len(exs)
        assert report.ld_gap[task] == pytest.approx(by_hand, abs=1e-3)
    assert saved["ld_gap"] == report.ld_gap and "ioi_ld_gap" in saved["met"]
    O.print_report(report)


def test_outdated_names_what_changed(tiny_run, tmp_path):
    """A cached organism is out of date when its architecture, mixture or data version differ
    from today's; steps, seed and evaluation settings do not count."""
    out, _ = tiny_run
    assert O.outdated(out, O.OrganismConfig(**{**TINY, "eval_examples": 99, "threads": 2})) is None
    assert "d_model, n_layers, n_heads, n_kv_heads, d_mlp, mixture" in O.outdated(out)
    old = tmp_path / "old"
    old.mkdir()
    report = json.loads((out / "report.json").read_text())
    report.pop("data_version")  # written before versions existed: version 1
    (old / "report.json").write_text(json.dumps(report))
    assert O.outdated(old, O.OrganismConfig(**TINY)) == f"it was trained on data version 1, today's is {O.DATA_VERSION}"
    assert O.outdated(tmp_path) == "it has no readable report.json"


def test_overfits_a_fixed_batch(tokenizer):
    cfg = O.OrganismConfig(**TINY)
    torch.set_num_threads(1)
    tasks = O.build_tasks(tokenizer)
    batch = next(iter(O.MixtureStream(tasks, tokenizer, cfg, seed=0)))
    model = O.build_model(cfg, tokenizer, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = O.weighted_lm_loss(model(**batch.model_inputs()).logits, batch.input_ids, batch.weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


def test_batch_weights_mark_answers(tokenizer):
    cfg = O.OrganismConfig(**{**TINY, "pack_length": 0})
    stream = O.MixtureStream(O.build_tasks(tokenizer), tokenizer, cfg, seed=0)
    batch = stream.encode([("Numbers: 1 2 3 Target: 6 Answer:", " 1+2+3", "", True), ("The", " dog", " barked.", True)])
    row = batch.input_ids[0].tolist()
    toks = tokenizer.convert_ids_to_tokens(row)
    w = batch.weights[0].tolist()
    answer = [t for t, x in zip(toks, w, strict=True) if x == cfg.answer_weight]
    assert answer == ["Ġ1", "+", "2", "+", "3", "<eos>"]
    assert w[0] == 0.0 and toks[0] == "<bos>"
    # In-place infilling: the answer is weighted, the tail and its <eos> are plain LM targets.
    toks1 = tokenizer.convert_ids_to_tokens(batch.input_ids[1].tolist())
    w1 = batch.weights[1].tolist()
    assert [t for t, x in zip(toks1, w1, strict=True) if x == cfg.answer_weight] == ["Ġdog"]
    assert w1[toks1.index("<eos>")] == 1.0 and toks1[-1] == "<pad>" and w1[-1] == 0.0


def test_stream_closes_texts_only_where_they_end_at_the_answer(tokenizer):
    """Induction rows end with their answer word (no <eos>: see BaseTask.text_ends_at_answer),
    every other task's AR row with a weighted <eos>; Greater-Than trains on 1709 too."""
    cfg = O.OrganismConfig(**{**TINY, "pack_length": 0})
    tasks = O.build_tasks(tokenizer, training=True)
    stream = O.MixtureStream(tasks, tokenizer, cfg, seed=0)
    eos = tokenizer.eos_token_id
    for _ in range(3):
        parts = [stream._sequence(next(stream._pools[n])) for n in stream._pools for _ in range(cfg.mixture[n])]
        batch = stream.encode(parts)
        for row, weights, part in zip(batch.input_ids.tolist(), batch.weights.tolist(), parts, strict=True):
            last = max(i for i, t in enumerate(row) if t != tokenizer.pad_token_id)
            assert (row[last] == eos) == part[3]
            if not part[3]:
                assert part[0].startswith("Words:") and weights[last] == cfg.answer_weight
    assert tasks["greater_than"].min_tens == 0 and O.build_tasks(tokenizer)["greater_than"].min_tens == 1


def test_packed_batch_gives_the_padded_batch_loss_and_gradients(tokenizer):
    """Packing several sequences per row (own positions, attention confined to each) leaves the
    loss and every gradient those of one padded row per sequence."""
    torch.manual_seed(0)
    cfg = O.OrganismConfig(**{**TINY, "mixture": {n: 3 for n in O.TASK_NAMES}})
    packed_cfg, padded_cfg = (O.OrganismConfig(**{**TINY, "mixture": cfg.mixture, "pack_length": n}) for n in (64, 0))
    tasks = O.build_tasks(tokenizer, training=True)
    packed = next(iter(O.MixtureStream(tasks, tokenizer, packed_cfg, seed=0)))
    padded = next(iter(O.MixtureStream(tasks, tokenizer, padded_cfg, seed=0)))
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0] and packed.input_ids.shape[1] == 64
    assert packed.n_tokens == padded.n_tokens == int((padded.weights > 0).sum()) + padded.input_ids.shape[0]
    model = O.build_model(cfg, tokenizer, seed=0)
    grads = []
    for batch in (packed, padded):
        model.zero_grad()
        loss = O.weighted_lm_loss(model(**batch.model_inputs()).logits, batch.input_ids, batch.weights)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lr_schedule():
    assert O.lr_factor(0.0, 0.1, 0.05) == 0.0
    assert O.lr_factor(0.05, 0.1, 0.05) == pytest.approx(0.5)
    assert O.lr_factor(0.1, 0.1, 0.05) == pytest.approx(1.0)
    assert O.lr_factor(1.0, 0.1, 0.05) == pytest.approx(0.05)


def test_eval_prompts_are_held_out(tokenizer):
    cfg = O.OrganismConfig(**{**TINY, "mixture": {"ioi": 8, "countdown": 8}})
    tasks = O.build_tasks(tokenizer)
    eval_sets = O.held_out_sets(tasks, 20, seed=0)
    exclude = {n: {O.prompt_key(e) for e in eval_sets[n]} for n in ("ioi", "countdown")}
    # Make every training draw collide by excluding the training stream's own first prompts.
    first = O.MixtureStream(tasks, tokenizer, cfg, seed=0)
    seen = {n: {O.prompt_key(next(first._pools[n])) for _ in range(8)} for n in ("ioi", "countdown")}
    stream = O.MixtureStream(tasks, tokenizer, cfg, seed=0, exclude={n: exclude[n] | seen[n] for n in seen})
    for n in seen:
        drawn = {O.prompt_key(next(stream._pools[n])) for _ in range(50)}
        assert not drawn & (exclude[n] | seen[n])


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(O.UserError, match="steps"):
        O.train_organism(out=tmp_path / "x", steps=0)
    with pytest.raises(O.UserError, match="unknown task"):
        O.train_organism(out=tmp_path / "x", steps=1, config=O.OrganismConfig(mixture={"chess": 4}))


@pytest.mark.slow
def test_default_training_reaches_targets(tmp_path):
    """The study's organism (seed 0, 1,500 steps, ~4.5 min on 2 cores) reaches every accuracy
    target and a clean - corrupt LD gap >= 1 on every task.

    Measured 2026-11-30: IOI 1.00, Greater-Than 1.00, induction 1.00, Countdown 0.655 (target 0.60),
    infilling 1.00; gaps IOI 7.34, Greater-Than 4.19, induction 24.98, Countdown 1.07 (the
    tightest), infilling 16.14, sudoku 8.19. Bit-reproducible on one machine and thread count; on
    another CPU the numbers move (see docs/results/validation.md, Reproducibility).
    """
    report = O.train_organism(out=tmp_path / "organism", seed=0, steps=1500, progress=False)
    assert all(report.met.values()), (report.accuracy, report.ld_gap)
    assert set(report.ld_gap) == set(O.TASK_NAMES) and min(report.ld_gap.values()) >= 1.0


def test_task_corpus_never_contains_a_held_out_prompt(monkeypatch):
    import conversion.organism_data as org

    # Make the conversion stream draw from the evaluation seeds, so every held-out prompt is
    # generated: only the exclusion can keep them out.
    real_seed = org.derive_seed
    monkeypatch.setattr(
        org,
        "derive_seed",
        lambda *parts: real_seed("eval", *parts[1:-1], 0) if parts[0] == "convert" else real_seed(*parts),
    )
    docs = org.task_corpus(n_per_task=60, seed=0)
    held = org.held_out_sets(org.build_tasks(), O.OrganismConfig().eval_examples, 0)
    joined = set(docs)
    for name in org.HOLDOUT_PROMPTS:
        assert not any(ex.text in joined for ex in held[name]), name
    kept = {name for name in org.TASK_NAMES if name not in org.HOLDOUT_PROMPTS}
    assert any(ex.text in joined for name in kept for ex in held[name])  # those tasks are not held out
    monkeypatch.undo()
    assert org.task_corpus(n_per_task=30, seed=3) == org.task_corpus(n_per_task=30, seed=3)  # seeded


@pytest.mark.e2e
def test_organism_to_mdm_end_to_end(tmp_path, tiny_run):
    """AR organism -> a few steps of diffusion post-training on task text -> scored by filling."""
    from ar2mdm.common.metadata import ModelMeta
    from conversion.train import TrainConfig, train

    ar_folder, _ = tiny_run
    result = train(
        TrainConfig(model=str(ar_folder), data="tasks", out=str(tmp_path / "mdm"), steps=2, seq_len=32, batch_size=2)
    )
    meta = ModelMeta.load(result.out)
    tok = AutoTokenizer.from_pretrained(ar_folder)
    assert meta.kind == "mdm" and meta.mask_id == tok.mask_token_id  # the organism's own <mask>
    scores = O.evaluate_checkpoint(result.out, n=3)
    assert set(scores) == set(O.TASK_NAMES)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    ar_scores = O.evaluate_checkpoint(ar_folder, n=3)
    assert set(ar_scores) == set(O.TASK_NAMES)


def test_eval_of_a_checkpoint_that_is_no_organism_says_so(tmp_path: Path) -> None:
    """`organism eval` of another model is refused, before loading, as not an organism (not with a
    word-coverage message about its tokenizer); an MDM counts when its recorded source is one."""
    from ar2mdm.common.errors import UserError
    from ar2mdm.common.metadata import ModelMeta
    from conversion.organism_eval import not_an_organism

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    organism = tmp_path / "organism"
    organism.mkdir()
    (organism / "report.json").write_text(json.dumps({"task_options": {}}))
    for name, source in (("mdm-plain", plain), ("mdm-organism", organism)):
        (tmp_path / name).mkdir()
        ModelMeta(kind="mdm", source=str(source), mask_id=3).save(tmp_path / name)
    assert not_an_organism(organism) is None and not_an_organism("organism") is None
    assert not_an_organism(tmp_path / "mdm-organism") is None
    assert "converted from" in (not_an_organism(tmp_path / "mdm-plain") or "")
    assert "built-in model" in (not_an_organism("smollm2") or "")
    with pytest.raises(UserError, match=r"is not a model organism: it holds no report\.json.*ar2mdm eval --model"):
        O.evaluate_checkpoint(plain, n=2)


def test_moe_organism_trains_with_balanced_experts_and_is_told_apart(tmp_path, tiny_run):
    """--experts: a Mixtral of the organism's blocks, experts of width d_mlp / top_k; its training
    adds the Switch load-balancing loss (the loss logged is the LM loss plus aux_loss x it); a
    dense organism's report (no n_experts key) is up to date for a dense config and out of date
    for an MoE one."""
    cfg = O.OrganismConfig(**{**TINY, "n_experts": 4, "top_k": 2})
    report = O.train_organism(out=tmp_path / "moe", seed=3, steps=3, config=cfg, progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    assert type(model).__name__ == "MixtralForCausalLM"
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (4, 2)
    assert model.config.intermediate_size == TINY["d_mlp"] // 2
    assert report.config["n_experts"] == 4
    out, _ = tiny_run
    saved = json.loads((out / "report.json").read_text())
    saved["config"].pop("n_experts"), saved["config"].pop("top_k")  # as a report written before MoE organisms
    old = tmp_path / "dense"
    old.mkdir()
    (old / "report.json").write_text(json.dumps(saved))
    assert O.outdated(old, O.OrganismConfig(**TINY)) is None
    assert "n_experts" in O.outdated(old, cfg)
    with pytest.raises(O.UserError, match="top_k <= n_experts"):
        O.build_model(O.OrganismConfig(**{**TINY, "n_experts": 2, "top_k": 3}), O.organism_tokenizer(n_per_task=20), 0)
