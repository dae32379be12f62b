"""Confidence-ordered filling against hand-built models whose predictions are known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conversion.errors import UserError
from conversion.sampling import confidence_fill, init_state, step

V, MASK = 6, 5


class TableModel(torch.nn.Module):
    """Logits depend only on position: position i predicts token table[i] with confidence conf[i]."""

    def __init__(self, table, conf):
        super().__init__()
        self.table, self.conf = torch.tensor(table), torch.tensor(conf)
        self.calls = 0
        self.seen = []

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        self.seen.append(input_ids.clone())
        B, T = input_ids.shape
        logits = torch.full((B, T, V), -10.0)
        for i in range(T):
            logits[:, i, self.table[i]] = self.conf[i]
        logits[..., MASK] = 100.0  # must never be chosen (SUBS)
        return SimpleNamespace(logits=logits)


def test_commits_most_confident_first_without_shift():
    model = TableModel(table=[0, 1, 2, 3], conf=[1.0, 3.0, 9.0, 5.0])
    ids = torch.tensor([[4, MASK, MASK, MASK]])
    state = init_state(ids, None, mask_id=MASK, shift=False)
    state = step(model, state, mask_id=MASK, shift=False)
    assert state.ids.tolist() == [[4, MASK, 2, MASK]]  # position 2 is the most confident
    state = step(model, state, mask_id=MASK, shift=False)
    assert state.ids.tolist() == [[4, MASK, 2, 3]]
    out, nfe = confidence_fill(model, ids, mask_id=MASK, shift=False)
    assert out.tolist() == [[4, 1, 2, 3]] and nfe == 3


def test_shift_reads_previous_position():
    # with shift on, the token at position i comes from the row of position i - 1
    model = TableModel(table=[1, 2, 3, 0], conf=[5.0, 4.0, 3.0, 2.0])
    out, nfe = confidence_fill(model, torch.tensor([[4, MASK, MASK, 0]]), mask_id=MASK, shift=True)
    assert out.tolist() == [[4, 1, 2, 0]] and nfe == 2


def test_prompt_never_changes_and_no_mask_remains():
    torch.manual_seed(0)
    model = TableModel(table=torch.randint(0, 5, (8,)).tolist(), conf=torch.rand(8).tolist())
    ids = torch.tensor([[0, 1, MASK, MASK, 2, MASK, 3, 4], [1, MASK, MASK, MASK, MASK, 0, 0, 0]])
    attn = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    out, nfe = confidence_fill(model, ids, attn, mask_id=MASK, shift=False, steps=2)
    keep = ids != MASK
    assert torch.equal(out[keep], ids[keep])
    assert not bool((out == MASK).any())
    assert nfe == model.calls == 2


def test_mask_at_position_zero_with_shift_is_an_error():
    with pytest.raises(UserError, match="position 0"):
        init_state(torch.tensor([[MASK, 1]]), None, mask_id=MASK, shift=True)
