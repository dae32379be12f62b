"""docs/ERRORS.md cases of mixture-of-experts models: published MoE checkpoints with a piece wrong
(tests/replicas_moe.py), the probe's names and backends on an MoE model, a conversion's router
options."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import replicas_moe
import torch
from error_cases import Case
from safetensors.torch import load_file, save_file

from ar2mdm.common.errors import CheckpointError, UserError
from conversion.checkpoints import load_any
from probe import ProbedModel


@contextlib.contextmanager
def _replicas(p: dict[str, Path]) -> Iterator[None]:
    """Adds p["moe_missing_expert"] (LLaDA-MoE without expert 2 of layer 1), p["moe_count"] (its
    config saying 8 experts where the files hold 4), p["llada2_softmax"] (LLaDA2 whose config asks
    for a softmax router) and p["moe"] (the intact LLaDA-MoE)."""
    root = p["root"] / "moe-cases"
    if not root.exists():
        replicas_moe.llada_moe(root / "a")
        replicas_moe.llada_moe(root / "b")
        replicas_moe.llada_moe(root / "c")
        replicas_moe.llada2(root / "d")
        folder = root / "a" / "LLaDA-MoE-7B-A1B-Base-tiny"
        tensors = load_file(folder / "model.safetensors")
        save_file(
            {k: v for k, v in tensors.items() if "layers.1.mlp.experts.2." not in k}, str(folder / "model.safetensors")
        )
        _edit(root / "b" / "LLaDA-MoE-7B-A1B-Base-tiny" / "config.json", num_experts=8)
        _edit(root / "d" / "LLaDA2.0-mini-tiny" / "config.json", score_function="softmax")
    p["moe_missing_expert"] = root / "a" / "LLaDA-MoE-7B-A1B-Base-tiny"
    p["moe_count"] = root / "b" / "LLaDA-MoE-7B-A1B-Base-tiny"
    p["moe"] = root / "c" / "LLaDA-MoE-7B-A1B-Base-tiny"
    p["llada2_softmax"] = root / "d" / "LLaDA2.0-mini-tiny"
    yield


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _convert(*extra: str) -> tuple[str, ...]:
    return ("convert", "--data", "{corpus}", "--steps", "1", "--seq-len", "16", "--batch-size", "2", *extra)


CASES: tuple[Case, ...] = (
    Case(
        "moe-missing-expert",
        "moe",
        "`load_any` of a LLaDA-MoE folder whose weights lack expert 2 of layer 1 (a missing shard)",
        ("lack expert(s) [2] of layer 1", "4 per layer in config.json", "Download the checkpoint again"),
        "download the checkpoint again (every shard)",
        call=lambda p: load_any(str(p["moe_missing_expert"])),
        expect=CheckpointError,
        setup=_replicas,
    ),
    Case(
        "moe-expert-count",
        "moe",
        "`load_any` of a LLaDA-MoE folder whose config.json says 8 experts where the weights hold 4",
        ("holds 4 experts", "config.json says each MoE layer has 8", "belong to different models"),
        "the config.json that came with the weights",
        call=lambda p: load_any(str(p["moe_count"])),
        expect=CheckpointError,
        setup=_replicas,
    ),
    Case(
        "moe-router-setting",
        "moe",
        "`load_any` of a LLaDA2 folder whose config asks for a softmax router (transformers' class routes by sigmoid)",
        ("sets {'score_function': 'softmax'}", "does not map onto", "--trust-remote-code"),
        "the published config, or --trust-remote-code for a variant you trust",
        call=lambda p: load_any(str(p["llada2_softmax"])),
        expect=CheckpointError,
        setup=_replicas,
    ),
    Case(
        "moe-neurons",
        "moe",
        "`run_with_cache(names='L1.mlp.neurons')` on a mixture-of-experts layer",
        ("layer 1 is a mixture of experts", "L1.expert0", "not MLP neurons"),
        "the layer's experts (L1.expert{e}), its routing (L1.routing) or its output (L1.mlp)",
        call=lambda p: ProbedModel.from_checkpoint(str(p["moe"]), backend="torch").run_with_cache(
            torch.tensor([[5, 6, 7]]), names="L1.mlp.neurons"
        ),
        setup=_replicas,
    ),
    Case(
        "moe-tl-backend",
        "moe",
        "`ProbedModel.from_checkpoint(moe, backend='tl')`: TransformerLens has no router or expert hook points",
        (
            "is a mixture of experts",
            "TransformerLens's bridge has no hook points",
            "backend='torch' or backend='nnsight'",
        ),
        "backend 'torch' or 'nnsight' (or 'auto')",
        call=lambda p: ProbedModel.from_checkpoint(str(p["moe"]), backend="tl"),
        expect=UserError,
        setup=_replicas,
    ),
    Case(
        "convert-router-dense",
        "moe",
        "`convert --router freeze` of a dense ARM",
        ("--router freeze", "no mixture-of-experts layers", "drop these options"),
        "drop --router / --aux-loss for a dense source",
        cli=_convert("--model", "{ar}", "--out", "{root}/new", "--router", "freeze"),
    ),
    Case(
        "convert-aux-loss",
        "moe",
        "`convert --aux-loss lots`",
        ("aux_loss must be 'source', 'off' or a coefficient", "'lots'"),
        "source, off, or a number such as 0.001",
        cli=_convert("--model", "{ar}", "--out", "{root}/new", "--aux-loss", "lots"),
    ),
)
