"""Tiny offline tokenizers and a tiny random Llama for the task-suite tests.

- `word_tokenizer()`: word level, built from the task texts (the model organism's situation: every
  word one token), with digits split one per token as Llama-3/Qwen/SmolLM2 do.
- `bpe_tokenizer()`: a byte-level BPE trained on the task texts with a small vocabulary, digits
  split individually and the space before a digit its own token (SmolLM2's convention), so many
  names are several tokens and the tasks must filter.
- `char_tokenizer()`: byte-level with no merges: every character a token.
"""

from __future__ import annotations

import functools
import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ar2mdm.tasks import TASKS, get_task, words
from ar2mdm.tasks.infilling import BANK

SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]


@functools.cache
def task_corpus(n: int = 40) -> tuple[str, ...]:
    """Texts the built-in tasks produce for seeds 0..1 (clean, corrupted, AR forms), plus the word
    lists repeated (so a BPE learns many, not all, of the names as single tokens)."""
    lines: list[str] = []
    for name in TASKS:
        task = get_task(name)
        for seed in range(2):
            for ex in task.generate(n, seed=seed):
                lines += [ex.text, ex.ar_text, ex.corrupted_prompt + ex.answer + ex.corrupted_suffix]
                if ex.corrupted_ar_prompt:
                    lines.append(ex.corrupted_ar_prompt)
                lines += list(ex.counterfactual)
    word_lists = words.NAMES + words.NOUNS + words.PLACES + words.OBJECTS + words.EVENTS
    lines += [" " + " ".join(word_lists)] * 8
    lines.append(" ".join(a + s for a, s in BANK))
    lines.append(" ".join(string.printable))
    return tuple(lines)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="[EOS]"
    )


@functools.cache
def word_tokenizer() -> PreTrainedTokenizerFast:
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for line in task_corpus():
        for piece, _ in pre.pre_tokenize_str(line):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins pieces with spaces
    return _wrap(tok)


def _byte_level(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(task_corpus(), trainer=trainer)
    return _wrap(tok)


@functools.cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return _byte_level(1500)


@functools.cache
def char_tokenizer() -> PreTrainedTokenizerFast:
    return _byte_level(260)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama in eval mode (fp32, CPU)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()
