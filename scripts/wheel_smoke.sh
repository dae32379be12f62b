#!/usr/bin/env bash
# ar2mdm as an installed package, away from the repository: build the wheel and the sdist
# (python -m build), install the wheel into a new virtual environment, and from a folder outside
# the repository run the command line, import the public names the README shows, load a plugin
# through AR2MDM_PLUGINS, and sample from a tiny model. The new environment reuses the
# dependencies already installed in .venv (a .pth line), so the check takes seconds, not an install.
# Usage (from the project root, after `make install`): bash scripts/wheel_smoke.sh [--study] [--notebooks]
#   --study      also runs `ar2mdm study --quick` from the installed package (about 2-5 minutes);
#   --notebooks  also executes every notebook, copied outside the repository, with the installed
#                package as the kernel's ar2mdm (about 8 minutes on 2 cores; CI runs this).
set -euo pipefail
study=0 notebooks=0
for arg in "$@"; do
    case $arg in
        --study) study=1 ;;
        --notebooks) notebooks=1 ;;
        *) echo "wheel_smoke.sh: unknown option $arg (use --study and/or --notebooks)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
repo=$PWD
py="$repo/.venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls "$work/dist"
python3 -m venv "$work/venv"
purelib=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
deps=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" >"$purelib/ar2mdm-reuse-dependencies.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$work"/dist/ar2mdm-*.whl

mkdir -p "$work/outside"
cd "$work/outside"
export AR2MDM_CACHE="$work/cache"
bin="$work/venv/bin"
"$bin/ar2mdm" --help >/dev/null
"$bin/python" - "$repo" <<'EOF'
import sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
import analyses, ar2mdm, conversion, probe  # noqa: E401
from analyses.compare import CompareOptions, compare, write_report  # noqa: F401  (README names)
from ar2mdm.sampling import build_sampler  # noqa: F401
from ar2mdm.tasks import get_task, render  # noqa: F401
from ar2mdm.tasks.evaluate import logit_metrics  # noqa: F401
from conversion.checkpoints import load_ar  # noqa: F401
from probe import ProbedModel  # noqa: F401

for module in (analyses, ar2mdm, conversion, probe):
    where = Path(module.__file__).resolve()
    assert repo not in where.parents, f"{module.__name__} was imported from the repository: {where}"
print("imported from", Path(ar2mdm.__file__).resolve().parents[1])
EOF
# a plugin from outside the tree (AR2MDM_PLUGINS): a task the CLI then lists
cat >"$work/outside/my_plugin.py" <<'EOF'
from ar2mdm.tasks.induction import InductionTask


class EchoTask(InductionTask):
    name = "echo-smoke"
EOF
listed=$(AR2MDM_PLUGINS="$work/outside/my_plugin.py" "$bin/ar2mdm" eval --help)
grep -q "echo-smoke" <<<"$listed" || { echo "the plugin's task is not listed by the installed ar2mdm"; exit 1; }
# a tiny model, sampled by the installed command
"$bin/python" - "$work/tiny" <<'EOF'
import sys

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

words = "When Mary and John went to the store gave a drink to".split()
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
LlamaForCausalLM(config).save_pretrained(sys.argv[1])
fast.save_pretrained(sys.argv[1])
EOF
"$bin/ar2mdm" sample --model "$work/tiny" --sampler ar --prompt "When Mary" --max-new-tokens 3 >/dev/null
if ((study)); then
    "$bin/ar2mdm" study --quick --out "$work/outside/study"
    test -s "$work/outside/study/report.html"
fi
if ((notebooks)); then
    # the notebooks and their helper, copied away from the repository; the kernel is the new venv's python
    mkdir -p "$work/outside/notebooks"
    cp "$repo"/notebooks/*.ipynb "$repo"/notebooks/_models.py "$work/outside/notebooks/"
    "$bin/python" "$repo/scripts/notebooks.py" --run "$work/outside/notebooks" --outside "$repo"
fi
echo "wheel smoke: ok ($(ls "$work/dist" | tr '\n' ' '))"
