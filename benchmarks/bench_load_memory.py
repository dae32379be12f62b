"""Memory of opening a published MDM: measured on random replicas, against `conversion.memory`'s rule.

Three random Dream-layout replicas (Qwen2 weights in bf16, model_type "Dream", as Dream-v0 is
published) of about 20 M, 65 M and 250 M parameters are written to a temporary folder. Each is
opened in a fresh process with `load_any(folder, dtype=bf16)`, the published-family path
(`conversion.published`: from_pretrained streaming from the memory-mapped files), then runs one
8-token forward pass (on CPU the parameters are memory-mapped file pages, resident only once
read: the forward touches every one). The process's resident set is sampled every millisecond;
the extra peak over the process before the load (torch and transformers imported) is compared
with `predict_load_bytes`. The ratio measured / predicted
must stay <= 1 (the rule is an upper bound) and should not be far below it.

Then the rule's figure for the published 7B / 8B pairs in bf16 on one 80 GB GPU (parameter counts
of the released checkpoints), with the logits of an analysis batch on top.

    python -m benchmarks.bench_load_memory              # about 1-2 minutes on 2 cores
    python -m benchmarks.bench_load_memory --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from conversion.memory import GiB, activation_bytes, predict_load_bytes

SIZES = {  # name: (hidden, layers, intermediate); vocab 32768, 8 heads, 2 KV heads
    "20M": (256, 4, 1024),
    "65M": (512, 8, 2048),
    "250M": (1024, 12, 4096),
}
VOCAB = 32768

# Parameter counts of the released checkpoints (safetensors headers; model cards), and vocabularies.
PUBLISHED = {
    "Qwen2.5-7B / Dream-v0-Base-7B": (7_615_616_512, 152_064),
    "LLaMA-2-7B / DiffuLLaMA": (6_738_415_616, 32_000),
    "LLaDA-8B-Base": (8_015_495_168, 126_464),
}

CHILD = r"""
import json, os, sys, threading, time
import ar2mdm.common
from conversion.checkpoints import load_any
import torch
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss(); peak = [base]; done = [False]
def watch():
    while not done[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.001)
t = threading.Thread(target=watch, daemon=True); t.start()
loaded = load_any(sys.argv[1], dtype=torch.bfloat16)
after_load = rss() - base
with torch.no_grad():  # one short forward touches every weight (memory-mapped pages become resident)
    loaded.model(torch.ones(1, 8, dtype=torch.long))
done[0] = True; t.join()
peak[0] = max(peak[0], rss())
n = sum(p.numel() for p in loaded.model.parameters())
print(json.dumps({"extra_peak": peak[0] - base, "after_load": after_load, "after": rss() - base, "n_params": n,
                  "dtype": str(next(loaded.model.parameters()).dtype)}))
"""


def write_replica(
    folder: Path,
    hidden: int,
    layers: int,
    inter: int,
    *,
    heads: int = 8,
    kv_heads: int = 2,
    vocab: int = VOCAB,
    layout: str = "dream",
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> int:
    """A random Qwen2-shaped folder (safetensors in `dtype`, the tests' tiny tokenizer, embedding
    rows padded to `vocab`); layout "dream" writes Dream's config (model_type "Dream", its mask
    token id), "qwen2" a plain Qwen2 ARM. Returns the parameter count."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_tokenizer  # the tests' tokenizer: the vocabulary does not matter here

    tok = tiny_tokenizer()
    tok.add_special_tokens({"mask_token": "<|mask|>"})
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if layout == "dream":
        raw = json.loads((folder / "config.json").read_text())
        raw.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=tok.mask_token_id)
        (folder / "config.json").write_text(json.dumps(raw))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    rows = []
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (hidden, layers, inter) in SIZES.items():
            folder = Path(tmp) / name
            n = write_replica(folder, hidden, layers, inter)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, cwd=root, check=True
            )
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            predicted = predict_load_bytes(n, torch.bfloat16, largest=VOCAB * hidden, file_bytes=2 * n)
            rows.append(
                {
                    "replica": name,
                    "n_params": n,
                    "param_bytes_bf16": 2 * n,
                    "measured_extra_peak": measured["extra_peak"],
                    "measured_after_load": measured["after_load"],
                    "measured_after_forward": measured["after"],
                    "predicted": predicted,
                    "ratio": measured["extra_peak"] / predicted,
                    "loaded_dtype": measured["dtype"],
                }
            )
            print(
                f"{name:>5}: {n / 1e6:6.1f} M params  parameters {2 * n / 2**20:7.1f} MiB  measured peak "
                f"+{measured['extra_peak'] / 2**20:7.1f} MiB (after the load alone +{measured['after_load'] / 2**20:5.1f})  predicted {predicted / 2**20:7.1f} MiB  "
                f"measured/predicted {rows[-1]['ratio']:.2f}  ({measured['dtype']})"
            )
    print("\npredicted for the published pairs, bf16, one model (logits of 8 x 256 tokens on top):")
    published = []
    for name, (n, vocab) in PUBLISHED.items():
        load = predict_load_bytes(n, torch.bfloat16, file_bytes=2 * n)  # published in bf16
        logits = activation_bytes(8, 256, vocab, torch.bfloat16)
        published.append({"model": name, "n_params": n, "load_gib": load / GiB, "logits_gib": logits / GiB})
        print(
            f"  {name:32} {n / 1e9:5.2f} B  {load / GiB:5.1f} GiB  (+{logits / GiB:.2f} GiB logits); a pair: {2 * load / GiB:5.1f} GiB of 80"
        )
    if args.json:
        args.json.write_text(json.dumps({"replicas": rows, "published": published}, indent=2))


if __name__ == "__main__":
    main()
