"""Ground-truth circuits: tiny GPT-2 models whose circuits are known exactly, by construction.

The protocol is ACDC's check on tracr models (Conmy et al. 2023): build a model whose circuit is
known, score every edge with an attribution method and ask how well |score| separates the true
edges from the rest (`analyses.validation.scoring`). Each model here is a 2-layer, 4-head
`GPT2LMHeadModel` (d_model 128, d_head 32, d_mlp 64, ReLU MLPs) with weights set by hand:

- GPT-2, not Llama, because its learned absolute positions make positional heads exact: a head
  whose query at position i is the one-hot code of position i + o and whose keys are the one-hot
  position codes attends to i + o and nowhere else (rotary embeddings would modulate every head's
  scores by the distance, including the content-matching heads').
- The residual stream is designed in abstract coordinates (named blocks: TOK token codes, POS
  position codes, A1 / A2 moved-token codes, ANS answer codes, JUNK) and lifted into the model's
  128 dimensions by an orthonormal basis of the zero-mean subspace (`lift_basis`). Every vector
  written into the stream is therefore zero-mean, so LayerNorm's centring leaves it alone; with
  eps 1e8 and gain 1e4 the norm's scale is 1e4 / sqrt(var + 1e8) = 1 to within 1e-7, so every
  LayerNorm is the identity on the stream and subspaces never couple through it.
- Components outside the circuit are *distractors*: random queries, keys and values (or MLP input
  weights) reading every block of the stream, the circuit's inputs included, and output weights
  that write only into JUNK. Nothing in the circuit and not the unembedding reads JUNK, so a
  distractor changes nothing the metric sees, yet its activations differ between clean and
  corrupted inputs: methods have to rank its edges low.
- The unembedding reads only ANS: the logit of token t is its ANS coordinate.

The three models (`single_path`, `induction`, `mdm_reverse_induction`; `ground_truths` builds all):

1. single-path (AR): "w1 w2 w3 w4 w5" -> " w1". L0.H2 attends to position 1 from every position
   and copies its token code into A1; L1's MLP holds one ReLU lookup neuron per token (reads A1,
   writes GAIN to that token's ANS coordinate), its other neurons are distractors. Corruption:
   another first word. True edges: embed->L0.H2.v, L0.H2->L1.mlp, L1.mlp->logits.
2. induction (AR, K-composition): "x A B y D C z A" -> " B" (the two bigrams in either order).
   L0.H1 is a previous-token head (writes token(i-1) into A1); L1.H2 is an induction head (query:
   its token; key: A1; value: the token, written as GAIN x ANS). Three corruptions, one third of
   the examples each, so that every link of the circuit carries the answer in some of them:
   query (the last A becomes D: answer C), key (A and D swap places: the C after A answers),
   value (B becomes E). True edges: embed->L0.H1.v, L0.H1->L1.H2.k, embed->L1.H2.q,
   embed->L1.H2.v, L1.H2->logits. (L0.H1's q and k read positions only, identical in every pair.)
3. mdm-reverse-induction (MDM, bidirectional, shift on): "x A B y C D z [mask] B w" -> " A": the
   answer is the token that precedes B elsewhere, so the prediction needs the token to the right
   of the masked position. With shift the prediction for the mask at m is read at m - 1, so
   L0.H3 copies token(i+2) into A2 (at m - 1: the B after the mask) and L0.H0 copies token(i+1)
   into A1; L1.H1 queries with A2, keys on A1 (a mask token's key is pushed down, so the masked
   position, which also precedes B, never matches) and copies the matched token into ANS.
   Corruptions as in 2 (query: the B after the mask becomes D; key: B and D swap; value: A
   becomes E). True edges: embed->L0.H3.v, L0.H3->L1.H1.q, embed->L0.H0.v, L0.H0->L1.H1.k,
   embed->L1.H1.v, L1.H1->logits.

True nodes are the senders on those edges. The metric everywhere is the logit difference, and on
every clean input the logits at the read position are GAIN on the answer and 0 elsewhere (on the
corrupted input GAIN on the counterfactual), to within 1e-3: tests/test_validation.py checks this
from the weights and checks that exactly the true edges have a non-negligible patching effect.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.diffusion.attention import make_bidirectional
from ar2mdm.tasks.base import Example, Rendered, render
from probe.model import ProbedModel

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
WORDS = ("apple", "bird", "cat", "dog", "egg", "fish", "goat", "hat", "ink", "jam", "kite", "lamp")
VOCAB = SPECIALS + WORDS
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = range(5)

N_LAYERS, N_HEADS, D_MODEL, D_MLP, N_POSITIONS = 2, 4, 128, 64, 16
D_HEAD = D_MODEL // N_HEADS
NORM_EPS, NORM_GAIN = 1e8, 1e4  # LayerNorm(x) = x - mean(x) to within 1e-7 (see the docstring)
GAIN = 10.0  # the answer's logit (every other logit is 0): the clean logit difference
POSITION_SHARPNESS = 40.0  # attention-logit gap of positional heads (fallback to BOS: half)
MATCH_SHARPNESS = 30.0  # attention-logit gap of content-matching heads
N_JUNK = 24
N_EXAMPLES = 12
SEED = 0

# abstract coordinates of the residual stream: block name -> (offset, size)
_SIZES = (("TOK", len(VOCAB)), ("POS", N_POSITIONS), ("A1", len(VOCAB)), ("A2", len(VOCAB)), ("ANS", len(VOCAB)))
BLOCKS: dict[str, tuple[int, int]] = {}
_offset = 0
for _name, _size in (*_SIZES, ("JUNK", N_JUNK)):
    BLOCKS[_name] = (_offset, _size)
    _offset += _size
N_COORDS = _offset


@dataclass
class GroundTruth:
    """A model whose circuit is known. items: its examples rendered for its reading mode (clean
    and corrupted ids, read positions, correct and counterfactual ids); true_edges / true_nodes:
    canonical edge names (`analyses.graph`) and sender names of the circuit."""

    name: str
    model: ProbedModel
    items: list[Rendered]
    true_edges: set[str]
    true_nodes: set[str]
    description: str


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `VOCAB`: whitespace-separated words, BOS prepended."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        clean_up_tokenization_spaces=False,
    )


def coord(block: str, i: int) -> int:
    """Index of coordinate i of an abstract block (`BLOCKS`); UserError outside the block."""
    offset, size = BLOCKS[block]
    if not 0 <= i < size:
        raise UserError(f"coordinate {i} is outside block {block} (size {size}).")
    return offset + i


def lift_basis(d_model: int = D_MODEL, n_coords: int = N_COORDS) -> Float[Tensor, "d_model n_coords"]:
    """An orthonormal basis U [d_model, n_coords] of vectors with zero mean: abstract coordinates c
    live in the stream as U c. Deterministic (QR of [ones | identity columns]); UserError unless
    n_coords < d_model."""
    if not 0 < n_coords < d_model:
        raise UserError(f"need 0 < n_coords < d_model to leave room for the mean; got {n_coords}, {d_model}.")
    a = torch.cat([torch.ones(d_model, 1), torch.eye(d_model)[:, :n_coords]], 1).double()
    q, _ = torch.linalg.qr(a)
    return q[:, 1 : n_coords + 1]


# --- writing weights ------------------------------------------------------------------------------


class _Weights:
    """Writes abstract-coordinate maps into a GPT2LMHeadModel (Conv1D stores [in, out])."""

    def __init__(self, model: GPT2LMHeadModel, seed: int) -> None:
        self.model = model
        self.U = lift_basis()
        self.gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.fill_(NORM_GAIN)
        tr = model.transformer
        self._set(tr.wte.weight, self._write(_eye("TOK")).T)
        self._set(tr.wpe.weight, self._write(_eye("POS")).T)
        self._set(model.lm_head.weight, self._read(_eye("ANS").T))

    def _read(self, w: Tensor) -> Tensor:  # [out, coords] -> [out, d_model]
        return w.double() @ self.U.T

    def _write(self, w: Tensor) -> Tensor:  # [coords, in] -> [d_model, in]
        return self.U @ w.double()

    @staticmethod
    def _set(param: Tensor, value: Tensor) -> None:
        with torch.no_grad():
            param.copy_(value.to(param.dtype))

    def head(self, layer: int, h: int, q: Tensor, k: Tensor, v: Tensor, o: Tensor) -> None:
        """Head h's q, k, v maps [d_head, coords] and output map [coords, d_head]."""
        attn = self.model.transformer.h[layer].attn
        cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
        with torch.no_grad():
            for j, w in enumerate((q, k, v)):
                start = j * D_MODEL + cols.start
                attn.c_attn.weight[:, start : start + D_HEAD] = self._read(w).T.to(attn.c_attn.weight.dtype)
            attn.c_proj.weight[cols, :] = self._write(o).T.to(attn.c_proj.weight.dtype)

    def mlp(self, layer: int, w_in: Tensor, b_in: Tensor, w_out: Tensor) -> None:
        """The MLP's input map [d_mlp, coords] with bias [d_mlp] and output map [coords, d_mlp]."""
        mlp = self.model.transformer.h[layer].mlp
        self._set(mlp.c_fc.weight, self._read(w_in).T)
        self._set(mlp.c_fc.bias, b_in)
        self._set(mlp.c_proj.weight, self._write(w_out).T)

    def _randn(self, *shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale

    def _junk_out(self, n: int, scale: float) -> Tensor:
        out = torch.zeros(N_COORDS, n, dtype=torch.float64)
        offset, size = BLOCKS["JUNK"]
        out[offset : offset + size] = self._randn(size, n, scale=scale)
        return out

    def distractor_head(self, layer: int, h: int) -> None:
        """Random q, k, v reading every block (JUNK too); output into JUNK only."""
        q, k, v = (self._randn(D_HEAD, N_COORDS, scale=1.0) for _ in range(3))
        self.head(layer, h, q, k, 0.3 * v, self._junk_out(D_HEAD, 0.15))

    def distractor_mlp(self, layer: int, keep: Callable[[Tensor, Tensor, Tensor], None] | None = None) -> None:
        """Random neurons reading every block, writing JUNK; `keep(w_in, b_in, w_out)` may then
        overwrite some neurons with a circuit's (in place) before the weights are written."""
        w_in = self._randn(D_MLP, N_COORDS, scale=0.3)
        b_in = self._randn(D_MLP, scale=0.3)
        w_out = self._junk_out(D_MLP, 0.05)
        if keep is not None:
            keep(w_in, b_in, w_out)
        self.mlp(layer, w_in, b_in, w_out)


def _eye(block: str) -> Tensor:
    """[coords, size]: column i is the unit vector of coordinate i of `block`."""
    offset, size = BLOCKS[block]
    out = torch.zeros(N_COORDS, size, dtype=torch.float64)
    out[offset : offset + size] = torch.eye(size, dtype=torch.float64)
    return out


def _position_query(target: Callable[[int], int]) -> Tensor:
    """[d_head, coords]: the query at position i selects key slot target(i) with logit gap
    POSITION_SHARPNESS, and slot 0 (BOS) with half of it, the fallback when target(i) is outside
    the context. Scaled by sqrt(d_head) against GPT-2's 1/sqrt(d_head)."""
    w = torch.zeros(D_HEAD, N_COORDS, dtype=torch.float64)
    for i in range(N_POSITIONS):
        j = target(i)
        if 0 <= j < N_POSITIONS:
            w[j, coord("POS", i)] += POSITION_SHARPNESS
        w[0, coord("POS", i)] += POSITION_SHARPNESS / 2
    return w * math.sqrt(D_HEAD)


def _select(block: str, scale: float = 1.0) -> Tensor:
    """[d_head, coords]: head slot t reads coordinate t of `block` (times scale)."""
    offset, size = BLOCKS[block]
    w = torch.zeros(D_HEAD, N_COORDS, dtype=torch.float64)
    n = torch.arange(min(size, D_HEAD))
    w[n, offset + n] = scale
    return w


def _emit(block: str, scale: float = 1.0) -> Tensor:
    """[coords, d_head]: head slot t writes coordinate t of `block` (times scale)."""
    return _select(block, scale).T.contiguous()


def _positional_head(w: _Weights, layer: int, h: int, target: Callable[[int], int], into: str) -> None:
    """A head attending from i to target(i) and copying that position's token code into `into`."""
    w.head(layer, h, _position_query(target), _select("POS"), _select("TOK"), _emit(into))


def _build(
    seed: int,
    circuit: Callable[[_Weights], set[tuple[int, int]]],
    mlps: dict[int, Callable] | None = None,
    *,
    n_layers: int = N_LAYERS,
):
    """A GPT2LMHeadModel whose `circuit(weights)` sets some heads (returned as (layer, head));
    every other head and MLP is a distractor (`mlps`: per-layer `keep` hooks of circuit neurons)."""
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_embd=D_MODEL,
        n_layer=n_layers,
        n_head=N_HEADS,
        n_positions=N_POSITIONS,
        n_inner=D_MLP,
        activation_function="relu",
        layer_norm_epsilon=NORM_EPS,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    model = GPT2LMHeadModel(config).eval()
    weights = _Weights(model, seed)
    used = circuit(weights)
    for layer in range(n_layers):
        for h in range(N_HEADS):
            if (layer, h) not in used:
                weights.distractor_head(layer, h)
        weights.distractor_mlp(layer, (mlps or {}).get(layer))
    return model


# --- public building blocks (other hand-set models: analyses.validation.planted) -------------------

Weights = _Weights  # what a `build_model` circuit callback receives


def build_model(
    seed: int,
    circuit: Callable[[_Weights], set[tuple[int, int]]],
    mlps: dict[int, Callable] | None = None,
    *,
    n_layers: int = N_LAYERS,
) -> GPT2LMHeadModel:
    """A hand-set `n_layers`-layer GPT-2 (the module docstring's recipe): `circuit(weights)` sets
    some heads and returns them as (layer, head); every other head and MLP is a distractor drawn
    from `seed` (`mlps`: per-layer hooks that overwrite some MLP neurons with circuit neurons)."""
    return _build(seed, circuit, mlps, n_layers=n_layers)


def position_query(target: Callable[[int], int]) -> Float[Tensor, "d_head coords"]:
    """The query map of a positional head: position i attends to target(i) (to BOS when target(i)
    is outside the context)."""
    return _position_query(target)


def select(block: str, scale: float = 1.0) -> Float[Tensor, "d_head coords"]:
    """A q / k / v map whose head slot t reads coordinate t of `block` (times scale)."""
    return _select(block, scale)


def emit(block: str, scale: float = 1.0) -> Float[Tensor, "coords d_head"]:
    """An output map whose head slot t writes coordinate t of `block` (times scale)."""
    return _emit(block, scale)


# --- examples -------------------------------------------------------------------------------------


def _example(task: str, prompt: list[str], answer: str, corrupted: list[str], counterfactual: str, **kw) -> Example:
    return Example(
        task=task,
        prompt=" ".join(prompt),
        answer=" " + answer,
        corrupted_prompt=" ".join(corrupted),
        correct=(" " + answer,),
        counterfactual=(" " + counterfactual,),
        **kw,
    )


KINDS = ("query", "key", "value")


def _bigram_prompt(rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """ "x A B y D C z" with the two bigrams in random order, and the words by role."""
    x, y, z, a, b, c, d, e, w = rng.sample(WORDS, 9)
    first, second = [a, b], [d, c]
    if rng.random() < 0.5:
        first, second = second, first
    return [x, *first, y, *second, z], {"A": a, "B": b, "C": c, "D": d, "E": e, "w": w}


def _swap(words: list[str], u: str, v: str) -> list[str]:
    return [v if t == u else u if t == v else t for t in words]


def single_path_examples(n: int = N_EXAMPLES, seed: int = SEED) -> list[Example]:
    """n "w1 w2 w3 w4 w5" -> " w1" examples; the corruption changes w1 (answer: the new word)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 6)
        out.append(
            _example(
                "gt-single-path", words[:5], words[0], [words[5], *words[1:5]], words[5], meta={"corruption": "token"}
            )
        )
    return out


def induction_examples(n: int = N_EXAMPLES, seed: int = SEED) -> list[Example]:
    """n "x A B y D C z A" -> " B" examples cycling through the query, key and value corruptions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words, r = _bigram_prompt(rng)
        kind = KINDS[i % 3]
        if kind == "query":
            corrupted, cf = [*words, r["D"]], r["C"]
        elif kind == "key":
            corrupted, cf = [*_swap(words, r["A"], r["D"]), r["A"]], r["C"]
        else:
            corrupted, cf = [*_swap(words, r["B"], r["E"]), r["A"]], r["E"]
        out.append(_example("gt-induction", [*words, r["A"]], r["B"], corrupted, cf, meta={"corruption": kind}))
    return out


def reverse_induction_examples(n: int = N_EXAMPLES, seed: int = SEED) -> list[Example]:
    """n "x A B y C D z" + " A" + " B w" (suffix) examples, query / key / value corruptions in turn
    (query: the suffix's B becomes D; key: B and D swap; value: A becomes E)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words, r = _bigram_prompt(rng)
        words = _swap(words, r["C"], r["D"])  # the second bigram reads "C D"
        kind = KINDS[i % 3]
        suffix = [r["B"], r["w"]]
        corrupted, c_suffix, cf = words, suffix, r["C"]
        if kind == "query":
            c_suffix = [r["D"], r["w"]]
        elif kind == "key":
            corrupted = _swap(words, r["B"], r["D"])
        else:
            corrupted, cf = _swap(words, r["A"], r["E"]), r["E"]
        out.append(
            _example(
                "gt-reverse-induction",
                words,
                r["A"],
                corrupted,
                cf,
                suffix=" " + " ".join(suffix),
                corrupted_suffix=" " + " ".join(c_suffix),
                meta={"corruption": kind},
            )
        )
    return out


# --- the models -----------------------------------------------------------------------------------


def as_ar(model: GPT2LMHeadModel, examples: list[Example]) -> tuple[ProbedModel, list[Rendered]]:
    """A hand-set model read as an ARM and `examples` rendered for it."""
    tok = word_tokenizer()
    return ProbedModel(model, tok, backend="torch"), [render(ex, tok, "ar") for ex in examples]


def as_mdm(model: GPT2LMHeadModel, examples: list[Example]) -> tuple[ProbedModel, list[Rendered]]:
    """A hand-set model read as a bidirectional MDM (shift on, mask `MASK_ID`) and `examples`
    rendered for it (the answer masked in place)."""
    model = make_bidirectional(model)
    tok = word_tokenizer()
    pm = ProbedModel(model, tok, ModelMeta(kind="mdm", family="gpt2", shift=True, mask_id=MASK_ID), backend="torch")
    return pm, [render(ex, tok, "mdm", shift=True, mask_id=MASK_ID) for ex in examples]


def single_path(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """Model 1 (module docstring): L0.H2 moves the first word into A1, L1's MLP looks it up."""
    vocab = len(VOCAB)

    def circuit(w: _Weights) -> set[tuple[int, int]]:
        _positional_head(w, 0, 2, lambda i: 1, "A1")
        return {(0, 2)}

    def lookup(w_in: Tensor, b_in: Tensor, w_out: Tensor) -> None:
        # neuron t: relu(2 * A1[t] - 1) -> GAIN * ANS[t]; 1 for the moved token, 0 for the others
        w_in[:vocab], b_in[:vocab], w_out[:, :vocab] = 0.0, -1.0, 0.0
        for t in range(vocab):
            w_in[t, coord("A1", t)] = 2.0
            w_out[coord("ANS", t), t] = GAIN

    pm, items = as_ar(_build(seed, circuit, {1: lookup}), single_path_examples(n, seed))
    return GroundTruth(
        "single-path",
        pm,
        items,
        {"embed->L0.H2.v", "L0.H2->L1.mlp", "L1.mlp->logits"},
        {"embed", "L0.H2", "L1.mlp"},
        "AR. 'w1 w2 w3 w4 w5' -> ' w1'. L0.H2 attends to position 1 and copies its token into a "
        "subspace that only L1.mlp's lookup neurons read (one ReLU neuron per token writes the "
        "answer logit); the 7 other heads and 47 other neurons are distractors writing junk. "
        "Corruption: another first word.",
    )


def induction(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """Model 2 (module docstring): previous-token head L0.H1 -> induction head L1.H2 (K-composition)."""

    def circuit(w: _Weights) -> set[tuple[int, int]]:
        _positional_head(w, 0, 1, lambda i: i - 1, "A1")
        query = _select("TOK", MATCH_SHARPNESS * math.sqrt(D_HEAD))
        w.head(1, 2, query, _select("A1"), _select("TOK"), _emit("ANS", GAIN))
        return {(0, 1), (1, 2)}

    pm, items = as_ar(_build(seed + 1, circuit), induction_examples(n, seed))
    return GroundTruth(
        "induction",
        pm,
        items,
        {"embed->L0.H1.v", "L0.H1->L1.H2.k", "embed->L1.H2.q", "embed->L1.H2.v", "L1.H2->logits"},
        {"embed", "L0.H1", "L1.H2"},
        "AR. 'x A B y D C z A' -> ' B'. L0.H1 writes the previous token; L1.H2 queries with its own "
        "token, keys on L0.H1's output (K-composition) and copies the matched token to the answer. "
        "Corruptions in turn: query (last A -> D), key (A and D swap), value (B -> E).",
    )


def mdm_reverse_induction(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """Model 3 (module docstring): a bidirectional MDM (shift on) whose answer needs the token
    right of the masked position; Q-composition through L0.H3, K-composition through L0.H0."""

    def circuit(w: _Weights) -> set[tuple[int, int]]:
        _positional_head(w, 0, 0, lambda i: i + 1, "A1")
        _positional_head(w, 0, 3, lambda i: i + 2, "A2")
        key = _select("A1")
        key[: len(VOCAB), coord("TOK", MASK_ID)] = -2.0  # a masked position's key matches nothing
        w.head(1, 1, _select("A2", MATCH_SHARPNESS * math.sqrt(D_HEAD)), key, _select("TOK"), _emit("ANS", GAIN))
        return {(0, 0), (0, 3), (1, 1)}

    pm, items = as_mdm(_build(seed + 2, circuit), reverse_induction_examples(n, seed))
    return GroundTruth(
        "mdm-reverse-induction",
        pm,
        items,
        {"embed->L0.H3.v", "L0.H3->L1.H1.q", "embed->L0.H0.v", "L0.H0->L1.H1.k", "embed->L1.H1.v", "L1.H1->logits"},
        {"embed", "L0.H0", "L0.H3", "L1.H1"},
        "MDM (bidirectional, shift on). 'x A B y C D z [mask] B w' -> ' A' (what precedes B "
        "elsewhere), read at the position before the mask. L0.H3 copies token(i+2) (the B right of "
        "the mask), L0.H0 token(i+1); L1.H1 queries with L0.H3's output, keys on L0.H0's (Q- and "
        "K-composition) and copies the matched token. Corruptions in turn: query (the B after the "
        "mask -> D), key (B and D swap), value (A -> E).",
    )


BUILDERS: dict[str, Callable[..., GroundTruth]] = {
    "single-path": single_path,
    "induction": induction,
    "mdm-reverse-induction": mdm_reverse_induction,
}


def ground_truths(n: int = N_EXAMPLES, seed: int = SEED) -> list[GroundTruth]:
    """Every ground-truth model (`BUILDERS`), each with n examples drawn from `seed`."""
    return [build(n, seed) for build in BUILDERS.values()]
