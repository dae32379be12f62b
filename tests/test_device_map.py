"""A model spread over devices (accelerate's big-model inference) gives the single-device results.

On CPU the devices are two CPU groups joined by accelerate's hooks (`dispatch(..., force_hooks)`),
and CPU + disk offload (a decoder layer written to an offload folder and read back for each call,
through the loaders' `device_map` as a user passes it). For a RoPE family (a Qwen2 ARM) and GPT-2
(a DiffuGPT MDM), each gives the same logits, activation cache, patching deltas, EAP-IG scores and
sampler outputs as the model on one device (within 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import replicas
import torch

from analyses.circuits import attribute
from ar2mdm.common.errors import UserError
from ar2mdm.common.placement import Placement, dispatch, main_device, parse_max_memory, placement_options
from ar2mdm.sampling import ModelContext, build_sampler, make_canvas, run
from ar2mdm.tasks import get_task, render
from conversion.checkpoints import load_any
from probe import ProbedModel

ATOL = 1e-5


def layer_map(model: torch.nn.Module, last: str) -> dict[str, str]:
    """{module: device} with every top-level module and decoder layer on "cpu", the last layer on `last`."""
    base_name, base = next((n, m) for n, m in model.named_children() if n in ("model", "transformer"))
    out: dict[str, str] = {}
    for name, child in base.named_children():
        if isinstance(child, torch.nn.ModuleList):
            out.update({f"{base_name}.{name}.{i}": "cpu" for i in range(len(child))})
            out[f"{base_name}.{name}.{len(child) - 1}"] = last
        else:
            out[f"{base_name}.{name}"] = "cpu"
    out.update({name: "cpu" for name, _ in model.named_children() if name != base_name})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("split")
    dream = replicas.dream(root)
    return {
        "rope-ar": replicas.ar_partner(dream, root),
        "rope-mdm": dream.path,
        "gpt2-mdm": replicas.diffugpt(root).path,
    }


def _placed(source: Path, how: str, tmp_path: Path) -> ProbedModel:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if how == "one":
        return ProbedModel.from_checkpoint(str(source), backend="torch")
    if how == "two-cpu-groups":
        pm = ProbedModel.from_checkpoint(str(source), backend="torch")
        dispatch(pm.model, Placement(layer_map(pm.model, last="cpu")))
        return pm
    plain = load_any(str(source)).model
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(layer_map(plain, last="disk")))
    return ProbedModel.from_checkpoint(
        str(source), backend="torch", device_map=str(device_map), offload_folder=str(tmp_path / "offload")
    )


def _items(pm: ProbedModel, n: int = 4) -> list:
    kind, mask_id, shift = pm.config.kind, pm.config.mask_id, pm.config.shift
    modes = ("ar",) if kind == "ar" else ("mdm",)
    examples = get_task("ioi", pm.tokenizer).generate_aligned(n, pm.tokenizer, seed=0, modes=modes, mask_id=mask_id)
    return [render(e, pm.tokenizer, modes[0], shift=shift, mask_id=mask_id) for e in examples]


def _results(pm: ProbedModel) -> dict[str, torch.Tensor]:
    """Everything the test compares, on the CPU."""
    items = _items(pm)
    ids = items[0].input_ids[None]  # [1, T]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits, cache = pm.run_with_cache(ids, names=["L*.H*", "L*.mlp", "L1.resid_post"])
        out["logits"] = logits.cpu()
        out.update({f"cache {k}": v.cpu() for k, v in cache.items()})
        with pm.intervene() as iv:
            iv.zero("L1.H0")
            out["zero L1.H0"] = (pm(ids) - logits).cpu()
    graph = attribute(pm, items, method="eap-ig-inputs", steps=2, batch_size=4)
    out["eap-ig"] = torch.tensor([graph.score(e) for e in graph.edges])
    ctx = ModelContext.from_meta(pm.meta, pm.tokenizer, pm.model)
    prompts = [
        pm.tokenizer("When Mary and John went to")["input_ids"],
        pm.tokenizer("the war lasted from 17")["input_ids"],
    ]
    canvas, am = make_canvas(prompts, 5, mask_id=ctx.placeholder, pad_id=ctx.pad_id)
    # the ARM's exact KV cache; the MDM's full-canvas sampler and the prefix / dual KV caches
    samplers = [("ar", {})] if pm.config.kind == "ar" else [("low-confidence", {})]
    if pm.config.kind == "mdm":
        samplers += [
            ("threshold", {"cache": "prefix", "block_length": 4}),
            ("factor", {"cache": "dual", "block_length": 4}),
        ]
    for name, options in samplers:
        result = run(build_sampler(name, **options), pm.model, canvas, am, ctx, seed=0)
        out[f"sampler {name} {options}"] = result.ids.cpu()
    return out


@pytest.mark.parametrize("family", ["rope-ar", "gpt2-mdm"])
@pytest.mark.parametrize("how", ["two-cpu-groups", "cpu+disk"])
def test_a_split_model_gives_the_single_device_results(models, family: str, how: str, tmp_path: Path) -> None:
    reference = _results(_placed(models[family], "one", tmp_path))
    pm = _placed(models[family], how, tmp_path)
    assert isinstance(pm.model.hf_device_map, dict)
    if how == "cpu+disk":  # the last layer's weights are not in memory between calls (meta tensors)
        on_disk = [name for name, device in pm.model.hf_device_map.items() if device == "disk"]
        layer = pm.model.get_submodule(on_disk[0])
        assert all(p.device.type == "meta" for p in layer.parameters())
    got = _results(pm)
    assert got.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], atol=ATOL, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert main_device(pm.model) == torch.device("cpu")


def _split_for(backend: str, source: Path, how: str, tmp_path: Path) -> ProbedModel:
    """`source` split as `how` says, probed with `backend`."""
    if how == "two-cpu-groups":
        model = load_any(str(source))
        dispatch(model.model, Placement(layer_map(model.model, last="cpu")))
        return ProbedModel(model.model, model.tokenizer, model.meta, backend=backend)
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(layer_map(load_any(str(source)).model, last="disk")))
    return ProbedModel.from_checkpoint(
        str(source), backend=backend, device_map=str(device_map), offload_folder=str(tmp_path / "offload")
    )


@pytest.mark.parametrize("backend", ["nnsight", "tl"])
@pytest.mark.parametrize("how", ["two-cpu-groups", "cpu+disk"])
def test_nnsight_and_tl_backends_probe_a_split_model(models, backend: str, how: str, tmp_path: Path) -> None:
    one = ProbedModel.from_checkpoint(str(models["rope-ar"]), backend=backend)
    split = _split_for(backend, models["rope-ar"], how, tmp_path)
    assert split.backend_name == backend
    ids = one.tokenizer(["When Mary and John went to the store"], return_tensors="pt").input_ids
    a, cache_a = one.run_with_cache(ids, names=["L*.H*", "L*.mlp", "L1.resid_post"])
    b, cache_b = split.run_with_cache(ids, names=["L*.H*", "L*.mlp", "L1.resid_post"])
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    for name in cache_a:
        torch.testing.assert_close(cache_b[name], cache_a[name], atol=ATOL, rtol=0)


def test_auto_backend_does_not_copy_a_split_model_into_transformer_lens(models) -> None:
    loaded = load_any(str(models["rope-ar"]))
    assert ProbedModel(loaded.model, loaded.tokenizer, loaded.meta, backend="auto").backend_name == "tl"
    dispatch(loaded.model, Placement(layer_map(loaded.model, last="cpu")))
    assert ProbedModel(loaded.model, loaded.tokenizer, loaded.meta, backend="auto").backend_name != "tl"


def test_placement_options_are_checked(tmp_path: Path) -> None:
    assert parse_max_memory("0=70GiB, cpu=200GB") == {0: 70 * 2**30, "cpu": 200 * 10**9}
    assert placement_options("Sequential").device_map == "sequential"
    bad = [
        (("nowhere", None, None), "neither a strategy .* nor an existing JSON file"),
        (("auto", "0=lots", None), "'lots' is not a size"),
        (("auto", "70GiB", None), "is not DEVICE=SIZE"),
        ((None, "0=70GiB", None), "only with a device_map"),
        (({"lm_head": "disk"}, None, None), "give an offload_folder"),
        (({"lm_head": "gpu9"}, None, None), "'gpu9' is not a device"),
    ]
    for (device_map, max_memory, folder), pattern in bad:
        with pytest.raises(UserError, match=pattern):
            placement_options(device_map, max_memory, folder)
    with pytest.raises(UserError, match="both say where the model goes"):
        placement_options("auto", device="cuda:0")


def test_a_map_that_misses_a_module_is_refused(models) -> None:
    pm = ProbedModel.from_checkpoint(str(models["rope-ar"]), backend="torch")
    partial = layer_map(pm.model, last="cpu")
    partial.pop("lm_head")
    with pytest.raises(UserError, match=r"no device for \['lm_head.weight'\]"):
        dispatch(pm.model, Placement(partial))


def test_cli_sample_with_a_device_map_gives_the_one_device_text(models, tmp_path: Path) -> None:
    """`ar2mdm sample --device-map FILE --offload-folder DIR` prints what `--device cpu` prints."""
    from typer.testing import CliRunner

    from analyses.app.cli import app

    source = str(models["gpt2-mdm"])
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(layer_map(load_any(source).model, last="disk")))
    args = ["sample", "--model", source, "--prompt", "When Mary and John went to", "--max-new-tokens", "4"]
    one = CliRunner().invoke(app, args)
    split = CliRunner().invoke(app, [*args, "--device-map", str(device_map), "--offload-folder", str(tmp_path / "off")])
    assert one.exit_code == 0 and split.exit_code == 0, one.output + split.output

    def sample_lines(output: str) -> list[str]:  # the samples, without progress bars and timings
        return [line for line in output.splitlines() if line.strip() and "it/s" not in line and " s" not in line]

    assert sample_lines(split.output) == sample_lines(one.output) != []
    bad = CliRunner().invoke(app, [*args, "--max-memory", "cpu=1GiB"])
    assert bad.exit_code == 2 and "only with a device_map" in bad.output


def _close(a, b, where: str = "") -> None:
    """Nested report values equal, numbers within ATOL (timings left out)."""
    if isinstance(a, dict):
        keys = {k for k in a if k != "seconds"}
        assert keys == {k for k in b if k != "seconds"}, where
        for k in keys:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= ATOL or (a != a and b != b), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_exact_patching_and_a_comparison_of_a_split_pair(models, tmp_path: Path) -> None:
    """Exact edge patching, and a whole comparison (circuits, faithfulness, depth with ablations,
    neurons, claims) of an ARM and MDM each split over CPU + disk equal the one-device ones."""
    from analyses.compare import CompareOptions, compare

    one = {k: _placed(models[f"rope-{k}"], "one", tmp_path / f"one-{k}") for k in ("ar", "mdm")}
    split = {k: _placed(models[f"rope-{k}"], "cpu+disk", tmp_path / f"split-{k}") for k in ("ar", "mdm")}
    items = _items(one["ar"])
    exact = [attribute(pm["ar"], items, method="exact", batch_size=4) for pm in (one, split)]
    torch.testing.assert_close(exact[1].scores, exact[0].scores, atol=ATOL, rtol=0)
    opts = CompareOptions(
        tasks=("ioi",), pool_size=4, steps=2, n_boot=20, n_random=1, k_edges=8, k_nodes=2, batch_size=4,
        causal=False, denoising=(), common_correct=False, null_pair=False,
    )  # fmt: skip
    reports = [compare(pm["ar"], pm["mdm"], opts, log=lambda _: None).data for pm in (one, split)]
    assert reports[0]["tasks"], reports[0]["pools"]
    _close(reports[1]["tasks"], reports[0]["tasks"], "tasks")
    _close(reports[1]["units"], reports[0]["units"], "units")
