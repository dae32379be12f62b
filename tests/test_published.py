"""Published diffusion LMs opened natively (issue 15): each family's tiny replica in its own file
layout (tests/replicas.py) opens as an MDM with the right metadata; its logits equal an independent
forward of the same tensors (transformers' class fed by the replica's own inverse renaming, with an
explicit all-visible 4D mask; for LLaDA also a forward written from its modeling code); every
sampler, run_with_cache, EAP-IG and compare run on it; wrong or missing pieces are clear errors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import replicas
import replicas_moe
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from analyses.circuits import attribute
from analyses.compare import CompareOptions, compare
from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import FAMILIES, detect_family
from ar2mdm.common.metadata import checkpoint_kind
from ar2mdm.sampling import SAMPLERS, ModelContext, build_sampler, make_canvas, run
from ar2mdm.tasks import get_task, render
from conversion.checkpoints import load_any, load_ar
from probe import ProbedModel

BUILDERS = {**replicas.BUILDERS, **replicas_moe.BUILDERS}  # the mixtures of experts too
NAMES = tuple(BUILDERS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`built(name)`: the replica of `name`, built once per module."""
    root = tmp_path_factory.mktemp("published")
    made: dict[str, replicas.Replica] = {}

    def get(name: str) -> replicas.Replica:
        if name not in made:
            made[name] = BUILDERS[name](root / name)
        return made[name]

    return get


def reference_logits(reference: Path, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the plain transformers model of the same tensors, every position visible to every
    other through an explicit additive 4D mask of zeros (no config flag involved)."""
    model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()
    n, t = ids.shape
    with torch.no_grad():
        return model(ids, attention_mask=torch.zeros(n, 1, t, t)).logits


def ids_of(tokenizer, n: int = 2, t: int = 9, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, min(len(tokenizer), 300), (n, t), generator=gen)


@pytest.mark.parametrize("name", NAMES)
def test_opens_with_its_metadata_and_the_logits_of_an_independent_forward(name: str, built) -> None:
    r = built(name)
    assert checkpoint_kind(str(r.path)) == "mdm"
    loaded = load_any(str(r.path))
    meta, model = loaded.meta, loaded.model
    family = FAMILIES[r.family]
    assert (meta.kind, meta.source_format, meta.family) == ("mdm", family.name, r.base)
    assert (meta.mask_id, meta.shift, meta.block_size) == (r.mask_id, r.shift, r.block_size)
    assert type(model).__module__.startswith("transformers.models."), "no code from the checkpoint runs"
    assert loaded.tokenizer.convert_ids_to_tokens(meta.mask_id) == loaded.tokenizer.mask_token
    ids = ids_of(loaded.tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits, reference_logits(r.reference, ids), atol=2e-5, rtol=0)
    # bidirectional by default: a change at the last position moves the first position's logits
    late = ids.clone()
    late[:, -1] = (late[:, -1] + 1) % 300
    with torch.no_grad():
        assert (model(late).logits[:, 0] - logits[:, 0]).abs().max() > 1e-4


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """LLaDA's rotary embedding: rotate-half on halves of the head, positions 0..T-1."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def llada_forward(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward written from its modeling code (LLaDALlamaBlock), on its own weight names:
    x + attn_out(attention(rope(q), rope(k), v)) over attn_norm(x), then
    x + ff_out(silu(ff_proj(m)) * up_proj(m)) over ff_norm(x); ln_f; the ff_out head. No mask."""
    w = load_file(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    nh, nkv, eps, theta = cfg["n_heads"], cfg["n_kv_heads"], cfg["rms_norm_eps"], cfg["rope_theta"]
    p = "model.transformer."
    x = w[p + "wte.weight"][ids]
    b, t, d = x.shape
    hd = d // nh
    for i in range(cfg["n_layers"]):
        blk = f"{p}blocks.{i}."
        n = rms(x, w[blk + "attn_norm.weight"], eps)
        q = (n @ w[blk + "q_proj.weight"].T).view(b, t, nh, hd).transpose(1, 2)
        k = (n @ w[blk + "k_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        v = (n @ w[blk + "v_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        q, k = rotate(q, theta), rotate(k, theta)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + att.transpose(1, 2).reshape(b, t, d) @ w[blk + "attn_out.weight"].T
        m = rms(x, w[blk + "ff_norm.weight"], eps)
        ff = torch.nn.functional.silu(m @ w[blk + "ff_proj.weight"].T) * (m @ w[blk + "up_proj.weight"].T)
        x = x + ff @ w[blk + "ff_out.weight"].T
    return rms(x, w[p + "ln_f.weight"], eps) @ w[p + "ff_out.weight"].T


def test_llada_logits_equal_a_forward_written_from_its_modeling_code(built) -> None:
    r = built("llada")
    loaded = load_any(str(r.path))
    ids = ids_of(loaded.tokenizer, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, llada_forward(r.path, ids), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_and_never_changes_the_prompt(name: str, built) -> None:
    r = built(name)
    loaded = load_any(str(r.path))
    scorer = load_ar(replicas.ar_partner(r, r.path.parent))
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    tok = loaded.tokenizer
    prompts = [tok("When Mary and John went to")["input_ids"], tok("the war lasted from 17")["input_ids"]]
    canvas, am = make_canvas(prompts, 6, mask_id=ctx.placeholder, pad_id=ctx.pad_id)
    ran = []
    for sampler in SAMPLERS:
        if sampler == "ar" or (sampler == "uniform" and ctx.noise != "uniform"):
            continue  # the ARM's sampler; uniform-noise MDMs only (both refuse an absorbing MDM)
        options = {"scorer": scorer.model} if SAMPLERS.get(sampler).needs_scorer else {}
        result = run(build_sampler(sampler, **options), loaded.model, canvas, am, ctx, seed=0)
        for row, prompt in enumerate(prompts):
            assert result.ids[row, : len(prompt)].tolist() == prompt, f"{sampler} changed the prompt"
            assert ctx.mask_id not in result.generated(row), f"{sampler} left a mask"
        assert result.nfe >= 1
        ran.append(sampler)
    assert {"low-confidence", "threshold", "ancestral", "remask", "arpc"} <= set(ran)


@pytest.mark.parametrize("name", NAMES)
def test_run_with_cache_and_eap_ig_on_the_replica(name: str, built) -> None:
    r = built(name)
    pm = ProbedModel.from_checkpoint(str(r.path), backend="torch")
    assert (pm.config.kind, pm.config.mask_id, pm.config.shift) == ("mdm", r.mask_id, r.shift)
    ids = ids_of(pm.tokenizer, t=2 * (r.block_size or 4) + 1, seed=1)
    logits, cache = pm.run_with_cache(ids, ["L0.resid_post", "L1.H0.pattern"])
    with torch.no_grad():
        plain = pm.model(ids, attention_mask=torch.ones_like(ids)).logits if r.block_size is None else None
    if plain is not None:
        torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    pattern = cache["L1.H0.pattern"]
    if r.block_size is None:  # bidirectional: the first query attends to later keys
        assert float(pattern[:, 0, 1:].sum()) > 0
    else:  # block-causal: no weight on a later block
        assert float(pattern[:, 0, r.block_size :].abs().max()) == 0
    task = get_task("ioi", pm.tokenizer)
    examples = task.generate_aligned(6, pm.tokenizer, seed=0, modes=("mdm",), mask_id=r.mask_id)
    items = [render(e, pm.tokenizer, "mdm", shift=r.shift, mask_id=r.mask_id) for e in examples]
    graph = attribute(pm, items, method="eap-ig-inputs", steps=2, batch_size=6)
    scores = torch.tensor([graph.score(e) for e in graph.edges])
    assert len(graph.edges) > 0 and bool(torch.isfinite(scores).all()) and float(scores.abs().max()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_compare_runs_on_a_published_pair(name: str, built) -> None:
    r = built(name)
    ar = ProbedModel.from_checkpoint(str(replicas.ar_partner(r, r.path.parent)), expect="ar", backend="torch")
    mdm = ProbedModel.from_checkpoint(str(r.path), expect="mdm", backend="torch")
    opts = CompareOptions(
        tasks=("ioi", "countdown"),
        pool_size=6,
        steps=2,
        n_boot=20,
        n_random=1,
        k_edges=10,
        k_nodes=2,
        batch_size=6,
        faithfulness=False,
        ablations=False,
        neurons=False,
        causal=False,
        denoising=(),
        common_correct=False,
        null_pair=False,
    )
    result = compare(ar, mdm, opts, log=lambda _: None)
    assert "ioi" in result.data["tasks"], result.data["pools"]
    for entry in result.data["tasks"].values():
        assert 0 <= entry["circuits"]["jaccard"]["estimate"] <= 1
    warnings = " ".join(result.data["warnings"])
    if name == "dream":  # Dream's tokenizer adds <|beginoftext|>: a warning, not a refusal
        assert "<|beginoftext|>" in warnings
    assert f"published {FAMILIES[r.family].title} checkpoint" in warnings


# --- GGUF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dream", "llada"])
def test_diffusion_gguf_opens_as_an_mdm_with_its_metadata(name: str, built, tmp_path: Path) -> None:
    r = built(name)
    file = replicas.write_diffusion_gguf(r, tmp_path / f"{name}.gguf")
    assert checkpoint_kind(str(file)) == "mdm"
    loaded = load_any(str(file))
    meta = loaded.meta
    assert (meta.kind, meta.source_format, meta.mask_id, meta.shift) == ("mdm", f"gguf:{name}", r.mask_id, r.shift)
    assert meta.extra["shift_from"] == ("diffusion.shift_logits" if name == "llada" else "family table")
    ids = ids_of(loaded.tokenizer, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, reference_logits(r.reference, ids), atol=2e-5, rtol=0)
    text = "When Mary and John went to the store"
    assert loaded.tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(r.reference)(text)["input_ids"]
    with pytest.raises(CheckpointError, match="must be an autoregressive"):
        load_ar(str(file))


def test_gguf_without_a_mask_token_is_refused(built, tmp_path: Path) -> None:
    file = replicas.write_diffusion_gguf(built("dream"), tmp_path / "nomask.gguf", with_mask=False)
    with pytest.raises(CheckpointError, match="mask_token_id"):
        load_any(str(file))


# --- wrong or missing pieces ------------------------------------------------------------------


def copy_of(r: replicas.Replica, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / r.path.name
    shutil.copytree(r.path, out)
    return out


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, ensure_ascii=False))


def edit_weights(folder: Path, drop: str | None = None, add: str | None = None) -> None:
    tensors = load_file(folder / "model.safetensors")
    if drop:
        tensors = {k: v for k, v in tensors.items() if drop not in k}
    if add:
        tensors[add] = torch.zeros(3)
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_or_an_extra_tensor_is_refused(name: str, built, tmp_path: Path) -> None:
    """Every family: a weight of layer 1 removed is an error (never a random initialisation); a
    tensor the mapping does not place is an error (never silently dropped)."""
    r = built(name)
    folder = copy_of(r, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    dropped = next(k for k in sorted(tensors) if re.search(r"\.(layers|blocks|h)\.1\.", k) and k.endswith("weight"))
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lack 1 tensors.*download the checkpoint again"):
        load_any(str(folder))
    save_file({**tensors, dropped.replace(".1.", ".0.") + "_extra": torch.zeros(3)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not have"):
        load_any(str(folder))


def test_config_lacking_a_size_or_of_an_unmapped_variant_is_refused(built, tmp_path: Path) -> None:
    folder = copy_of(built("llada"), tmp_path)
    edit_json(folder / "config.json", d_model=None)
    with pytest.raises(CheckpointError, match=r"lacks \['d_model'\]"):
        load_any(str(folder))
    edit_json(folder / "config.json", d_model=32, block_type="sequential")
    with pytest.raises(CheckpointError, match="block_type.*--trust-remote-code"):
        load_any(str(folder))


def test_mask_id_conflicts_and_fallbacks(built, tmp_path: Path) -> None:
    folder = copy_of(built("dream"), tmp_path)
    edit_json(folder / "config.json", mask_token_id=built("dream").mask_id - 1)
    with pytest.raises(CheckpointError, match="config.json says the mask token id is"):
        load_any(str(folder))
    # DiffuGPT whose tokenizer declares no mask: the published id (10541, diffugpt-s) is used,
    # and it is outside this tiny embedding, so the pair of files is refused
    gpt = copy_of(built("diffugpt"), tmp_path)
    edit_json(gpt / "special_tokens_map.json", mask_token=None)
    with pytest.raises(CheckpointError, match=r"10541 \(from the family table"):
        load_any(str(gpt))


def test_missing_tokenizer_files_are_a_clear_error(built, tmp_path: Path) -> None:
    folder = copy_of(built("sdar"), tmp_path)
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "vocab", "merges", "special")):
            file.unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_any(str(folder))


def test_a_tokenizer_without_its_vocabulary_is_refused_naming_the_files(built, tmp_path: Path) -> None:
    """Dream's tokenizer is vocab.json + merges.txt: without merges.txt (or with tokenizer_config.json
    alone) the folder is refused at load, naming what is missing, not opened with a one-token
    tokenizer (whose failure would later blame the prompt); the complete folder still loads."""
    assert len(load_any(str(built("dream").path)).tokenizer) > 100
    folder = copy_of(built("dream"), tmp_path)
    (folder / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"no usable tokenizer.*it lacks merges\.txt beside vocab\.json"):
        load_any(str(folder))
    (folder / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=r"has none of them \(tokenizer files found: tokenizer_config\.json\)"):
        load_any(str(folder))


def test_an_unknown_family_prefix_lists_the_families(built, tmp_path: Path, monkeypatch) -> None:
    """FAMILY:PATH with a family ar2mdm does not know names the families (not "does not exist");
    a known one in any case is read, and a folder whose own name holds a colon is still a path."""
    from ar2mdm.common.families import split_format

    path = built("dream").path
    with pytest.raises(CheckpointError, match=r"'qwerty' is not a checkpoint family.*dream \(.*llada \("):
        load_any(f"qwerty:{path}")
    assert split_format(f"Dream:{path}")[0] is FAMILIES["dream"]
    (tmp_path / "runs:v2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert split_format("runs:v2") == (None, "runs:v2")  # an existing folder whose name holds a colon
    with pytest.raises(CheckpointError, match="'runs' is not a checkpoint family"):
        split_format("runs:v3")
    assert split_format("https://example.org/model") == (None, "https://example.org/model")
    assert split_format("C:/models/x") == (None, "C:/models/x")  # a drive letter, not a family


def test_family_named_in_the_source_when_the_files_do_not_say(built, tmp_path: Path) -> None:
    folder = copy_of(built("diffullama"), tmp_path)
    edit_json(folder / "special_tokens_map.json", mask_token=None)
    assert detect_family(folder) is None and checkpoint_kind(str(folder)) == "ar"
    loaded = load_any(f"diffullama:{folder}")
    assert (loaded.meta.source_format, loaded.meta.mask_id) == ("diffullama", built("diffullama").mask_id)
    assert loaded.meta.extra["mask_id_from"] == "tokenizer token 'ти'"


def test_unknown_custom_architecture_lists_the_families_and_the_flag(built, tmp_path: Path) -> None:
    folder = copy_of(built("sdar"), tmp_path)
    edit_json(folder / "config.json", model_type="mystery_dlm", architectures=["MysteryDLM"])
    with pytest.raises(CheckpointError) as err:
        load_any(str(folder))
    text = str(err.value)
    assert "--trust-remote-code" in text and all(name in text for name in ("dream", "llada", "sdar", "fast-dllm-v2"))


def test_compare_refuses_different_vocabularies(built, make_tiny_model) -> None:
    other = make_tiny_model("qwen2", vocab_size=None)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["quokka"])
    tok.save_pretrained(other)
    ar = ProbedModel.from_checkpoint(str(other), backend="torch")
    mdm = ProbedModel.from_checkpoint(str(built("fast-dllm-v2").path), backend="torch")
    with pytest.raises(CheckpointError, match="different tokenizers"):
        compare(ar, mdm, CompareOptions(tasks=("ioi",)), log=lambda _: None)


def test_cli_compare_of_a_published_pair_in_bf16(built, tmp_path: Path) -> None:
    """`ar2mdm compare --ar QWEN --mdm DREAM --dtype bf16` as docs/CLI.md's "Analyse a published pair"."""
    from typer.testing import CliRunner

    from analyses.app.cli import app

    r = built("dream")
    ar = replicas.ar_partner(r, r.path.parent)
    out = tmp_path / "report"
    args = ["compare", "--ar", str(ar), "--mdm", str(r.path), "--out", str(out), "--tasks", "ioi", "--pool-size", "6"]
    args += ["--all-examples", "--steps", "2", "--n-boot", "20", "--no-faithfulness", "--no-ablations"]
    args += ["--no-neurons", "--no-causal", "--no-null-pair", "--denoising", "", "--dtype", "bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == {"ar": str(ar), "mdm": str(r.path)}
    assert report["tasks"]["ioi"]["n"] == 6
    assert "<|beginoftext|>" in " ".join(report["warnings"])


def test_parameter_count_from_headers_and_the_announcement_before_a_large_load(built, monkeypatch, capsys) -> None:
    """The count read from safetensors headers equals the loaded model's; a load above the
    announcement threshold prints its predicted memory first (the threshold lowered to 0 here)."""
    import conversion.memory as memory

    r = built("sdar")
    summary = memory.safetensors_summary(sorted(r.path.glob("*.safetensors")))
    monkeypatch.setattr(memory, "ANNOUNCE_ABOVE_BYTES", 0)
    loaded = load_any(str(r.path), dtype=torch.bfloat16)
    assert summary.n_params == sum(p.numel() for p in loaded.model.parameters())
    assert summary.file_bytes == 4 * summary.n_params  # the replica is stored in float32
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    line = capsys.readouterr().err
    expected = memory.predict_load_bytes(summary.n_params, torch.bfloat16, summary.largest, summary.file_bytes)
    assert "SDAR" in line and f"about {expected / memory.GiB:.1f} GiB in bfloat16" in line
    # by hand: parameters in bf16 + one float32 tensor in flight (the file is float32) + overhead
    assert expected == 2 * summary.n_params + 4 * summary.largest + memory.LOAD_OVERHEAD_BYTES


def test_published_pair_device_check_runs_at_tiny_scale_on_cpu(tmp_path: Path) -> None:
    """scripts/published_pair.py, the GPU check of a 0.5B-shaped Qwen2 / Dream pair, on its CPU size."""
    from scripts.published_pair import run as run_pair

    record = run_pair("tiny", "cpu", "bf16", tmp_path, pool=6)
    assert (record["mdm_source_format"], record["loaded_dtype"]) == ("dream", "torch.bfloat16")
    assert record["tasks"] == {"ioi": 6, "greater_than": 6}
    assert json.loads((tmp_path / "load.json").read_text()) == record
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.md").is_file()
