"""A mixture-of-experts ground truth: the answer flows through one of two known experts, and the
router must pick the right one.

The recipe is `analyses.validation.groundtruth`'s, on transformers' Qwen3-MoE (the layout of RND1
and SDAR-30B-A3B): the residual stream in abstract coordinates (TOK token codes, ANS answer codes,
JUNK) lifted by the orthonormal basis `lift_basis`; every RMSNorm the identity on the stream (eps
1e8, gain 1e4: scale 1e4 / sqrt(mean(x^2) + 1e8) = 1 to within 1e-8); the unembedding reads ANS.
2 layers, 4 heads and 4 experts (top-2, no renormalisation: the weights are the softmax
probabilities) per layer, expert width 16.

"x y z w" -> f(w), f(w) the next word in `WORDS` (cyclically). The words are in two classes, A
(the first six) and B. In layer 1:
- the router gives expert 0 the logit R on A words, expert 1 the logit R on B words, experts 2
  and 3 the logit -R on every word: each token takes experts 0 and 1, with weight ~1 on its
  class's expert and e^-R on the other;
- expert 0 holds one gated lookup neuron per A word (silu(s TOK[a]) TOK[a] -> GAIN ANS[f(a)] /
  silu(s)), expert 1 the same for B words: an expert writes the answer only for its own class.
Every head, the layer-0 experts (with a random router) and experts 2-3 are distractors: random
weights reading the stream, output into JUNK only. The corruption replaces the last word by one
of the other class, so the routing switches: true edges embed->L1.router (which expert runs),
embed->L1.mlp (what the experts read), L1.expert0->logits and L1.expert1->logits; each alone
moves the logit difference by ~GAIN. At the clean input the router is saturated (its gradient is
~e^-R): plain attribution patching misses the router edge, integrated gradients cross the switch.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from analyses.validation.groundtruth import (
    BOS_ID,
    EOS_ID,
    GAIN,
    N_EXAMPLES,
    N_JUNK,
    PAD_ID,
    SEED,
    VOCAB,
    WORDS,
    GroundTruth,
    lift_basis,
    word_tokenizer,
)
from ar2mdm.tasks.base import Example, render
from probe.model import ProbedModel

D_MODEL, N_HEADS, D_HEAD, N_EXPERTS, TOP_K, D_EXPERT = 128, 4, 32, 4, 2, 16
ROUTER_GAP = 12.0  # R: the router's logit for the class's expert
SHARPNESS = 20.0  # s: a lookup neuron's gate scale
A_WORDS, B_WORDS = WORDS[:6], WORDS[6:]
# abstract coordinates: block -> (offset, size)
BLOCKS = {"TOK": (0, len(VOCAB)), "ANS": (len(VOCAB), len(VOCAB)), "JUNK": (2 * len(VOCAB), N_JUNK)}
N_COORDS = 2 * len(VOCAB) + N_JUNK


def _next(word: str) -> str:
    return WORDS[(WORDS.index(word) + 1) % len(WORDS)]


def _c(block: str, i: int) -> int:
    return BLOCKS[block][0] + i


class _Writer:
    """Abstract-coordinate maps written into a Qwen3MoeForCausalLM ([out, in] like nn.Linear)."""

    def __init__(self, model: Qwen3MoeForCausalLM, seed: int) -> None:
        self.model = model
        self.U = lift_basis(D_MODEL, N_COORDS)  # [d_model, coords]
        self.gen = torch.Generator().manual_seed(seed)

    def read(self, w: Tensor) -> Tensor:  # [out, coords] -> [out, d_model]
        return (w.double() @ self.U.T).float()

    def write(self, w: Tensor) -> Tensor:  # [coords, in] -> [d_model, in]
        return (self.U @ w.double()).float()

    def randn(self, *shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale

    def junk(self, n: int, scale: float) -> Tensor:
        out = torch.zeros(N_COORDS, n, dtype=torch.float64)
        offset, size = BLOCKS["JUNK"]
        out[offset : offset + size] = self.randn(size, n, scale=scale)
        return out


def _set(param: Tensor, value: Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def build_moe_routing_model(seed: int = SEED) -> Qwen3MoeForCausalLM:
    """The hand-set Qwen3-MoE of the module docstring (float32, eval)."""
    vocab = len(VOCAB)
    config = Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, moe_intermediate_size=D_EXPERT,
        num_hidden_layers=2, num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS, head_dim=D_HEAD,
        num_experts=N_EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=False, rms_norm_eps=1e8,
        max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config).eval()
    w = _Writer(model, seed)
    eye_tok = torch.zeros(N_COORDS, vocab, dtype=torch.float64)
    eye_tok[:vocab] = torch.eye(vocab, dtype=torch.float64)
    eye_ans = torch.zeros(N_COORDS, vocab, dtype=torch.float64)
    eye_ans[vocab : 2 * vocab] = torch.eye(vocab, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1e4)  # with eps 1e8: the identity on the stream
        _set(model.model.embed_tokens.weight, w.write(eye_tok).T)
        _set(model.lm_head.weight, w.read(eye_ans.T))
        for layer in model.model.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                _set(proj.weight, w.read(w.randn(N_HEADS * D_HEAD, N_COORDS, scale=1.0)))
            _set(attn.o_proj.weight, w.write(w.junk(N_HEADS * D_HEAD, 0.1)))
            experts = layer.mlp.experts
            for e in range(N_EXPERTS):  # distractors first; layer 1's experts 0 and 1 are replaced below
                gate_up = w.randn(2 * D_EXPERT, N_COORDS, scale=0.5)
                _set(experts.gate_up_proj[e], w.read(gate_up))
                _set(experts.down_proj[e], w.write(w.junk(D_EXPERT, 0.1)))
            _set(layer.mlp.gate.weight, w.read(w.randn(N_EXPERTS, N_COORDS, scale=1.0)))
        router = torch.zeros(N_EXPERTS, N_COORDS, dtype=torch.float64)
        for word in WORDS:
            t = VOCAB.index(word)
            router[0 if word in A_WORDS else 1, _c("TOK", t)] = ROUTER_GAP
            router[2:, _c("TOK", t)] = -ROUTER_GAP
        moe = model.model.layers[1].mlp
        _set(moe.gate.weight, w.read(router))
        silu_s = float(torch.nn.functional.silu(torch.tensor(SHARPNESS, dtype=torch.float64)))
        for e, words in ((0, A_WORDS), (1, B_WORDS)):
            gate = torch.zeros(D_EXPERT, N_COORDS, dtype=torch.float64)
            up = torch.zeros(D_EXPERT, N_COORDS, dtype=torch.float64)
            down = torch.zeros(N_COORDS, D_EXPERT, dtype=torch.float64)
            for j, word in enumerate(words):
                t = VOCAB.index(word)
                gate[j, _c("TOK", t)] = SHARPNESS
                up[j, _c("TOK", t)] = 1.0
                down[_c("ANS", VOCAB.index(_next(word))), j] = GAIN / silu_s
            _set(moe.experts.gate_up_proj[e], w.read(torch.cat([gate, up])))
            _set(moe.experts.down_proj[e], w.write(down))
    return model


def moe_routing_examples(n: int = N_EXAMPLES, seed: int = SEED) -> list[Example]:
    """n "x y z w" -> f(w) examples; the corruption puts a word of the other class last."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        last = rng.choice(A_WORDS if i % 2 == 0 else B_WORDS)
        other = rng.choice(B_WORDS if last in A_WORDS else A_WORDS)
        lead = rng.sample([x for x in WORDS if x not in (last, other)], 3)
        out.append(
            Example(
                task="gt-moe-routing",
                prompt=" ".join([*lead, last]),
                answer=" " + _next(last),
                corrupted_prompt=" ".join([*lead, other]),
                correct=(" " + _next(last),),
                counterfactual=(" " + _next(other),),
                meta={"corruption": "class"},
            )
        )
    return out


def moe_routing(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """The MoE ground truth of the module docstring, an ARM read at the last position."""
    tok = word_tokenizer()
    pm = ProbedModel(build_moe_routing_model(seed), tok, backend="torch")
    items = [render(ex, tok, "ar") for ex in moe_routing_examples(n, seed)]
    return GroundTruth(
        "moe-routing",
        pm,
        items,
        {"embed->L1.router", "embed->L1.mlp", "L1.expert0->logits", "L1.expert1->logits"},
        {"embed", "L1.expert0", "L1.expert1"},
        "AR, Qwen3-MoE (4 experts, top-2). 'x y z w' -> the word after w. Layer 1's router sends A "
        "words to expert 0 and B words to expert 1, each expert a lookup for its own class only; "
        "every head, the layer-0 experts and experts 2-3 are distractors writing junk. Corruption: "
        "a last word of the other class, so the routing switches.",
    )
