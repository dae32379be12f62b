"""`ProbedModel`: one interface over AR and MDM checkpoints, in canonical names.

    >>> pm = ProbedModel.from_checkpoint("smollm2")                       # doctest: +SKIP
    >>> pm.config.n_layers, pm.config.kind, pm.backend_name               # doctest: +SKIP
    (30, 'ar', 'torch')
    >>> logits, cache = pm.run_with_cache(ids, names=["L*.H*", "L*.mlp"])  # doctest: +SKIP
    >>> with pm.intervene() as iv:                                         # doctest: +SKIP
    ...     iv.patch("L5.H*", corrupted_cache)
    ...     patched = pm(ids)
    >>> g = pm.run_with_grads(ids, metric, outputs="L*.H*", receivers="L*.H*.q")  # doctest: +SKIP

The model runs with eager attention (so patterns can be read) and frozen parameters (gradients
are taken with respect to activations only). An MDM checkpoint attends bidirectionally in every
backend; an AR checkpoint causally. A block-diffusion MDM (`meta.block_size` B, from
`convert --attention block:B`) is read under the block-causal mask it was trained and is sampled
with: a query sees every real token of its own block and of earlier blocks, blocks of B tokens
counted from each row's first real token (`block_causal_mask`). `_run`, which every entry point
goes through (forward, caches, gradients, interventions), hands that 4D mask to the backend in
place of the padding mask. `config.shift` and `read_positions` say where a prediction is
read (`ar2mdm.common.metadata.read_positions`, the project's single rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta, read_positions
from ar2mdm.common.modeling import position_ids
from ar2mdm.common.options import parse_count
from ar2mdm.diffusion.attention import to_additive
from conversion.checkpoints import Loaded, load_any
from probe.backends import Backend, choose, create
from probe.cache import Cache, DiskCache, ShardWriter
from probe.core import Core, Request
from probe.decompose import Decomposition, decompose
from probe.engine import Pass
from probe.inputs import Inputs, context_length, model_inputs
from probe.interventions import Interventions
from probe.layout import Layout
from probe.names import NameFilter, Shape, parse, select
from probe.rules import BackwardRules, applied
from probe.ungroup import UNGROUPED_FROM, ungroup_kv_heads


@dataclass(frozen=True)
class ProbeConfig:
    """The sizes and reading rules of a probed model.

    kind: "ar" (causal) or "mdm" (bidirectional). shift: logits at i predict token i + 1.
    mask_id: the MDM's mask token (None for AR). post_norms: sublayer outputs are normalised
    before joining the residual stream (Gemma); head-level sums then need `decompose`.
    block_size: a block-diffusion MDM's block size (read block-causally); None otherwise.
    kv_receivers: "grouped" (k/v receivers per key/value head) or "per-query" (the model was
    ungrouped, `probe.ungroup`: one k/v receiver per query head, as TransformerLens's ungrouped
    graph). Models without grouped-query attention are "grouped" (the two coincide).
    n_experts / top_k / moe_layers / shared_expert: a mixture-of-experts model's routed experts
    per MoE layer, experts per token, its MoE layers and whether they have a shared expert
    (0 / 0 / () / False for a dense model; `probe.moe`).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    kind: Literal["ar", "mdm"]
    shift: bool
    mask_id: int | None
    family: str
    post_norms: bool
    block_size: int | None = None
    kv_receivers: Literal["grouped", "per-query"] = "grouped"
    n_experts: int = 0
    top_k: int = 0
    moe_layers: tuple[int, ...] = ()
    shared_expert: bool = False

    @property
    def shape(self) -> Shape:
        return Shape(
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.d_mlp,
            n_experts=self.n_experts,
            moe_layers=self.moe_layers,
            shared_expert=self.shared_expert,
        )


@dataclass
class GradResult:
    """What `run_with_grads` returns.

    metric: the scalar's value. logits: [B, T, V] (detached). outputs: gradient w.r.t. each
    requested node's output (a head's equals its layer's attention-output gradient). inputs:
    gradient w.r.t. each requested receiver's input. cache: activations recorded in the same pass.
    """

    metric: Float[Tensor, ""]
    logits: Float[Tensor, "batch pos vocab"]
    outputs: Cache
    inputs: Cache
    cache: Cache


class ProbedModel:
    """An HF decoder (AR or MDM) with canonical-name caching, interventions and gradients.

    backend: "auto" or a registered backend (`from_checkpoint`). ungroup_kv: on a grouped-query
    model, key k/v receivers per query head (`probe.ungroup`; widens the model's k/v projections
    in place). Raises UserError for a model or meta the probe cannot read.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        meta: ModelMeta | None = None,
        *,
        backend: str = "auto",
        ungroup_kv: bool = False,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise UserError(f"ProbedModel wraps a transformers PreTrainedModel; got {type(model).__name__}.")
        if meta is None:
            if getattr(model.config, "is_causal", True) is False:
                raise UserError(
                    "this model attends bidirectionally (config.is_causal is False) but no ModelMeta "
                    "was given: pass meta=ModelMeta(kind='mdm', mask_id=..., shift=...) or load it "
                    "with conversion.mdm.load_mdm."
                )
            meta = ModelMeta(kind="ar", family=model.config.model_type, shift=True)
        if meta.kind not in ("ar", "mdm"):
            raise UserError(f"meta.kind is {meta.kind!r}; expected 'ar' or 'mdm'.")
        if meta.kind == "ar" and getattr(model.config, "is_causal", True) is False:
            raise UserError(
                "meta.kind is 'ar' but the model attends bidirectionally (config.is_causal is False): "
                "it is an MDM. Pass its ModelMeta (kind 'mdm', mask_id, shift), or load the folder with "
                "ProbedModel.from_checkpoint, which reads ar2mdm.json."
            )
        block_size = meta.block_size if meta.kind == "mdm" else None
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
        ):
            raise UserError(f"meta.block_size must be a positive integer (or None); got {block_size!r}.")
        if ungroup_kv:  # (after the checks above: a refused model is left as it was)
            ungroup_kv_heads(model)  # in place: the model's k/v projections get one head per query head
        model.eval()
        model.requires_grad_(False)
        # patterns are only observable in eager attention: the model rests there, and passes that
        # read none run with SDPA where the family supports it (`_attention`)
        self._sdpa = bool(getattr(model, "_supports_sdpa", False)) and _sdpa_faithful(model)
        model.set_attn_implementation("eager")
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.layout = Layout(model)
        lay = self.layout
        self.config = ProbeConfig(
            n_layers=lay.n_layers,
            n_heads=lay.n_heads,
            n_kv_heads=lay.n_kv_heads,
            d_model=lay.d_model,
            d_head=lay.d_head,
            d_mlp=lay.d_mlp,
            d_vocab=lay.d_vocab,
            kind=meta.kind,
            shift=meta.shift,
            mask_id=meta.mask_id,
            family=model.config.model_type,
            post_norms=lay.post_norms,
            block_size=block_size,
            kv_receivers="per-query" if getattr(model, UNGROUPED_FROM, None) else "grouped",
            n_experts=lay.n_experts,
            top_k=lay.top_k,
            moe_layers=lay.moe_layers,
            shared_expert=lay.shared_expert,
        )
        self.shape = self.config.shape
        self.core = Core(lay, self.shape)
        self.backend_name = choose(backend, model, tokenizer)
        self.backend: Backend = create(
            self.backend_name,
            model,
            lay,
            causal=meta.kind == "ar",
            tokenizer=tokenizer,
            source=meta.extra.get("path", meta.source) if meta.extra else meta.source,
        )
        self._active: list[Interventions] = []
        self._hooks: Backend | None = None  # forward hooks on the HF modules, for tl + backward rules
        self._names_memo: dict[object, tuple[str, ...]] = {}  # cache_names of names seen before

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path | Loaded | PreTrainedModel,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        meta: ModelMeta | None = None,
        backend: str = "auto",
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        trust_remote_code: bool | str = False,
        expect: Literal["ar", "mdm"] | None = None,
        role: str = "the model",
        ungroup_kv: bool = False,
        device_map: str | dict | None = None,
        max_memory: str | dict | None = None,
        offload_folder: str | Path | None = None,
    ) -> ProbedModel:
        """Probe any checkpoint the toolkit loads.

        source: a name or path `load_ar` accepts ("smollm2", "organism", an HF folder, a .gguf),
        an MDM folder (it holds ar2mdm.json with kind "mdm": loaded with `load_mdm`), a `Loaded`,
        or an in-memory HF model (then pass `tokenizer` and, for an MDM, `meta`).
        backend: "auto" or a registered backend (`probe.backends.BACKENDS`: "torch", "nnsight",
        "tl", or one of your own).
        expect: "ar" or "mdm" to refuse a path or name of the other kind (CheckpointError naming
        `role`, what the caller uses the checkpoint as); the kind is read from the files
        (`ar2mdm.common.metadata.checkpoint_kind`), so an MDM is never probed as a causal model.
        device_map / max_memory / offload_folder: spread the model over several GPUs, CPU memory
        and disk (`conversion.checkpoints.load_ar`); torch and nnsight probe it in place, "tl" a copy
        (so "auto" does not choose it for a split model).
        """
        if isinstance(source, PreTrainedModel):
            return cls(source, tokenizer, meta, backend=backend, ungroup_kv=ungroup_kv)
        if isinstance(source, Loaded):
            return cls(
                source.model, tokenizer or source.tokenizer, meta or source.meta, backend=backend, ungroup_kv=ungroup_kv
            )
        if not isinstance(source, str | Path):
            raise UserError(
                f"from_checkpoint takes a name, a path, a Loaded or an HF model; got {type(source).__name__}."
            )
        loaded = load_any(
            source,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            expect=expect,
            role=role,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
        )
        return cls(
            loaded.model, tokenizer or loaded.tokenizer, meta or loaded.meta, backend=backend, ungroup_kv=ungroup_kv
        )

    # --- names --------------------------------------------------------------------------------

    def components(self, *, neurons: bool = True, receivers: bool = True) -> list[str]:
        """Every canonical name, in forward order (see `probe.names`)."""
        return self.shape.components(neurons=neurons, receivers=receivers)

    def senders(self) -> list[str]:
        """embed, every head, every MLP: the nodes that write into the residual stream."""
        return self.shape.senders()

    def receivers(self) -> list[str]:
        """Every head's q/k/v input, every MLP, logits: the nodes that read from it."""
        return self.shape.all_receivers()

    def read_positions(self, answer_positions: Int[Tensor, "*batch"] | int) -> Int[Tensor, "*batch"] | int:
        """Logit positions that predict tokens at `answer_positions` (shift-aware)."""
        return read_positions(answer_positions, self.config.shift)

    # --- inputs -------------------------------------------------------------------------------

    def _inputs(self, inputs: Inputs, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(input_ids [B, T], attention_mask [B, T]) on the model's device, checked (`probe.inputs`)."""
        return model_inputs(self.model, self.tokenizer, inputs, attention_mask)

    @property
    def context_length(self) -> int | None:
        """The model's context in positions (max_position_embeddings / n_positions), if it states one."""
        return context_length(self.model)

    # --- running ------------------------------------------------------------------------------

    def _request(self, **kwargs) -> Request:
        edits, edges = [], []
        for iv in self._active:
            edits += iv.edits
            edges += iv.edges
        return Request(edits=edits, edges=edges, **kwargs)

    def _run(self, ids: Tensor, mask: Tensor, request: Request) -> tuple[Tensor, Pass]:
        """The one place a pass reaches the backend: a block-diffusion MDM gets its 4D
        block-causal mask here, every other model the 2D padding mask. A pass under backward
        rules must run the Hugging Face modules themselves: the tl backend is replaced by forward
        hooks for it."""
        run = Pass(self.core, request, ids.shape[0], ids.shape[1], ids.device)
        attention = mask
        if self.config.block_size is not None:
            attention = block_causal_mask(mask.long(), self.config.block_size, next(self.model.parameters()).dtype)
        backend = self.backend
        if request.rules is not None and self.backend_name == "tl":
            if self._hooks is None:
                self._hooks = create("torch", self.model, self.layout, causal=self.meta.kind == "ar")
            backend = self._hooks
        fns = run.site_fns()
        with self._attention(fast=backend is not self.backend or self.backend_name != "tl", pattern=run.reads_patterns):
            logits = backend.forward(ids, attention, position_ids(mask), fns)
        return logits, run

    @contextlib.contextmanager
    def _attention(self, *, fast: bool, pattern: bool) -> Iterator[None]:
        """The attention a pass runs with. The model rests in eager attention (patterns are only
        observable there, and code outside the probe may read them); a pass that reads no
        pattern runs with PyTorch's scaled-dot-product attention where the family supports it
        (the same numbers to float rounding, faster). A pass under backward rules keeps their
        attention (`probe.rules`); the tl backend keeps eager (its bridge reads patterns itself)."""
        model = self.model
        if not (fast and not pattern and self._sdpa and model.config._attn_implementation == "eager"):
            yield
            return
        model.set_attn_implementation("sdpa")
        try:
            yield
        finally:
            model.set_attn_implementation("eager")

    def forward(
        self, inputs: Inputs, *, attention_mask: Shaped[Tensor, "*_batch _pos"] | None = None
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits [B, T, V] under the active interventions."""
        ids, mask = self._inputs(inputs, attention_mask)
        with torch.no_grad():
            logits, _ = self._run(ids, mask, self._request())
        return logits

    __call__ = forward

    def cache_names(self, names: NameFilter = None) -> list[str]:
        """The cacheable names `names` selects, in forward order.

        None: everything but attention patterns. Patterns are recorded only when asked for by
        name ("L3.H2.pattern") or by a glob that says so ("L3.H*.pattern"); other globs and
        predicates never pick them up, since they are [B, T, T] per head.
        """
        key = names if isinstance(names, str) or names is None else None
        if key is None and isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            key = tuple(names)
        if key is not None and key in self._names_memo:  # a pass per batch asks the same again
            return list(self._names_memo[key])
        chosen = self._cache_names(names)
        if key is not None and len(self._names_memo) < 256:
            self._names_memo[key] = tuple(chosen)
        return chosen

    def _cache_names(self, names: NameFilter) -> list[str]:
        full = self.shape.cacheable(patterns=True)
        plain = self.shape.cacheable(patterns=False)
        if names is None:
            return plain
        if callable(names) and not isinstance(names, str):
            return select(names, plain, self.shape, "run_with_cache names")
        if not isinstance(names, str | list | tuple | set | frozenset):
            raise UserError(
                f"run_with_cache names={names!r}: pass a name or glob (e.g. 'L0.mlp.out', 'L*.H*.z'), a list of "
                "them, or a predicate; `cache_names()` lists every name."
            )
        chosen: set[str] = set()
        for item in [names] if isinstance(names, str) else list(names):
            if not isinstance(item, str) and not callable(item):
                raise UserError(
                    f"run_with_cache names: {item!r} ({type(item).__name__}) is not a name; names are strings "
                    "such as 'L0.mlp.out' or globs such as 'L*.H*.z' (`cache_names()` lists every name)."
                )
            wide = not isinstance(item, str) or "pattern" in item or not set("*?[") & set(item)
            chosen.update(select(item, full if wide else plain, self.shape, "run_with_cache names"))
        return [n for n in full if n in chosen]

    def run_with_cache(
        self,
        inputs: Inputs,
        names: NameFilter = None,
        *,
        attention_mask: Shaped[Tensor, "*_batch _pos"] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
    ) -> tuple[Float[Tensor, "batch pos vocab"], Cache]:
        """(logits [B, T, V], Cache) of one pass under the active interventions.

        names: what to record (see `cache_names`; globs, lists or a predicate; `L{l}.mlp.neurons`
        holds a layer's neurons; patterns `L{l}.H{h}.pattern` only when named). dtype / device: where
        and how recorded tensors are kept (default: as computed). batch_size: run in chunks of
        rows and concatenate (patch sources with as many rows as the input are sliced to match).
        """
        ids, mask = self._inputs(inputs, attention_mask)
        record = set(self.cache_names(names))
        logits_parts, caches = [], []
        for start, stop in _chunks(ids.shape[0], batch_size):
            request = self._chunk_request(record, dtype, device, start, stop, ids.shape[0])
            with torch.no_grad():
                logits, run = self._run(ids[start:stop], mask[start:stop], request)
            logits_parts.append(logits)
            caches.append(run.cache(logits))
        return torch.cat(logits_parts), Cache.cat(caches) if len(caches) > 1 else caches[0]

    def cache_to_disk(
        self,
        inputs: Inputs,
        folder: str | Path,
        names: NameFilter = None,
        *,
        attention_mask: Shaped[Tensor, "*_batch _pos"] | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
    ) -> DiskCache:
        """Record `names` batch by batch into safetensors shards under `folder`; memory holds one
        batch at a time. Returns the `DiskCache` reading them."""
        ids, mask = self._inputs(inputs, attention_mask)
        record = set(self.cache_names(names))
        writer = ShardWriter(folder)
        for start, stop in _chunks(ids.shape[0], batch_size):
            request = self._chunk_request(record, dtype, "cpu", start, stop, ids.shape[0])
            with torch.no_grad():
                logits, run = self._run(ids[start:stop], mask[start:stop], request)
            writer.add(run.cache(logits))
        return writer.close()

    def _chunk_request(self, record, dtype, device, start: int, stop: int, total: int) -> Request:
        request = self._request(record=record, dtype=dtype, device=device)
        if (start, stop) != (0, total):
            request.edits = [_slice_rows(e, start, stop, total) for e in request.edits]
            request.edges = [_slice_rows(e, start, stop, total) for e in request.edges]
        return request

    def run_with_grads(
        self,
        inputs: Inputs,
        metric: Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]],
        *,
        outputs: NameFilter = (),
        receivers: NameFilter = (),
        names: NameFilter = (),
        attention_mask: Shaped[Tensor, "*_batch _pos"] | None = None,
        receiver_sink: Callable[[str, Float[Tensor, "batch pos d_model"]], None] | None = None,
        rules: BackwardRules | None = None,
    ) -> GradResult:
        """Gradients of `metric(logits)` (a scalar) w.r.t. node outputs and receiver inputs, in one
        backward pass, under the active interventions.

        outputs: senders and other nodes (embed, L{l}.H{h}, L{l}.mlp, neurons, residuals, and an MoE
        layer's L{l}.expert{e} and L{l}.shared_expert).
        receivers: L{l}.H{h}.q|k|v, L{l}.mlp, L{l}.router (MoE), logits: the gradient w.r.t. that
        receiver's own copy of its input. names: activations to record in the same pass.
        receiver_sink: stream the receivers' gradients: `receiver_sink(name, grad [B, T, D])` is
        called once per receiver, one layer's worth alive at a time, and `GradResult.inputs` is
        empty (what attribution uses to keep memory flat at 70k-edge graphs).
        rules: local backward rules replacing the chain rule (`probe.rules`: RelP's LRP rules,
        GIM); the forward values are unchanged. They act on the Hugging Face modules, so on the
        tl backend such a pass runs through the torch backend's hooks (same numbers, tested).
        """
        ids, mask = self._inputs(inputs, attention_mask)
        out_universe = [
            n
            for n in self.shape.components(neurons=False, receivers=False)
            if n != "logits" and not n.endswith((".router", ".routing"))  # routing is discrete: no gradient
        ]
        out_universe += [
            f"L{layer}.mlp.neurons" for layer in range(self.shape.n_layers) if not self.shape.is_moe(layer)
        ]
        outs = _select_or_exact(outputs, out_universe, self.shape, "gradient outputs", ("neuron",))
        ins = select(receivers, self.receivers(), self.shape, "gradient receivers") if receivers != () else []
        record = set(self.cache_names(names)) if names != () else set()
        request = self._request(record=record, grad_outputs=set(outs), grad_inputs=set(ins), rules=rules)
        with torch.enable_grad(), applied(self.layout, rules):
            logits, run = self._run(ids, mask, request)
            value = metric(logits)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise UserError("the metric must return a scalar tensor (e.g. a mean logit difference).")
            if not value.requires_grad:
                raise UserError("the metric does not depend on the logits through the model; nothing to differentiate.")
            value.backward()
        out_grads, in_grads = run.gradients(receiver_sink)
        return GradResult(value.detach(), logits.detach(), out_grads, in_grads, run.cache(logits.detach()))

    # --- interventions ------------------------------------------------------------------------

    def interventions(self) -> Interventions:
        """An empty intervention list for this model (activate it with `intervene(iv)`)."""
        return Interventions(self.shape)

    @contextlib.contextmanager
    def intervene(self, interventions: Interventions | None = None) -> Iterator[Interventions]:
        """Apply interventions to every pass run inside the block; yields the list to fill."""
        iv = interventions if interventions is not None else self.interventions()
        if iv.shape != self.shape:
            raise UserError("these interventions were made for a model of another shape.")
        self._active.append(iv)
        try:
            yield iv
        finally:
            self._active.remove(iv)

    # --- residual-stream accounting -----------------------------------------------------------

    def decompose(self, cache: Cache) -> Decomposition:
        """Each sender's exact contribution to the final residual stream (`probe.decompose`)."""
        return decompose(self.core, cache)


def _sdpa_faithful(model: PreTrainedModel) -> bool:
    """Whether SDPA computes what the family's eager attention does: no logit soft-capping,
    attention sinks or dropout (`_attention`)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "attention_dropout", 0.0):
        return False
    return not any(hasattr(m, "sinks") for m in model.modules())


def block_causal_mask(
    attention_mask: Int[Tensor, "batch pos"], block_size: int, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "batch 1 pos pos"]:
    """The additive mask [B, 1, T, T] (0 = attend, -inf = not) a block-diffusion MDM is read with.

    A real query sees every real key in its own block and earlier blocks, blocks of `block_size`
    tokens counted from the row's first real token (as in training and sampling, where rows are
    right-padded, so blocks start at position 0). On a right-padded batch this equals
    `ar2mdm.diffusion.attention.block_inference_mask`; on a left-padded one it keeps each row's logits
    equal to those it gets alone. Padded keys are blocked; a padded query sees only itself. As in
    training and sampling, the 4D mask replaces the model's own masks (Gemma-style sliding
    windows are dropped there too).
    """
    blocks = position_ids(attention_mask) // block_size
    allowed = blocks[:, None, :] <= blocks[:, :, None]
    return to_additive(allowed, attention_mask, dtype)


def _chunks(total: int, size: int | None) -> list[tuple[int, int]]:
    if size is None:
        return [(0, total)]
    size = parse_count(size, "batch_size")
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _slice_rows(op, start: int, stop: int, total: int):
    """An edit / edge whose per-row value (or [B, T] mask) is cut to rows start:stop."""
    value = op.value
    if value.ndim >= 2 and value.shape[0] == total and total > 1:
        value = value[start:stop]
    pos = op.pos
    if isinstance(pos, Tensor) and pos.dtype == torch.bool and pos.ndim == 2 and pos.shape[0] == total and total > 1:
        pos = pos[start:stop]
    return dataclasses.replace(op, value=value, pos=pos)


def _select_or_exact(
    spec: NameFilter, universe: list[str], shape: Shape, what: str, exact_kinds: tuple[str, ...]
) -> list[str]:
    """`select`, also accepting exact names of `exact_kinds` outside the universe (single neurons)."""
    if spec == () or spec is None:
        return [] if spec == () else list(universe)
    items = [spec] if isinstance(spec, str) else spec
    if not callable(items) and all(isinstance(i, str) for i in items):
        extra = [i for i in items if not set("*?[") & set(i) and parse(i).kind in exact_kinds]
        rest = [i for i in items if i not in extra]
        return [str(shape.check(i)) for i in extra] + (select(rest, universe, shape, what) if rest else [])
    return select(spec, universe, shape, what)
