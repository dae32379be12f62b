"""The model organism's shape (`OrganismConfig`) and its model (`build_model`): a small Llama, or a
Mixtral (Llama's blocks with mixture-of-experts MLPs) when it has experts. `conversion.organism`
trains it and re-exports both names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ar2mdm.common.errors import UserError
from conversion.organism_data import EVAL_EXAMPLES


@dataclass
class OrganismConfig:
    """Everything that shapes an organism besides the seed and the length of training.

    Model: d_model, n_layers, n_heads, n_kv_heads, d_mlp, max_positions. n_experts > 0 makes every
        MLP a mixture of experts (transformers' Mixtral: Llama's blocks with a softmax top-k router,
        renormalised): `n_experts` experts of width d_mlp / top_k, `top_k` per token (so a token's
        MLP computes as wide as the dense organism's), trained with the Switch load-balancing loss
        at `aux_loss` (`conversion.moe.RouterLogits`).
    Data: mixture (examples of each task per batch; their sum is the batch size),
        infill_in_place (probability that an infilling example is given in place instead of in
        AR order), answer_weight (loss weight of answer tokens and the final <eos>),
        tokenizer_examples (examples per task the tokenizer is trained on), pack_length (pack a
        batch's sequences into rows of this many tokens, each sequence attending only to itself:
        the same loss terms as one padded row each, with a third of the padding; 0 = no packing).
    Optimisation: lr, min_lr_ratio (cosine floor, as a fraction of lr), warmup (fraction of the
        run), weight_decay, grad_clip, betas.
    Evaluation: eval_examples (held-out examples per task at the end), eval_every (steps between
        cheap periodic evaluations, 0 = never), periodic_examples (examples per task then).
    threads: torch CPU threads (default $AR2MDM_THREADS, else 2). On a machine whose cores are
        busy with other work, 1 is much faster than 2: OpenMP threads spin-wait for each other
        (measured: 2 threads 4-20x slower than 1 under a load of ~5 on 2 cores). Runs are
        bit-reproducible for a fixed seed, step count and thread count.
    """

    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 4
    d_mlp: int = 384
    max_positions: int = 128
    n_experts: int = 0
    top_k: int = 2
    aux_loss: float = 0.01
    pack_length: int = 64
    mixture: dict[str, int] = field(
        default_factory=lambda: {
            "ioi": 12,
            "greater_than": 4,
            "induction": 10,
            "countdown": 30,
            "infilling": 2,
            "sudoku": 6,
        }
    )
    infill_in_place: float = 0.25
    answer_weight: float = 2.0
    tokenizer_examples: int = 500
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup: float = 0.03
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eval_examples: int = EVAL_EXAMPLES
    eval_every: int = 150
    periodic_examples: int = 32
    threads: int = field(default_factory=lambda: int(os.environ.get("AR2MDM_THREADS", "2")))

    @property
    def batch_size(self) -> int:
        return sum(self.mixture.values())


def build_model(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """A randomly initialised Llama of size `cfg` over `tokenizer`'s vocabulary, seeded; a Mixtral
    (the same blocks, MoE MLPs) when `cfg.n_experts` > 0."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.n_experts:
        if not 1 <= cfg.top_k <= cfg.n_experts or cfg.d_mlp % cfg.top_k:
            raise UserError(
                f"an MoE organism needs 1 <= top_k <= n_experts and d_mlp divisible by top_k; got n_experts "
                f"{cfg.n_experts}, top_k {cfg.top_k}, d_mlp {cfg.d_mlp}."
            )
        config = MixtralConfig(
            **common,
            intermediate_size=cfg.d_mlp // cfg.top_k,
            num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.top_k,
            router_aux_loss_coef=cfg.aux_loss,
            sliding_window=None,
        )
        torch.manual_seed(seed)
        model: PreTrainedModel = MixtralForCausalLM(config)
    else:
        config = LlamaConfig(**common, intermediate_size=cfg.d_mlp)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.mask_token_id = tokenizer.mask_token_id
    return model
