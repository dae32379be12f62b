"""Bad inputs of the hardening pass "every option given is used or refused", "bounds before
allocation" and "messages that say what was wrong": cases in the form of tests/error_cases.py
(merged into its CASES; docs/ERRORS.md lists them).

The files these cases need beyond `build_sandbox` are made by each case's `setup` (idempotent, so
the module-scoped sandbox of tests/test_errors.py can share them): `dream_notok` (a Dream folder
without tokenizer files), `ar_nan` (an AR model with NaN weights), `mdm_kv4` (an MDM with 4 KV
heads where {ar} has 2) and `lora8` (a config file `lora: 8`). `extend_sandbox(p)` makes all of
them at once, for a sandbox builder that prefers to.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import replicas
import torch
from conftest import tiny_config, tiny_tokenizer
from error_cases import Case
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from conversion.checkpoints import load_any, load_ar
from conversion.mdm import add_mask_token, save_mdm
from probe.rules import BackwardRules

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def dream_without_tokenizer(p: dict[str, Path]) -> None:
    """{dream_notok}: a Dream folder as downloaded, but without any of its tokenizer files."""
    p["dream_notok"] = p["root"] / "dream-notok"
    if p["dream_notok"].exists():
        return
    dream = replicas.dream(p["root"] / "published-notok")
    shutil.copytree(dream.path, p["dream_notok"])
    shutil.rmtree(p["root"] / "published-notok")
    for name in TOKENIZER_FILES:
        (p["dream_notok"] / name).unlink(missing_ok=True)


def ar_with_nan(p: dict[str, Path]) -> None:
    """{ar_nan}: {ar} with NaN in one MLP weight (a checkpoint saved after its training diverged)."""
    p["ar_nan"] = p["root"] / "ar-nan"
    if p["ar_nan"].exists():
        return
    shutil.copytree(p["ar"], p["ar_nan"])
    file = p["ar_nan"] / "model.safetensors"
    weights = load_file(file)
    name = next(k for k in weights if "mlp.up_proj" in k)
    weights[name] = weights[name].clone()
    weights[name][0, :3] = float("nan")
    save_file(weights, str(file), metadata={"format": "pt"})


def mdm_other_kv(p: dict[str, Path]) -> None:
    """{mdm_kv4}: an MDM of {ar}'s vocabulary, layers, heads and MLP width but 4 KV heads (not 2)."""
    p["mdm_kv4"] = p["root"] / "mdm-kv4"
    if p["mdm_kv4"].exists():
        return
    tokenizer = tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.num_key_value_heads = config.num_attention_heads
    torch.manual_seed(1)
    source = p["root"] / "ar-kv4"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(source)
    tokenizer.save_pretrained(source)
    loaded = load_ar(source)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(
        kind="mdm",
        source=str(source),
        source_hash=loaded.meta.source_hash,
        family="llama",
        shift=True,
        mask_id=mask_id,
        noise="absorbing",
        schedule="linear",
    )
    save_mdm(loaded.model, loaded.tokenizer, meta, p["mdm_kv4"])


def lora_config_file(p: dict[str, Path]) -> None:
    """{lora8}: a config file whose `lora: 8` is no LoRA setting (r=8 was meant)."""
    p["lora8"] = p["root"] / "data" / "lora8.yaml"
    if not p["lora8"].exists():
        p["lora8"].write_text("lora: 8\n")


def extend_sandbox(p: dict[str, Path]) -> dict[str, Path]:
    """Make every file these cases need (what their setups make one by one); returns `p`."""
    for make in (dream_without_tokenizer, ar_with_nan, mdm_other_kv, lora_config_file):
        make(p)
    return p


def _unchecked(p: dict[str, Path]) -> contextlib.AbstractContextManager:
    """The suite's run-time type checks off for a case that passes a wrong value on purpose: what a
    library user (who runs without them) gets is ar2mdm's own message."""
    from suite_typecheck import unchecked

    return unchecked()


def _convert(*extra: str) -> tuple[str, ...]:
    return ("convert", "--data", "{corpus}", "--steps", "1", "--seq-len", "16", "--batch-size", "2", *extra)


def _compare(*extra: str) -> tuple[str, ...]:
    return ("compare", "--ar", "{ar}", "--out", "{root}/c", "--tasks", "ioi", *extra)


CASES: tuple[Case, ...] = (
    # --- every option given is used or refused --------------------------------------------------
    Case(
        "compare-k-edges-above-graph",
        "options",
        "`compare --k-edges 1000000` on a graph of 82 edges (would select every edge: Jaccard 1.00)",
        ("k_edges (--k-edges) is 1000000", "only 82 edges", "largest allowed value is 82"),
        "a K of at most the graph's edges (the message gives it), or leave it unset",
        cli=_compare("--mdm", "{mdm}", "--k-edges", "1000000"),
    ),
    Case(
        "compare-k-nodes-above-graph",
        "options",
        "`compare --k-nodes 1000` on a model of 10 heads and MLPs",
        ("k_nodes (--k-nodes) is 1000", "largest allowed value is 10"),
        "a K of at most the heads + MLPs (the message gives it), or leave it unset",
        cli=_compare("--mdm", "{mdm}", "--k-nodes", "1000"),
    ),
    Case(
        "compare-pool-criterion-unknown",
        "options",
        "`compare --pool-criterion top-1` (the criteria are `ld` and `top1`)",
        ("pool criterion 'top-1' is unknown", "ld (logit difference", "top1 (the answer"),
        "`--pool-criterion ld` (answer preferred to the counterfactual) or `top1` (the answer is the top token)",
        cli=_compare("--mdm", "{mdm}", "--pool-criterion", "top-1"),
    ),
    Case(
        "compare-methods-repeated",
        "options",
        "`compare --methods gim,gim` (a method named twice)",
        ("--methods names gim more than once",),
        "each method once: `--methods gim,eap-ig-inputs`",
        cli=_compare("--mdm", "{mdm}", "--methods", "gim,gim"),
    ),
    Case(
        "compare-methods-unknown",
        "options",
        "`compare --methods gim,magic` (no such attribution method)",
        ("'magic' is no edge attribution method", "relp", "eap-gp"),
        "methods from the list the message gives (`ar2mdm compare --help`)",
        cli=_compare("--mdm", "{mdm}", "--methods", "gim,magic"),
    ),
    Case(
        "rules-temperature-not-positive",
        "options",
        "`BackwardRules(softmax_temperature=0)` (GIM's softmax temperature must be positive)",
        ("softmax_temperature must be > 0",),
        "a temperature above 0 (GIM uses 2; 1 is the plain softmax gradient)",
        call=lambda p: BackwardRules(softmax_temperature=0.0),
    ),
    Case(
        "lora-rank-above-layer",
        "options",
        "`convert --lora r=4096` on a model whose narrowest target (k_proj) is 32 x 16",
        ("r=4096", "k_proj", "largest useful rank here is 15"),
        "a rank below every target's smaller dimension, or other targets",
        cli=_convert("--model", "{ar}", "--out", "{root}/new", "--lora", "r=4096"),
    ),
    Case(
        "series-same-mdm-twice",
        "options",
        "`compare-series --mdm MDM --mdm DIR/./mdm`: one checkpoint under two spellings",
        ("are the same checkpoint", "give each one once"),
        "give each MDM once",
        cli=(
            "compare-series",
            "--ar",
            "{ar}",
            "--mdm",
            "{mdm}",
            "--mdm",
            "{root}/./mdm",
            "--out",
            "{root}/s",
            "--tasks",
            "ioi",
        ),
    ),
    Case(
        "published-without-tokenizer",
        "published",
        "a Dream folder without its tokenizer files",
        ("has no usable tokenizer", "vocab.json + merges.txt", "tokenizer files found: none"),
        "download the tokenizer files again, into the folder with the weights",
        cli=("sample", "--model", "{dream_notok}", "--prompt", "When"),
        setup=dream_without_tokenizer,
    ),
    # --- bounds before allocation ---------------------------------------------------------------
    Case(
        "sample-beyond-context",
        "options",
        "`sample --max-new-tokens 2000000000` on a model of 128 positions (checked before the canvas is built)",
        ("more than the model's context of 128", "new tokens fit", "--max-new-tokens"),
        "at most the number of new tokens the message gives",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--max-new-tokens", "2000000000"),
    ),
    # --- messages that say what was wrong -------------------------------------------------------
    Case(
        "config-lora-not-a-setting",
        "options",
        "config file `lora: 8` (a rank without its key)",
        ("lora8.yaml", "option 'lora'", "not key=value"),
        "lora: r=8 (key=value pairs)",
        cli=_convert("--config", "{lora8}", "--model", "{ar}", "--out", "{root}/new"),
        setup=lora_config_file,
    ),
    Case(
        "sample-second-prompt-empty",
        "options",
        "`sample --prompt 'When Mary' --prompt ''`",
        ("--prompt number 2 (of 2) is empty",),
        "give every --prompt text, or leave the empty one out",
        cli=("sample", "--model", "{mdm}", "--prompt", "When Mary", "--prompt", ""),
    ),
    Case(
        "compare-kv-heads-differ",
        "kinds",
        "`compare` of models that differ only in their KV heads",
        ("KV heads per layer 2 (AR) vs 4 (MDM)", "(4 KV heads)"),
        "compare an ARM with its own conversion",
        cli=_compare("--mdm", "{mdm_kv4}"),
        setup=mdm_other_kv,
    ),
    Case(
        "load-expect-unknown",
        "kinds",
        '`load_any(..., expect="autoregressive")` (the kinds are "ar" and "mdm")',
        ("expect='autoregressive' is not a checkpoint kind", "'ar'", "'mdm'"),
        "expect='ar' or 'mdm' (any case)",
        call=lambda p: load_any(p["ar"], expect="autoregressive"),  # type: ignore[arg-type]
        expect=UserError,
        setup=_unchecked,
    ),
    Case(
        "unknown-family-prefix",
        "published",
        "FAMILY:PATH with an unknown family (`qwerty:MDM`)",
        ("'qwerty' is not a checkpoint family", "dream (", "llada ("),
        "a family from the message's list, or the path alone",
        cli=("sample", "--model", "qwerty:{mdm}", "--prompt", "When"),
    ),
    Case(
        "convert-nan-source",
        "kinds",
        "`convert --model` whose weights already hold NaN",
        ("already holds NaN or infinite weights", "mlp.up_proj", "not the cause"),
        "load a good copy of the source model",
        cli=_convert("--model", "{ar_nan}", "--out", "{root}/new"),
        setup=ar_with_nan,
    ),
    Case(
        "organism-eval-not-organism",
        "kinds",
        "`organism eval` of a model that is not an organism",
        ("is not a model organism", "ar2mdm eval --model"),
        "pass an organism; score other models with `ar2mdm eval`",
        cli=("organism", "eval", "{ar}", "--n", "2"),
    ),
    # --- models over several devices (ar2mdm.common.placement) -----------------------------------
    Case(
        "device-map-unknown",
        "options",
        "`compare --device-map nowhere`: neither a strategy nor a JSON file",
        ("--device-map 'nowhere'", "neither a strategy", "existing JSON file"),
        "a strategy (auto, balanced, balanced_low_0, sequential) or the path of a JSON {module: device} file",
        cli=_compare("--mdm", "{mdm}", "--device-map", "nowhere"),
    ),
    Case(
        "max-memory-without-map",
        "options",
        "`sample --max-memory cpu=1GiB` without --device-map",
        ("max_memory and offload_folder place a model only with a device_map",),
        "add --device-map (auto, balanced, ...) or drop --max-memory",
        cli=("sample", "--model", "{ar}", "--prompt", "When", "--max-memory", "cpu=1GiB"),
    ),
    Case(
        "max-memory-not-a-size",
        "options",
        "`sample --device-map auto --max-memory 0=lots`",
        ("'lots' is not a size", "70GiB"),
        "DEVICE=SIZE pairs such as 0=70GiB,cpu=200GiB",
        cli=("sample", "--model", "{ar}", "--prompt", "When", "--device-map", "auto", "--max-memory", "0=lots"),
    ),
)
