"""Activation caches keyed by canonical names, in memory or streamed to disk as safetensors shards.

`Cache` is a read-only mapping from canonical names to tensors (batch first). Two kinds of name
are answered without being stored twice:

- `L{l}.mlp.neuron{i}` is a column of the stored `L{l}.mlp.neurons`;
- a head's input receiver `L{l}.H{h}.q|k|v` is `L{l}.resid_pre` (what every head of the layer
  reads, before any edge patch).

`DiskCache` is what `ProbedModel.cache_to_disk` writes: one safetensors file per batch of rows and
an `index.json`; reading a name loads that tensor from each shard and nothing else.

    >>> logits, cache = pm.run_with_cache(ids, names="L*.H*")       # doctest: +SKIP
    >>> cache["L3.H2"].shape                                         # doctest: +SKIP
    torch.Size([8, 20, 576])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from jaxtyping import Float, Shaped
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.jsonl import read_json
from ar2mdm.common.outputs import atomic_write_text
from probe.names import parse

INDEX_FILE = "index.json"


class CacheKeyError(UserError, KeyError):
    """A name the cache does not hold (a KeyError too, so `name in cache` works)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def derived(name: str) -> tuple[str, int | None] | None:
    """(stored name, neuron index or None) that a derived name is read from; None if not derived."""
    try:
        n = parse(name)
    except UserError:
        return None
    if n.kind == "neuron":
        return f"L{n.layer}.mlp.neurons", n.neuron
    if n.kind == "receiver":
        return f"L{n.layer}.resid_pre", None
    return None


class LazyHead:
    """A head's output kept as its z and W_O slices, computed when read: z_h @ W_O[:, h]^T.

    run_with_cache records an unedited layer's heads this way, so a pass that caches every head
    makes no [B, T, d_model] tensor per head (the layer's z, [B, T, n_heads * d_head], is all it
    keeps: n_heads times fewer bytes). `Cache` computes the value on first read and keeps it.
    The W_O slice is the model's own weight (by reference, as TransformerLens's cache computes
    head results from hook_z): read the heads before changing the model's weights.

    z: the layer's z [B, T, n_heads * d_head]; head: which head; w: the head's W_O slice
    [d_model, d_head] (a view of the model's weight).
    """

    __slots__ = ("head", "w", "z")

    def __init__(self, z: Float[Tensor, "batch pos hd"], head: int, w: Float[Tensor, "d_model d_head"]) -> None:
        self.z, self.head, self.w = z, head, w

    def value(self) -> Float[Tensor, "batch pos d_model"]:
        dh = self.w.shape[1]
        with torch.no_grad():
            return self.z[..., self.head * dh : (self.head + 1) * dh] @ self.w.T


def resolve(store: Mapping[str, Shaped[Tensor, "*_shape"] | LazyHead], name: str) -> Shaped[Tensor, "*_shape"] | None:
    """The tensor for `name` in `store`, deriving neurons and receiver inputs and computing lazy
    heads (a dict store keeps the computed value); None if absent."""
    if name in store:
        value = store[name]
        if isinstance(value, LazyHead):
            value = value.value()
            if isinstance(store, dict):
                store[name] = value
        return value
    source = derived(name)
    if source is None or source[0] not in store:
        return None
    value = resolve(store, source[0])
    return value if source[1] is None else value[..., source[1]]


class Cache(Mapping[str, Tensor]):
    """Activations by canonical name (see the module docstring for derived names)."""

    def __init__(self, tensors: Mapping[str, Tensor | LazyHead] | None = None) -> None:
        self._t: dict[str, Tensor | LazyHead] = dict(tensors or {})

    def __getitem__(self, name: str) -> Tensor:
        value = resolve(self._t, name)
        if value is None:
            held = list(self._t)
            sample = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise CacheKeyError(
                f"the cache holds no {name!r} (it holds {len(held)} names: {sample or 'none'}); "
                "ask for it with run_with_cache(..., names=...)."
            )
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._t or resolve(self._t, name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"Cache({len(self._t)} names)"

    def heads(self, layer: int) -> Float[Tensor, "batch pos heads d_model"]:
        """All head outputs of `layer` stacked: [B, T, n_heads, d_model]."""
        names = sorted(
            (k for k in self._t if k.startswith(f"L{layer}.H") and parse(k).kind == "head"), key=lambda k: parse(k).head
        )
        if not names:
            raise CacheKeyError(f"the cache holds no head outputs of layer {layer}.")
        return torch.stack([self[k] for k in names], dim=2)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cache:
        """A new cache with every tensor moved to `device` and/or cast to `dtype`."""
        return Cache({k: self[k].to(device=device, dtype=dtype) for k in self._t})

    @property
    def nbytes(self) -> int:
        """Bytes held (views of one tensor counted once; a lazy head counts its layer's z)."""
        seen: dict[int, int] = {}
        for v in self._t.values():
            v = v.z if isinstance(v, LazyHead) else v
            seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        return sum(seen.values())

    @classmethod
    def cat(cls, caches: Iterable[Cache]) -> Cache:
        """Concatenate caches of consecutive batches along the batch dimension."""
        caches = list(caches)
        if not caches:
            return cls()
        return cls({k: torch.cat([c[k] for c in caches], dim=0) for k in caches[0]._t})

    def save(self, file: str | Path) -> Path:
        """Write the cache as one safetensors file (tensors copied to be contiguous, unshared)."""
        file = Path(file)
        save_file({k: self[k].detach().cpu().clone().contiguous() for k in self._t}, str(file))
        return file

    @classmethod
    def load(cls, file: str | Path) -> Cache:
        tensors = {}
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[key] = fh.get_tensor(key)
        return cls(tensors)


def head_differences(a: Cache, b: Cache, names: list[str]) -> dict[str, Float[Tensor, "batch pos d_model"]]:
    """a[name] - b[name] for the heads `names` of one layer that both caches still hold as
    `LazyHead`s over the same z and W_O, computed from the difference of the two z (one product
    for the layer, no head of either cache made; values are views of one [B, T, H, D]). Heads
    already read (or recorded in an edited pass) are left out: the caller takes their difference
    directly."""
    pairs = [(n, a._t.get(n), b._t.get(n)) for n in names]
    lazy = [(n, x, y) for n, x, y in pairs if isinstance(x, LazyHead) and isinstance(y, LazyHead)]
    if lazy:
        za, zb, w0 = lazy[0][1].z, lazy[0][2].z, lazy[0][1].w
        lazy = [(n, x, y) for n, x, y in lazy if x.z is za and y.z is zb and x.w.shape == w0.shape]
    if not lazy:
        return {}
    with torch.no_grad():
        diff = za - zb
        dh = w0.shape[1]
        w = torch.stack([x.w for _, x, _ in lazy])  # [H, D, dh]
        zh = torch.stack([diff[..., x.head * dh : (x.head + 1) * dh] for _, x, _ in lazy], dim=2)  # [B, T, H, dh]
        out = torch.einsum("btnh,ndh->btnd", zh, w)
    return {n: out[:, :, i] for i, (n, _, _) in enumerate(lazy)}


class DiskCache:
    """A cache written shard by shard (`ProbedModel.cache_to_disk`); rows stay on disk until read.

    `cache[name]` concatenates that one tensor over all shards; `shards()` yields one in-memory
    `Cache` per shard, for streaming analyses whose memory must stay bounded.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / INDEX_FILE).is_file():
            raise UserError(f"{self.folder} has no {INDEX_FILE}: it is not a probe disk cache.")
        again = "Write the cache again (ProbedModel.cache_to_disk into an empty folder)."
        self.index = read_json(self.folder / INDEX_FILE, remedy=again, what="a disk cache's index")
        try:
            self.names: list[str] = [str(n) for n in self.index["names"]]
            self.files = [self.folder / str(s["file"]) for s in self.index["shards"]]
            [int(s["rows"]) for s in self.index["shards"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{self.folder / INDEX_FILE} is damaged (no names or shards). {again}") from None

    def __len__(self) -> int:
        return int(sum(s["rows"] for s in self.index["shards"]))

    def __contains__(self, name: str) -> bool:
        source = derived(name)
        return name in self.names or (source is not None and source[0] in self.names)

    def __getitem__(self, name: str) -> Tensor:
        source = (name, None) if name in self.names else derived(name)
        if source is None or source[0] not in self.names:
            raise CacheKeyError(
                f"the disk cache in {self.folder} holds no {name!r} (it holds {len(self.names)} names)."
            )
        parts = []
        for file in self.files:
            with safe_open(str(file), framework="pt") as fh:
                parts.append(fh.get_tensor(source[0]))
        full = torch.cat(parts, dim=0)
        return full if source[1] is None else full[..., source[1]]

    def shards(self) -> Iterator[Cache]:
        for file in self.files:
            yield Cache.load(file)


class ShardWriter:
    """Writes consecutive batch caches as numbered shards, then the index (last, atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / INDEX_FILE).exists() or any(self.folder.glob("shard-*.safetensors")):
            raise UserError(f"{self.folder} already holds a cache; choose an empty folder or delete it.")
        self.shards: list[dict] = []
        self.names: list[str] | None = None

    def add(self, cache: Cache) -> None:
        name = f"shard-{len(self.shards):05d}.safetensors"
        cache.save(self.folder / name)
        rows = next(iter(cache.values())).shape[0] if len(cache) else 0
        self.shards.append({"file": name, "rows": rows})
        self.names = self.names or list(cache)

    def close(self) -> DiskCache:
        atomic_write_text(
            self.folder / INDEX_FILE, json.dumps({"names": self.names or [], "shards": self.shards}, indent=1)
        )
        return DiskCache(self.folder)
