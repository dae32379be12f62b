"""Held-out masked-token loss and accuracy of an MDM on the blocks its conversion held out.

    python scripts/mdm_heldout.py runs/organism-mdm            # the converted MDM
    python scripts/mdm_heldout.py runs/organism-mdm --baseline # its source ARM, made bidirectional
                                                               # with the mask token, before training

The held-out blocks are rebuilt exactly as `conversion.train` built them (same data, tokenizer,
seq_len, held-out fraction and seed, from `ar2mdm.json`), and scored with
`conversion.objective.heldout_loss` at t in {0.1, 0.3, 0.5, 0.7, 0.9}. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from ar2mdm.diffusion.attention import make_bidirectional
from conversion import (
    _env,  # noqa: F401
    data,
)
from conversion.checkpoints import load_ar
from conversion.mdm import add_mask_token, load_mdm
from conversion.objective import DiffusionOptions, heldout_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mdm", help="an MDM folder written by `ar2mdm convert`")
    ap.add_argument("--baseline", action="store_true", help="score the source ARM before any training")
    ap.add_argument("--blocks", type=int, default=64, help="held-out blocks to score")
    args = ap.parse_args()

    mdm = load_mdm(args.mdm)
    opts = mdm.meta.extra["options"]
    if args.baseline:
        src = load_ar(opts["model"])
        model, tokenizer = src.model, src.tokenizer
        mask_id = add_mask_token(model, tokenizer, opts["mask_token"])
        make_bidirectional(model)
    else:
        model, tokenizer, mask_id = mdm.model, mdm.tokenizer, mdm.meta.mask_id
    packed = data.pack(
        data.load_texts(opts["data"]), tokenizer, seq_len=opts["seq_len"], held_out=opts["held_out"], seed=opts["seed"]
    )
    held = packed.held_out[: args.blocks]
    options = DiffusionOptions(
        noise=opts["noise"],
        schedule=opts["schedule"],
        weighting=opts["weighting"],
        shift=opts["shift"],
        antithetic=opts["antithetic"],
        attention=opts["attention"],
    )
    with torch.no_grad():
        result = heldout_loss(model, held, options, mask_id=mask_id, seed=opts["seed"], vocab_size=len(tokenizer))
    print(
        json.dumps(
            {
                "model": "baseline (source ARM, bidirectional)" if args.baseline else args.mdm,
                "blocks": int(held.shape[0]),
                **result,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
