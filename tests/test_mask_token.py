"""A tokenizer or model that cannot take a mask token gets a specific MaskTokenError (a UserError)
that says what to pass instead, before anything is trained."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import WORDS, build_tiny_model, tiny_config, tiny_tokenizer
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizer

from ar2mdm.common.errors import UserError
from conversion.mdm import MASK_TOKEN, MaskTokenError, add_mask_token
from conversion.train import TrainConfig, train

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class WordTokenizer(PreTrainedTokenizer):
    """A tiny pure-Python (slow) word-level tokenizer: fixed vocabulary, whitespace split."""

    def __init__(self, **kwargs: object) -> None:
        self.vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(WORDS)))}
        self.inverse = {i: w for w, i in self.vocab.items()}
        super().__init__(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs: object) -> list[str]:
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab["<unk>"])

    def _convert_id_to_token(self, index: int) -> str:
        return self.inverse.get(index, "<unk>")


class FrozenWordTokenizer(WordTokenizer):
    """Refuses new tokens silently (as tokenizers with a fixed table do): adding one adds nothing."""

    def _add_tokens(self, new_tokens: object, special_tokens: bool = False) -> int:
        return 0


class RefusingWordTokenizer(WordTokenizer):
    def add_special_tokens(self, *args: object, **kwargs: object) -> int:
        raise ValueError("this vocabulary is frozen")


def tiny_model(rows: int) -> PreTrainedModel:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama", rows), dtype=torch.float32)


def rows(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().weight.shape[0]


def test_a_python_tokenizer_takes_a_new_mask_token() -> None:
    """The slow (pure-Python) backend works too: one new id, a new row = the mean of the others."""
    tok = WordTokenizer()
    model = tiny_model(len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    mask_id = add_mask_token(model, tok, "add")
    assert mask_id == before.shape[0] == len(tok) - 1
    assert tok.mask_token == MASK_TOKEN and tok.convert_ids_to_tokens(mask_id) == MASK_TOKEN
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], before.mean(0))


def test_a_tokenizer_that_adds_nothing_is_refused() -> None:
    tok = FrozenWordTokenizer()
    model = tiny_model(len(tok))
    with pytest.raises(
        MaskTokenError,
        match=r"cannot take a new mask token: adding <\|mask\|> did not give "
        r"it a single id.*tokens added: 0.*--mask-token ID",
    ) as err:
        add_mask_token(model, tok, "add")
    assert isinstance(err.value, UserError)
    assert rows(model) == len(tok)  # nothing was resized


def test_a_tokenizer_that_raises_when_adding_is_refused() -> None:
    with pytest.raises(
        MaskTokenError, match="RefusingWordTokenizer.*ValueError: this vocabulary is frozen.*--mask-token"
    ):
        add_mask_token(tiny_model(len(WordTokenizer())), RefusingWordTokenizer(), "add")


def test_a_tokenizer_with_no_way_to_add_tokens_is_refused() -> None:
    raw = tiny_tokenizer().backend_tokenizer  # a bare `tokenizers.Tokenizer`: no convert_tokens_to_ids
    with pytest.raises(
        MaskTokenError, match="cannot take a new mask token: it has no add_special_tokens.*--mask-token"
    ):
        add_mask_token(tiny_model(raw.get_vocab_size()), raw, "add")


@pytest.mark.parametrize("role", ["pad", "bos", "eos"])
def test_an_id_that_is_pad_bos_or_eos_is_refused(role: str) -> None:
    tok = tiny_tokenizer()
    token_id = getattr(tok, f"{role}_token_id")
    with pytest.raises(MaskTokenError, match=f"mask token id {token_id} is the tokenizer's {role} token.*unused id"):
        add_mask_token(tiny_model(len(tok)), tok, str(token_id))


def test_pad_set_to_eos_names_both_roles() -> None:
    tok = tiny_tokenizer(pad_token=False)
    tok.pad_token = tok.eos_token  # what load_ar does for tokenizers without a pad token
    with pytest.raises(MaskTokenError, match="pad/eos token"):
        add_mask_token(tiny_model(len(tok)), tok, tok.eos_token_id)


def test_an_own_mask_token_that_is_eos_is_not_reused() -> None:
    """A tokenizer whose mask token is its eos (all specials one token): 'add' adds a real one."""
    tok = tiny_tokenizer()
    tok.mask_token = tok.eos_token
    model = tiny_model(len(tok))
    mask_id = add_mask_token(model, tok, "add")
    assert mask_id not in (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    assert tok.convert_ids_to_tokens(mask_id) == MASK_TOKEN and rows(model) == mask_id + 1


def test_an_existing_mask_string_with_a_row_keeps_the_row() -> None:
    tok = tiny_tokenizer()
    tok.add_tokens([MASK_TOKEN])  # already a (plain) token of the vocabulary, with an embedding row
    model = tiny_model(len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    mask_id = add_mask_token(model, tok, "add")
    assert mask_id == len(tok) - 1 and tok.mask_token == MASK_TOKEN
    torch.testing.assert_close(model.get_input_embeddings().weight, before)  # trained row kept


def test_embeddings_that_cannot_be_resized_are_refused() -> None:
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))

    def cannot(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("custom embedding")

    model.resize_token_embeddings = cannot
    with pytest.raises(
        MaskTokenError,
        match=r"cannot be resized to \d+ rows.*NotImplementedError: custom "
        r"embedding.*--mask-token ID",
    ):
        add_mask_token(model, tok, "add")


def test_a_resize_that_leaves_the_head_short_is_refused() -> None:
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))

    def input_only(n: int, **kwargs: object) -> None:  # a model whose head is not resized with it
        model.set_input_embeddings(torch.nn.Embedding(n, model.config.hidden_size))

    model.resize_token_embeddings = input_only
    with pytest.raises(MaskTokenError, match=rf"did not take \(output head has {len(tok)} rows\)"):
        add_mask_token(model, tok, "add")


def test_a_model_without_input_embeddings_is_refused() -> None:
    model = tiny_model(len(tiny_tokenizer()))

    def none() -> None:
        raise NotImplementedError

    model.get_input_embeddings = none
    with pytest.raises(MaskTokenError, match="exposes no input embedding"):
        add_mask_token(model, tiny_tokenizer(), "add")


def test_train_refuses_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    model = build_tiny_model("llama", tmp_path / "ar")
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(8)))
    eos = tiny_tokenizer().eos_token_id
    cfg = TrainConfig(
        model=str(model),
        data=str(corpus),
        out=str(tmp_path / "run"),
        steps=2,
        seq_len=16,
        batch_size=2,
        mask_token=str(eos),
    )
    with pytest.raises(MaskTokenError, match="eos token"):
        train(cfg)
    assert not (tmp_path / "run" / "train.jsonl").exists()
