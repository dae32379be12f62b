"""Predicted peak memory of edge attribution, before it runs.

`predict_memory(config, batch=, seq_len=, method=, ...)` adds up what `analyses.attribution`
keeps alive in each phase of one batch and returns the largest phase plus the weights
(`MemoryEstimate`; bytes). The terms, for S senders, R receivers, B rows of T tokens and
d_model D, in the model's dtype (a bytes per value) unless said otherwise:

- sender values: S x B x T x D x a per cache. Gradient methods hold the corrupted and the clean
  cache together only until their difference is taken (in place); the passes then keep the
  differences ("deltas"; none with offload "cpu"/"disk" on a GPU, none with "disk" on the CPU);
- summed receiver gradients: R x B x T x D x 4 (float32 or wider);
- one pass: what autograd saves in a forward pass of B x steps_per_pass rows (counted exactly by
  running the model on PyTorch's "meta" device, which allocates nothing; an analytic estimate when
  the model cannot be built there), plus the logits, their gradient, and the probe's gradient
  points (each MLP's input copy and the q/k/v projection outputs, with gradients);
- the final product: the deltas, the gradients and one 64 MiB chunk of float32 senders, plus the
  [S, R] float64 score matrix (x B with per-example scores).

Exact patching holds the corrupted cache and one no-grad pass of `rows_per_pass` rows.
`benchmarks/bench_attribution_memory.py` checks the prediction against measured peaks.

    >>> est = predict_memory(pm.model.config, batch=8, seq_len=20, method="eap-ig-inputs")  # doctest: +SKIP
    >>> print(est.describe())                                                              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import torch

from analyses.attribution import CHUNK_BYTES, OFFLOADS
from ar2mdm.common.errors import UserError
from probe.moe import MoeBlock, is_moe_block
from probe.names import Shape

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one attribution run: `weights`, the analysis's phases (bytes alive in
    each, on top of the weights) and `peak` = weights + the largest phase; `terms` are the parts
    the phases are made of; `counted` says how the pass's autograd state was obtained ("meta":
    counted on the meta device; "analytic": the fallback formula)."""

    method: str
    batch: int
    seq_len: int
    dtype: str
    weights: int
    phases: dict[str, int]
    terms: dict[str, int]
    counted: str
    peak: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak", self.weights + max(self.phases.values()))

    @property
    def analysis(self) -> int:
        """Bytes on top of the weights at the peak."""
        return self.peak - self.weights

    def describe(self) -> str:
        top = max(self.phases, key=self.phases.get)
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.terms.items() if v)
        return (
            f"{self.method} on batches of {self.batch} x {self.seq_len} tokens ({self.dtype}): predicted peak "
            f"{self.peak / GIB:.2f} GiB = weights {self.weights / GIB:.2f} + {self.analysis / GIB:.2f} in the "
            f"{top} phase (GiB: {parts})"
        )

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "weights": self.weights,
            "phases": self.phases,
            "terms": self.terms,
            "counted": self.counted,
            "peak": self.peak,
        }


def shape_of(config) -> tuple[Shape, int, int, int]:
    """(probe Shape, d_model, d_head, vocab) of a transformers config; a mixture of experts' MoE
    layers, expert count and shared expert are read off the model built on the meta device."""
    text = getattr(config, "get_text_config", lambda: config)()
    n_heads = text.num_attention_heads
    d_model = text.hidden_size
    kv = getattr(text, "num_key_value_heads", None) or n_heads
    d_head = getattr(text, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(text, "intermediate_size", None) or 4 * d_model
    moe = moe_fields(config)
    return Shape(text.num_hidden_layers, n_heads, kv, d_mlp, **moe), d_model, d_head, text.vocab_size


def moe_fields(config) -> dict:
    """{n_experts, moe_layers, shared_expert} of a mixture-of-experts config ({} for a dense one)."""
    text = getattr(config, "get_text_config", lambda: config)()
    if not any(getattr(text, k, None) for k in ("num_experts", "n_routed_experts", "num_local_experts")):
        return {}
    model, _ = meta_model(config)
    blocks = [MoeBlock(layer.mlp, "") if is_moe_block(layer.mlp) else None for layer in model.base_model.layers]
    found = [b for b in blocks if b is not None]
    if not found:
        return {}
    return {
        "n_experts": found[0].n_experts,
        "moe_layers": tuple(i for i, b in enumerate(blocks) if b is not None),
        "shared_expert": found[0].shared is not None,
    }


def active_parameters(config) -> tuple[int, int]:
    """(parameters, parameters a token uses) of the model `config` describes: a mixture of experts
    holds every expert but runs top-k of them per token (shared experts always). Dense: equal."""
    model, total = meta_model(config)
    idle = 0
    for layer in model.base_model.layers:
        if is_moe_block(layer.mlp):
            block = MoeBlock(layer.mlp, "")
            per_expert = (block.experts.gate_up_proj.numel() + block.experts.down_proj.numel()) // block.n_experts
            idle += (block.n_experts - block.top_k) * per_expert
    return total, total - idle


def meta_model(config, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, int]:
    """(the model `config` describes built on the meta device, its parameter count); allocates
    nothing, and is remembered for the last few configs."""
    return _meta_model(_key(config), _config_dtype(dtype))


def parameter_count(config) -> int:
    """Parameters of the model `config` describes (built on the meta device; no memory)."""
    return _meta_model(_key(config), _config_dtype(torch.float32))[1]


def predict_memory(
    config,
    *,
    batch: int,
    seq_len: int,
    method: str = "eap-ig-inputs",
    dtype: torch.dtype = torch.float32,
    steps_per_pass: int = 1,
    offload: str = "none",
    device: str = "cpu",
    per_example: bool = False,
    rows_per_pass: int = 64,
    weights: int | None = None,
) -> MemoryEstimate:
    """Predict the peak memory of `attribute(pm, data, method=...)` on batches of `batch` rows
    of `seq_len` tokens, for the model `config` (a transformers config) held in `dtype`.

    weights: the weights' bytes (default: parameters x dtype size, counted on the meta device).
    device: "cpu" or "cuda" (offload="cpu" moves the deltas off a GPU; on the CPU only "disk"
    takes them out of memory). Raises UserError for an unknown method or offload.
    """
    if method not in ("exact", "eap", "eap-ig-inputs", "eap-ig-activations"):
        raise UserError(f"no memory model for attribution method {method!r}.")
    if offload not in OFFLOADS:
        raise UserError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}.")
    shape, d_model, d_head, vocab = shape_of(config)
    a = torch.empty((), dtype=dtype).element_size()
    from analyses.graph import Graph  # the edge lists; imported here to keep this module light

    graph = Graph(shape)
    S, R = len(graph.senders), len(graph.receivers)
    btd = batch * seq_len * d_model
    senders = S * btd * a
    logits = batch * seq_len * vocab * a
    held_on_device = offload == "none" or (offload == "cpu" and device == "cpu")
    deltas = senders if held_on_device else 0
    counted, saved = "meta", None
    rows = batch * (steps_per_pass if method.startswith("eap-ig") else 1)
    try:
        saved = _saved_bytes(_key(config), _config_dtype(dtype), rows, seq_len)
    except Exception:  # noqa: BLE001 - any model the meta device cannot build gets the formula
        counted = "analytic"
    if saved is None:
        saved = _analytic_saved(shape, d_model, vocab, rows, seq_len, a)
    probe_points = shape.n_layers * rows * seq_len * (2 * d_model + 2 * (shape.n_heads + 2 * shape.n_kv_heads) * d_head)
    one_pass = saved + 2 * rows * seq_len * vocab * a + probe_points * a
    if weights is None:
        try:
            weights = parameter_count(config) * a
        except Exception as err:  # noqa: BLE001 - the meta device could not build this model
            raise UserError(
                f"cannot count the parameters of a {getattr(config, 'model_type', '?')!r} model from its config "
                f"({type(err).__name__}); pass weights= (bytes) or use predict_for on the loaded model."
            ) from None
    terms: dict[str, int]
    if method == "exact":
        copies = max(1, rows_per_pass // batch)
        forward = 2 * copies * batch * seq_len * (vocab + 4 * d_model + shape.d_mlp) * a
        terms = {"sender values": senders, "logits": logits, "patched pass": forward}
        phases = {"caches": senders + logits, "patching": senders + 2 * logits + forward}
    else:
        gradients = R * btd * max(a, 4)
        chunk = min(CHUNK_BYTES, S * btd * 4)
        scores = S * R * 8 * (batch if per_example else 1)
        if method == "eap":
            # the clean cache is recorded by the gradient pass itself
            caches = senders + logits
            passes = senders + logits + gradients + senders + one_pass
        else:
            caches = 2 * senders + 2 * logits
            ends = 2 * senders if method == "eap-ig-activations" else 2 * btd * a
            passes = deltas + ends + gradients + one_pass
        product = deltas + gradients + chunk + scores
        terms = {
            "sender values": senders,
            "deltas": deltas,
            "receiver gradients": gradients,
            "one pass": one_pass,
            "product chunk": chunk,
            "scores": scores,
        }
        phases = {"caches": caches, "passes": passes, "product": product}
    return MemoryEstimate(method, batch, seq_len, str(dtype).removeprefix("torch."), weights, phases, terms, counted)


def check_free_memory(est: MemoryEstimate, free: int, where: str) -> None:
    """UserError when the analysis's predicted bytes (beyond the weights) exceed `free` bytes of
    `where` (a device name), saying what to lower."""
    if est.analysis > free:
        raise UserError(
            f"{est.method} needs about {est.analysis / GIB:.1f} GiB on {where} beyond the weights "
            f"({est.describe()}), but {free / GIB:.1f} GiB is free; lower batch_size (now {est.batch}), "
            "steps_per_pass, or keep the deltas elsewhere with offload='cpu'."
        )


def predict_for(pm, *, batch: int, seq_len: int, method: str, **kwargs) -> MemoryEstimate:
    """`predict_memory` for a loaded `ProbedModel` (its config, dtype, device and weights)."""
    param = next(pm.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in pm.model.parameters())
    return predict_memory(
        pm.model.config,
        batch=batch,
        seq_len=seq_len,
        method=method,
        dtype=param.dtype,
        device=param.device.type,
        weights=weights,
        **kwargs,
    )


# --- counting on the meta device ----------------------------------------------------------------


def _key(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def _config_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=4)
def _meta_model(key: str, dtype: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(key)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    config._attn_implementation = "eager"  # what the probe runs
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()  # no dropout, as the probe runs models
    model.requires_grad_(False)
    return model, sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=64)
def _saved_bytes(key: str, dtype: str, rows: int, seq_len: int) -> int:
    """Bytes autograd saves in one forward pass (activations only, each storage once)."""
    model, _ = _meta_model(key, dtype)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    ids = torch.zeros(rows, seq_len, dtype=torch.long, device="meta")
    mask = torch.ones(rows, seq_len, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embeds = model.get_input_embeddings()(ids).requires_grad_(True)
        model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
    return sum(seen.values())


def _analytic_saved(shape: Shape, d_model: int, vocab: int, rows: int, seq_len: int, a: int) -> int:
    """Fallback: a pre-norm block with a gated MLP and eager attention saves about
    10 D + 4 d_mlp values per token and 3 heads x T scores per query; the logits once more."""
    bt = rows * seq_len
    per_layer = bt * (10 * d_model + 4 * shape.d_mlp) + 3 * rows * shape.n_heads * seq_len * seq_len
    return (shape.n_layers * per_layer + bt * (vocab + d_model)) * a
