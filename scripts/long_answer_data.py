"""Write a long-answer task (copy / reverse / sort of N words) as train and held-out JSONL files.

    python scripts/long_answer_data.py --op copy --length 32 --out runs/long-answer \
        [--tokenizer organism] [--train 20000] [--eval 200]

Words are kept to single tokens under the tokenizer (the organism's by default), so answers are
`--length` tokens. Train and held-out sets come from different seeds. Then, for example:

    ar2mdm convert --model organism --sft --data runs/long-answer/copy-train.jsonl ...
    python -m benchmarks.bench_parallel --mdm runs/organism-mdm-copy --task runs/long-answer/copy-eval.jsonl
"""

from __future__ import annotations

import argparse

from ar2mdm.tasks.sequences import OPS, sequence_examples, write_jsonl
from conversion.checkpoints import load_ar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", default="copy", choices=OPS)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--tokenizer", default="organism", help="AR source whose tokenizer the words must fit")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--out", default="runs/long-answer")
    args = ap.parse_args()
    tok = load_ar(args.tokenizer).tokenizer
    for split, n, seed in (("train", args.train, 1), ("eval", args.eval, 2)):
        exs = sequence_examples(args.op, n, length=args.length, seed=seed, tokenizer=tok)
        path = write_jsonl(exs, f"{args.out}/{args.op}-{split}.jsonl")
        print(
            f"{path}: {len(exs)} examples, answer {len(tok(exs[0].answer, add_special_tokens=False)['input_ids'])} tokens"
        )


if __name__ == "__main__":
    main()
