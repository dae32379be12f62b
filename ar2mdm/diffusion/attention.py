"""Who may attend to whom: the attention layouts used to turn an ARM into a diffusion LM.

An ARM attends causally (query i sees keys j <= i). A diffusion LM must see the whole noisy
sequence, so conversion changes the attention layout. The modes, as spec strings:

* ``causal``: the ARM's own layout (for the AR baseline and for checking nothing changed).
* ``bidirectional``: every token sees every (non-padding) token. Dream, DiffuLLaMA at 7B, RND1
  and dllm switch to it at once.
* ``anneal:N``: DiffuGPT's annealing. At training step s each query additionally sees a random
  fraction r = min(1, s / N) of its future keys (an independent Bernoulli(r) draw per query/key
  pair, one pattern per step shared by the batch, as in DiffuGPT); r = 0 is causal, and from
  step N on the layout is fully bidirectional.
* ``block:B``: block diffusion (BD3-LM). The model runs once over the concatenation
  [x_t ; x_0] (length 2L) with blocks of B tokens: inside x_t a query sees its own noisy block
  (block-diagonal) and the *clean* x_0 blocks before it; inside x_0 a query sees x_0 blocks up to
  and including its own (block-causal). So each noisy block is denoised given a clean prefix,
  exactly as at sampling time, and all blocks train in one pass. B = 1 is an ARM; B = L a plain
  MDM. The last block may be shorter than B.
* ``block:1@0.05,16@0.95``: a mixture of block sizes (BlockGen): each sequence draws its block size
  with the given probabilities.

Per-document attention (any mode above, `document_ids`): a packed training row holds several
documents separated by EOS. By default every token may attend across those boundaries (the
documents are just context for each other). With per-document attention a query sees keys of its
own document only (a block-diagonal mask, the way several peers train on packed rows) and
position ids restart at 0 in every document, so a document is processed exactly as it would be
alone. `document_ids(ids, separator_id)` numbers the documents of a row: a separator belongs to the
document it ends. Caveat: the block-diagonal mask is a 4D mask, which replaces the model's own
per-layer masks (Gemma-style sliding windows are dropped for such runs).

Masks are returned as 4D float tensors [B, 1, Tq, Tk] holding 0 (may attend) or -inf (may not),
which every HF decoder accepts in place of its own mask. Padding never leaks: padded KEY columns
are always -inf. A padded QUERY row sees only itself, so its softmax stays finite; its output is
never read. Caveat: a user-supplied 4D mask replaces the model's per-layer masks, so Gemma-style
sliding windows are dropped; for the causal and bidirectional modes `model_inputs` therefore uses
the model's own masking (2D padding mask plus ``is_causal``), which keeps sliding windows and lets
SDPA use its fused kernels.

>>> parse_attention("block:1@0.05,16@0.95").block_sizes
(1, 16)
>>> block_allowed(torch.tensor([2]), 4)[0].int()  # L = 4, B = 2: rows/cols are [x_t ; x_0]
tensor([[1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import position_ids

ACCEPTED = (
    "'causal', 'bidirectional', 'anneal:N' (N > 0 steps), 'block:B' (B > 0 tokens), or a block "
    "mixture 'block:B1@p1,B2@p2,...' (probabilities summing to 1, e.g. 'block:1@0.05,16@0.95')"
)


@dataclass(frozen=True)
class AttentionSpec:
    """A parsed attention mode.

    kind: "causal" | "bidirectional" | "anneal" | "block".
    anneal_steps: N of "anneal:N" (else None).
    block_sizes / block_probs: the block sizes of "block:..." and their probabilities.
    """

    kind: Literal["causal", "bidirectional", "anneal", "block"]
    anneal_steps: int | None = None
    block_sizes: tuple[int, ...] = ()
    block_probs: tuple[float, ...] = ()

    def __str__(self) -> str:
        if self.kind == "anneal":
            return f"anneal:{self.anneal_steps}"
        if self.kind == "block":
            if len(self.block_sizes) == 1:
                return f"block:{self.block_sizes[0]}"
            return "block:" + ",".join(f"{b}@{p:g}" for b, p in zip(self.block_sizes, self.block_probs, strict=True))
        return self.kind

    @property
    def doubles_input(self) -> bool:
        """True when the model runs on [x_t ; x_0] (block diffusion training)."""
        return self.kind == "block"


def _bad(spec: str, why: str) -> UserError:
    return UserError(f"bad attention spec {spec!r}: {why}. Accepted forms: {ACCEPTED}.")


def _positive_int(text: str, spec: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(spec, f"{what} {text!r} is not an integer") from None
    if value <= 0:
        raise _bad(spec, f"{what} must be > 0, got {value}")
    return value


def parse_attention(spec: str | AttentionSpec) -> AttentionSpec:
    """Parse an attention spec string (see the module docstring); raise UserError if malformed."""
    if isinstance(spec, AttentionSpec):
        return spec
    if not isinstance(spec, str):
        raise _bad(str(spec), "it is not a string")
    text = spec.strip().lower()
    if text in ("causal", "bidirectional"):
        return AttentionSpec(kind=text)  # type: ignore[arg-type]
    head, sep, arg = text.partition(":")
    if not sep or not arg:
        raise _bad(spec, "unknown mode")
    if head == "anneal":
        return AttentionSpec(kind="anneal", anneal_steps=_positive_int(arg, spec, "N"))
    if head != "block":
        raise _bad(spec, f"unknown mode {head!r}")
    if "@" not in arg:
        return AttentionSpec(kind="block", block_sizes=(_positive_int(arg, spec, "B"),), block_probs=(1.0,))
    sizes: list[int] = []
    probs: list[float] = []
    for part in arg.split(","):
        size_text, at, prob_text = part.partition("@")
        if not at:
            raise _bad(spec, f"mixture item {part!r} is not of the form B@p")
        size = _positive_int(size_text, spec, "B")
        try:
            prob = float(prob_text)
        except ValueError:
            raise _bad(spec, f"probability {prob_text!r} is not a number") from None
        if not (prob > 0.0 and math.isfinite(prob)):
            raise _bad(spec, f"probability of block size {size} must be > 0, got {prob_text}")
        if size in sizes:
            raise _bad(spec, f"block size {size} is listed twice")
        sizes.append(size)
        probs.append(prob)
    if abs(sum(probs) - 1.0) > 1e-6:
        raise _bad(spec, f"mixture probabilities sum to {sum(probs):g}, not 1")
    return AttentionSpec(kind="block", block_sizes=tuple(sizes), block_probs=tuple(probs))


def anneal_ratio(spec: AttentionSpec, step: int) -> float:
    """Fraction of future keys visible at `step`: min(1, step / N) for anneal, 0 causal, 1 else."""
    if spec.kind == "anneal":
        assert spec.anneal_steps is not None
        return min(1.0, max(0, step) / spec.anneal_steps)
    return 0.0 if spec.kind == "causal" else 1.0


def sample_block_sizes(
    spec: AttentionSpec,
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Int[Tensor, " batch"]:
    """Block size per sequence, long [batch], drawn from the spec's mixture (constant if one size)."""
    if spec.kind != "block":
        raise UserError(f"attention {spec} has no block size; use a 'block:...' spec.")
    sizes = torch.tensor(spec.block_sizes, dtype=torch.long, device=device)
    if len(spec.block_sizes) == 1:
        return sizes.expand(batch).clone()
    probs = torch.tensor(spec.block_probs, dtype=torch.float64)
    idx = torch.multinomial(probs, batch, replacement=True, generator=generator)
    return sizes[idx.to(sizes.device)]


def document_ids(ids: Int[Tensor, "batch pos"], separator_id: int) -> Int[Tensor, "batch pos"]:
    """Long [B, T]: the index of the document each token belongs to in packed rows `ids` [B, T],
    counting separators (EOS) strictly before it (a separator ends its own document).

    >>> document_ids(torch.tensor([[5, 6, 2, 7, 2, 8]]), separator_id=2).tolist()
    [[0, 0, 0, 1, 1, 2]]
    """
    sep = (ids == separator_id).long()
    return sep.cumsum(-1) - sep


def same_document(document_ids: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """Bool [B, T, T]: query i and key j lie in the same document."""
    return document_ids[:, :, None] == document_ids[:, None, :]


# --- boolean layouts [B, Tq, Tk] (True = may attend), padding not applied -----------------------


def causal_allowed(batch: int, length: int, device: torch.device | str | None = None) -> Bool[Tensor, "batch pos pos"]:
    """Bool [B, T, T]: key j <= query i."""
    pos = torch.arange(length, device=device)
    return (pos[None, :] <= pos[:, None]).expand(batch, length, length)


def anneal_allowed(
    length: int, ratio: float, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Bool[Tensor, "pos pos"]:
    """Bool [T, T]: causal, plus each future key independently with probability `ratio`."""
    causal = causal_allowed(1, length, device)[0]
    if ratio >= 1.0:
        return torch.ones(length, length, dtype=torch.bool, device=device)
    if ratio <= 0.0:
        return causal.clone()
    extra = torch.rand(length, length, generator=generator, device=device) < ratio
    return causal | extra


def block_allowed(block_sizes: Int[Tensor, " batch"], length: int) -> Bool[Tensor, "batch pos2 pos2"]:
    """Bool [B, 2L, 2L] BD3-LM training layout over [x_t ; x_0] for per-sequence block sizes [B].

    With blk(i) = (i mod L) // B: a query in x_t sees x_t keys of its own block and x_0 keys of
    earlier blocks; a query in x_0 sees x_0 keys of its own and earlier blocks; x_0 never sees x_t.
    """
    device = block_sizes.device
    pos = torch.arange(2 * length, device=device)
    blk = (pos % length)[None, :] // block_sizes[:, None]  # [B, 2L]
    noisy = (pos < length)[None, :]  # [1, 2L]
    q_blk, k_blk = blk[:, :, None], blk[:, None, :]
    q_noisy, k_noisy = noisy[:, :, None], noisy[:, None, :]
    same_noisy = q_noisy & k_noisy & (q_blk == k_blk)
    noisy_to_clean = q_noisy & ~k_noisy & (k_blk < q_blk)
    clean_to_clean = ~q_noisy & ~k_noisy & (k_blk <= q_blk)
    return same_noisy | noisy_to_clean | clean_to_clean


def block_causal(q_pos: Int[Tensor, " qpos"], k_pos: Int[Tensor, " kpos"], block: int) -> Bool[Tensor, "qpos kpos"]:
    """Bool [Tq, Tk]: a query at position q may see a key at position k when k's block is not
    after q's (k // block <= q // block), positions counted on the canvas from 0. The keys need
    not be in order (a KV cache may hold them in another)."""
    return (k_pos[None, :] // block) <= (q_pos[:, None] // block)


def block_inference_mask(
    attention_mask: Int[Tensor, "batch pos"], block: int, *, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "batch 1 pos pos"]:
    """4D additive mask [B, 1, T, T] for SAMPLING from a block-diffusion model.

    At sampling time the earlier blocks are already clean, so the training layout over
    [x_t ; x_0] collapses to one sequence with a block-causal layout: a query in block
    b = i // block sees every (non-padding) key in blocks <= b (`block_causal`). Calls over a
    window with the rest in a KV cache build theirs in `ar2mdm.sampling.cache.window_mask`.
    """
    if block < 1:
        raise UserError(f"block size must be >= 1, got {block}.")
    batch, length = attention_mask.shape
    pos = torch.arange(length, device=attention_mask.device)
    return to_additive(block_causal(pos, pos, block).expand(batch, length, length), attention_mask, dtype)


def to_additive(
    allowed: Bool[Tensor, "batch qpos kpos"],
    key_valid: Int[Tensor, "batch kpos"] | Bool[Tensor, "batch kpos"],
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "batch 1 qpos kpos"]:
    """Float [B, 1, Tq, Tk] mask (0 = attend, -inf = not) from a layout and key validity [B, Tk].

    Padded key columns are blocked. Padded query rows (Tq == Tk) may attend to themselves only, so
    no row is all -inf (a NaN in softmax); real rows are untouched.
    """
    key_valid = key_valid.to(torch.bool)
    allowed = allowed & key_valid[:, None, :]
    if allowed.shape[1] == allowed.shape[2]:
        eye = torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)
        allowed = allowed | (eye[None] & ~key_valid[:, :, None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~allowed, float("-inf"))
    return mask[:, None]


def build_mask(
    spec: str | AttentionSpec,
    attention_mask: Int[Tensor, "batch pos"],
    *,
    step: int = 0,
    block_sizes: Int[Tensor, " batch"] | None = None,
    layout: Bool[Tensor, "pos pos"] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch 1 kpos kpos"]:
    """The 4D additive mask for `spec`.

    attention_mask: [B, L] (1 = real token, 0 = padding) of the clean sequence.
    Returns [B, 1, L, L], or [B, 1, 2L, 2L] for block specs (the input is then [x_t ; x_0], and both
    halves share the padding of `attention_mask`). `block_sizes` ([B]) defaults to a draw from the
    spec's mixture; `step` sets the anneal ratio; `layout` ([L, L] bool) fixes the annealed
    pattern (default: drawn from `generator`). `document_ids` ([B, L]) keeps every query inside
    its own document (per-document attention; both halves of a block input share them).
    """
    spec = parse_attention(spec)
    batch, length = attention_mask.shape
    device = attention_mask.device
    if spec.kind == "block":
        # Blocks are counted from position 0, so padding may only come at the end of a row.
        if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise UserError(
                "block attention needs right-padded rows (padding after the tokens); got a row "
                "with padding before a token. Pad on the right for block diffusion."
            )
        if block_sizes is None:
            block_sizes = sample_block_sizes(spec, batch, generator=generator, device=device)
        allowed = block_allowed(block_sizes.to(device), length)
        key_valid = torch.cat([attention_mask, attention_mask], dim=1)
        if document_ids is not None:
            allowed = allowed & same_document(torch.cat([document_ids, document_ids], dim=1))
    else:
        if layout is None:
            ratio = anneal_ratio(spec, step)
            layout = anneal_allowed(length, ratio, generator=generator, device=device)
        allowed = layout.to(device).expand(batch, length, length)
        key_valid = attention_mask
        if document_ids is not None:
            allowed = allowed & same_document(document_ids)
    return to_additive(allowed, key_valid, dtype)


def model_inputs(
    spec: str | AttentionSpec,
    attention_mask: Int[Tensor, "batch pos"],
    *,
    step: int = 0,
    layout: Bool[Tensor, "pos pos"] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> dict[str, Any]:
    """Keyword arguments (attention_mask, position_ids, maybe is_causal) for one forward pass
    over a [B, L] input under a single-pass spec (causal, bidirectional, anneal; `layout` as in
    `build_mask`).

    Causal and bidirectional use the model's own masking (2D padding mask + per-call is_causal),
    which keeps sliding windows and fused SDPA kernels; anneal, and any spec with `document_ids`
    (per-document attention), need an explicit 4D mask. Block specs run on [x_t ; x_0]: build their
    inputs with `build_mask` (the objective does).
    """
    spec = parse_attention(spec)
    pos = position_ids(attention_mask, document_ids)
    if document_ids is not None and spec.kind in ("causal", "bidirectional"):
        batch, length = attention_mask.shape
        allowed = (
            causal_allowed(batch, length, attention_mask.device)
            if spec.kind == "causal"
            else torch.ones(batch, length, length, dtype=torch.bool, device=attention_mask.device)
        )
        return {
            "attention_mask": to_additive(allowed & same_document(document_ids), attention_mask, dtype),
            "position_ids": pos,
        }
    if spec.kind in ("causal", "bidirectional"):
        return {"attention_mask": attention_mask, "position_ids": pos, "is_causal": spec.kind == "causal"}
    if spec.kind == "anneal":
        mask = build_mask(
            spec, attention_mask, step=step, layout=layout, generator=generator, dtype=dtype, document_ids=document_ids
        )
        return {"attention_mask": mask, "position_ids": pos}
    raise UserError(f"attention {spec} runs on [x_t ; x_0]; build its mask with build_mask.")


def make_bidirectional(model: torch.nn.Module) -> torch.nn.Module:
    """Make an HF decoder attend bidirectionally by default: config.is_causal = False (in place).

    In transformers >= 5.2 this switches Llama, Qwen2, Gemma3, GPT-2 (eager and sdpa) to a
    bidirectional mask built from the 2D padding mask (padding still excluded), keeps Gemma3's
    sliding windows (as |i - j| <= w), and is saved with the config. Returns the model.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(f"{type(model).__name__} has no HF config; cannot make it bidirectional.")
    config.is_causal = False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        text.is_causal = False
    return model
