"""Canvases: the token rows every sampler starts from, and the checks made before one is built.

A canvas is right-padded token ids [B, T] with an attention mask [B, T]: each row is its prompt,
then the positions to generate (the mask id), then an optional suffix (infilling), then padding.
`make_canvas` checks every length against the model's context before building anything;
`check_prompts` refuses missing or empty prompts by their number.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import right_pad


def make_canvas(
    prompts: Sequence[Sequence[int]],
    gen_lengths: int | Sequence[int],
    *,
    mask_id: int,
    pad_id: int,
    suffixes: Sequence[Sequence[int]] | None = None,
    context_length: int | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded canvas (ids [B, T], attention mask [B, T]): prompt, mask * n, suffix, padding.

    gen_lengths: tokens to generate per row (one int for all rows, or one per row).
    context_length: the model's context in positions (`ModelContext.context_length`; None: not
    checked). Every length is checked before anything is built, so a huge max_new_tokens is one
    message giving the limit, not gigabytes of canvas first. Raises UserError for a row that
    generates no token, or whose prompt + generated tokens + suffix exceed the context.
    """
    if isinstance(gen_lengths, int):
        gen_lengths = [gen_lengths] * len(prompts)
    if len(gen_lengths) != len(prompts):
        raise UserError(f"got {len(prompts)} prompts but {len(gen_lengths)} generation lengths.")
    suffixes = suffixes or [[] for _ in prompts]
    if len(suffixes) != len(prompts):
        raise UserError(f"got {len(prompts)} prompts but {len(suffixes)} suffixes.")
    if any(int(n) < 1 for n in gen_lengths):
        raise UserError("every row must generate at least one token (max_new_tokens >= 1).")
    if context_length is not None:
        for row, (p, n, s) in enumerate(zip(prompts, gen_lengths, suffixes, strict=True)):
            _check_fits(row, len(prompts), len(p), int(n), len(s), context_length)
    rows = [list(p) + [mask_id] * int(n) + list(s) for p, n, s in zip(prompts, gen_lengths, suffixes, strict=True)]
    return right_pad(rows, pad_id)


def _check_fits(row: int, rows: int, prompt: int, new: int, suffix: int, context: int) -> None:
    """UserError when a canvas row of `prompt` + `new` + `suffix` tokens exceeds `context`."""
    total = prompt + new + suffix
    if total <= context:
        return
    which = f"prompt {row + 1} of {rows}" if rows > 1 else "the prompt"
    after = f" + a suffix of {suffix}" if suffix else ""
    room = context - prompt - suffix
    fix = (
        f"at most {room} new tokens fit after {which}: lower max_new_tokens (--max-new-tokens) to {room} or less"
        if room >= 1
        else f"{which} alone fills the context: shorten it"
    )
    raise UserError(
        f"{which} ({prompt} tokens) + {new} tokens to generate{after} = {total} positions, more than the "
        f"model's context of {context}; {fix}."
    )


def check_prompts(texts: Sequence[str], option: str = "--prompt") -> None:
    """Raise UserError unless there is at least one prompt and every one holds text.

    An empty prompt among others would become a row with nothing before its first generated
    position; the message names it by its number (1-based) so the user knows which `option`
    (`--prompt`, the `prompts` of a library call) to fix.
    """
    if not texts:
        raise UserError(f"no {option} given: give the text to continue.")
    for i, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise UserError(f"{option} number {i} is a {type(text).__name__}, not text.")
        if not text.strip():
            if len(texts) == 1:
                raise UserError(f"{option} is empty: give the text to continue.")
            raise UserError(
                f"{option} number {i} (of {len(texts)}) is empty: give every {option} some text to continue, "
                "or leave that one out."
            )
