"""ARPC (BlockGen): predictor, autoregressive scoring, corrector.

Per block of b generated positions, at each step from t to s < t:

1. predictor: the diffusion model proposes a full clean block (a token for every still-masked
   position of the block; decoded ones are kept);
2. scoring: one causal pass of an AR model over the canvas with the proposed block scores every
   proposed token of the block given the clean prefix and the proposed tokens before it:
   ``nll`` = -log p_AR(token), or ``divergence`` = KL(p_AR || p_MDM) at that position;
3. corrector: the k = round((1 - alpha(s)) * b) worst-scored positions of the block are masked
   again; the rest stay. At the last step (s = 0) k = 0: the proposal is kept as it is, i.e. the
   last step is plain ancestral.

The AR scorer is usually the ARM the MDM was converted from (its metadata records the source; the
generation evals and the CLI load it by default). It must share the MDM's tokenizer (the MDM may
have one more row for the mask token). NFE counts both models' calls (`nfe_by` tells them apart).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import output_size, position_ids
from ar2mdm.diffusion.noise import get_schedule
from ar2mdm.sampling.ancestral import time_grid
from ar2mdm.sampling.base import BudgetSampler, State, aligned_logits, check_options, propose, provisional
from ar2mdm.sampling.confidence import top_k_per_row

SCORES = ("nll", "divergence")


class ARPCSampler(BudgetSampler):
    name = "arpc"
    needs = "absorbing"
    needs_scorer = True

    def __init__(
        self,
        scorer: torch.nn.Module | None = None,
        *,
        steps: int | None = None,
        block_length: int | None = None,
        temperature: float = 1.0,
        score: str = "nll",
        schedule: str | None = None,
    ):
        check_options(steps, block_length, temperature, schedule)
        if score not in SCORES:
            raise UserError(f"unknown ARPC score {score!r}; use one of {', '.join(SCORES)}.")
        self.scorer, self.steps, self.block_length = scorer, steps, block_length
        self.temperature, self.score, self.schedule = temperature, score, schedule

    def check(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().check(ctx)
        if self.scorer is None:
            raise UserError(
                "ARPC needs an AR scorer: pass scorer=<causal LM sharing the MDM's tokenizer> (the CLI "
                "loads the MDM's source ARM by default; give --ar-scorer PATH if it cannot be found)."
            )

    def _init(self, model: torch.nn.Module, state: State) -> None:
        if getattr(getattr(self.scorer, "config", None), "is_causal", True) is False:
            raise UserError(
                "ARPC's AR scorer attends bidirectionally (config.is_causal is False): it is an MDM, not "
                "an ARM. Pass the autoregressive model the MDM was converted from (--ar-scorer PATH)."
            )
        ar_vocab = output_size(self.scorer)
        if ar_vocab is not None and ar_vocab <= state.ctx.pad_id:
            raise UserError(
                "the AR scorer's vocabulary is smaller than the MDM's pad id; it is not the same tokenizer."
            )
        mdm_vocab = output_size(model)
        if ar_vocab is not None and mdm_vocab is not None and not mdm_vocab - 2 <= ar_vocab <= mdm_vocab:
            raise UserError(
                f"the AR scorer has {ar_vocab} output ids but the MDM has {mdm_vocab}: they do not share a "
                "tokenizer. Give the ARM the MDM was converted from (--ar-scorer)."
            )
        state.scratch["ar_vocab"] = ar_vocab
        super()._init(model, state)

    def step(self, model: torch.nn.Module, state: State) -> State:
        clock = self.clock(state)
        logits = aligned_logits(model, state)
        active = state.active()
        tokens, conf = propose(logits, active, self.temperature, state)
        cur = state.current_block()
        in_block = (state.blocks == cur[:, None]) & (cur[:, None] >= 0)
        proposal = torch.where(active, tokens, state.ids)
        t, s = time_grid(state, clock, self.budget(state))
        sched = get_schedule(self.schedule or state.ctx.schedule)
        size = in_block.sum(1).double()
        k = torch.round((1.0 - sched.alpha(s)) * size).long()
        k = torch.where(s <= 0, torch.zeros_like(k), k)
        remask = torch.zeros_like(active)
        if bool((k > 0).any()):
            score = self._score(state, proposal, logits, in_block)  # [B, T], higher = worse
            remask = top_k_per_row(score, in_block, k)
        state.record(active & ~remask, conf, provisional(logits, state), remasked=remask & ~active)
        state.ids = torch.where(remask, torch.full_like(proposal, state.ctx.mask_id), proposal)
        state.masked = (state.masked & ~active) | remask
        clock.advance(state)
        return state

    def _score(self, state: State, proposal: Tensor, mdm_logits: Tensor, where: Tensor) -> Tensor:
        """Badness [B, T] of the proposed tokens at `where` from one causal AR pass (-inf elsewhere)."""
        V = state.scratch["ar_vocab"] or int(mdm_logits.shape[-1])
        ar_ids = proposal.masked_fill(proposal >= V, state.ctx.pad_id)
        ar_ids = torch.where(proposal == state.ctx.mask_id, torch.full_like(ar_ids, state.ctx.pad_id), ar_ids)
        out = state.forward(
            self.scorer,
            "ar",
            input_ids=ar_ids,
            attention_mask=state.attention_mask,
            position_ids=position_ids(state.attention_mask),
            is_causal=True,
        )
        rows, cols = where.nonzero(as_tuple=True)
        score = torch.full(where.shape, float("-inf"), dtype=torch.float64, device=where.device)
        # AR: the logits at i - 1 predict position i (a block never starts at position 0).
        ar_logp = torch.log_softmax(out.logits[rows, (cols - 1).clamp(min=0), :V].double(), dim=-1)  # [N, V]
        if self.score == "nll":
            score[rows, cols] = -ar_logp.gather(-1, ar_ids[rows, cols][:, None]).squeeze(-1)
        else:
            mdm_logp = torch.log_softmax(mdm_logits[rows, cols, :V].double(), dim=-1)
            kl = (ar_logp.exp() * (ar_logp - mdm_logp.clamp(min=-1e30))).sum(-1)
            score[rows, cols] = kl.nan_to_num(0.0)
        return score
