"""Harder ground-truth circuits: a bidirectional MDM circuit and a self-repairing AR circuit.

Built with the recipe of `analyses.validation.groundtruth` (a hand-set 2-layer GPT-2, abstract
coordinates lifted into the stream, every other head and MLP a distractor writing junk). As there,
the true edges are exactly the edges whose single-edge patching changes the logit difference
(tests/test_validation.py checks this from exact patching on every model):

4. mdm-bidirectional (MDM, bidirectional, shift on): the reverse-induction task of model 3,
   "x A B y C D z [mask] B w" -> " A", solved by a circuit that reads in both directions: L0.H3
   copies token(i+2) into A2 (from the read position m - 1: the B right of the mask), L0.H1 copies
   token(i-1) into A1 (at the prompt's B: the A before it); L1.H1 queries with A2, keys on each
   position's own token (a position whose A1 is the mask token is pushed down, so the suffix's B
   never matches) and copies that position's A1 into ANS. Corruptions in turn: query (the suffix's
   B -> D), key (B and D swap), value (A -> E). True edges: embed->L0.H3.v, L0.H3->L1.H1.q,
   embed->L1.H1.k, embed->L0.H1.v, L0.H1->L1.H1.v, L1.H1->logits.
5. self-repair (AR): model 1's task, "w1 w2 w3 w4 w5" -> " w1", with a backup head. L0.H2 moves
   w1 into A1 and L1's MLP looks it up (the primary path); L1.H0, the backup, attends from the
   read position to position 1 unless the A1 it reads agrees with the token it finds there
   (then to BOS), and writes that token's answer logit. On any consistent input the backup is
   silent; when L0.H2's output disagrees with the token at position 1 (L0.H2 patched, or the
   backup's key patched) it takes over. Single-edge patching therefore shows the primary path
   (-2 GAIN) and two edges into the backup (+GAIN each), while patching L0.H2 as a node gives
   -GAIN, not -2 GAIN: the backup repairs half of it. True edges: embed->L0.H2.v, L0.H2->L1.mlp,
   L1.mlp->logits, L0.H2->L1.H0.q, embed->L1.H0.k.
"""

from __future__ import annotations

import math

import torch

from analyses.validation.groundtruth import (
    D_HEAD,
    GAIN,
    MASK_ID,
    MATCH_SHARPNESS,
    N_EXAMPLES,
    POSITION_SHARPNESS,
    SEED,
    VOCAB,
    GroundTruth,
    Weights,
    as_ar,
    as_mdm,
    build_model,
    coord,
    emit,
    position_query,
    reverse_induction_examples,
    select,
    single_path_examples,
)

SELF_REPAIR_GATE = 3.0 * POSITION_SHARPNESS  # what agreement subtracts from the backup's score of position 1


def mdm_bidirectional(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """Model 4 (module docstring): a bidirectional MDM circuit reading left (L0.H1) and right (L0.H3)."""

    def circuit(w: Weights) -> set[tuple[int, int]]:
        w.head(0, 3, position_query(lambda i: i + 2), select("POS"), select("TOK"), emit("A2"))
        w.head(0, 1, position_query(lambda i: i - 1), select("POS"), select("TOK"), emit("A1"))
        key = select("TOK")
        key[: len(VOCAB), coord("A1", MASK_ID)] = -2.0  # the position right of the mask matches nothing
        w.head(1, 1, select("A2", MATCH_SHARPNESS * math.sqrt(D_HEAD)), key, select("A1"), emit("ANS", GAIN))
        return {(0, 1), (0, 3), (1, 1)}

    pm, items = as_mdm(build_model(seed + 3, circuit), reverse_induction_examples(n, seed))
    return GroundTruth(
        "mdm-bidirectional",
        pm,
        items,
        {"embed->L0.H3.v", "L0.H3->L1.H1.q", "embed->L1.H1.k", "embed->L0.H1.v", "L0.H1->L1.H1.v", "L1.H1->logits"},
        {"embed", "L0.H1", "L0.H3", "L1.H1"},
        "MDM (bidirectional, shift on). 'x A B y C D z [mask] B w' -> ' A', read at the position "
        "before the mask. L0.H3 copies token(i+2) (rightward: the B after the mask) into the query "
        "of L1.H1, which keys on each position's own token and copies what L0.H1 wrote there "
        "(token(i-1), leftward: the A before the prompt's B). Corruptions in turn: query, key, value.",
    )


def self_repair(n: int = N_EXAMPLES, seed: int = SEED) -> GroundTruth:
    """Model 5 (module docstring): model 1's primary path and a backup head that repairs it."""
    vocab = len(VOCAB)

    def circuit(w: Weights) -> set[tuple[int, int]]:
        w.head(0, 2, position_query(lambda i: 1), select("POS"), select("TOK"), emit("A1"))
        # backup: slot 0..15 positional (to position 1, else BOS), slots 16..: agreement of the
        # A1 it reads (query) with the token at the key's position (key), which cancels position 1
        q = position_query(lambda i: 1)
        k = select("POS")
        gate = SELF_REPAIR_GATE * math.sqrt(D_HEAD)
        for t in range(5, vocab):  # the words (the specials never sit at position 1)
            slot = 16 + (t - 5)
            q[slot, coord("A1", t)] = gate
            k[slot, coord("TOK", t)] = -1.0
        w.head(1, 0, q, k, select("TOK"), emit("ANS", GAIN))
        return {(0, 2), (1, 0)}

    def lookup(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor) -> None:
        w_in[:vocab], b_in[:vocab], w_out[:, :vocab] = 0.0, -1.0, 0.0
        for t in range(vocab):
            w_in[t, coord("A1", t)] = 2.0
            w_out[coord("ANS", t), t] = GAIN

    pm, items = as_ar(build_model(seed + 4, circuit, {1: lookup}), single_path_examples(n, seed))
    return GroundTruth(
        "self-repair",
        pm,
        items,
        {"embed->L0.H2.v", "L0.H2->L1.mlp", "L1.mlp->logits", "L0.H2->L1.H0.q", "embed->L1.H0.k"},
        {"embed", "L0.H2", "L1.mlp"},
        "AR. 'w1 w2 w3 w4 w5' -> ' w1'. The primary path of model 1 (L0.H2 moves w1, L1.mlp looks "
        "it up) and a backup head L1.H0 that attends to position 1 and writes its token's answer "
        "logit only when the A1 it reads disagrees with the token there. Patching L0.H2 whole "
        "costs half of the logit difference, not all of it: the backup repairs the rest.",
    )


HARD_BUILDERS = {"mdm-bidirectional": mdm_bidirectional, "self-repair": self_repair}
