"""LoRA conversion: train low-rank adapters (and the mask token's embedding row) instead of every
weight, then merge them, so that a 7B conversion fits one GPU and still writes an ordinary MDM.

`--lora r=8,alpha=16,targets=q_proj,k_proj,v_proj,o_proj,dropout=0.05` (TrainConfig.lora; ""
trains every weight) is parsed by `parse_lora` into a `LoraSpec`. `attach_lora` wraps the source
model, after it got its mask token, with peft (`get_peft_model` and a `LoraConfig`):

* every target linear layer y = W x keeps W frozen and learns y = W x + (alpha / r) B A x, with
  A [r, d_in] (Kaiming-uniform init) and B [d_out, r] (zeros: the wrapped model starts as the
  source exactly). Targets are leaf module names (`q_proj`) or dotted suffixes
  (`self_attn.q_proj`); none given means every linear layer of the decoder except the LM head
  (peft's "all-linear").
* the embedding row of the mask token is trained too (peft's `trainable_token_indices`: a [1,
  d_model] parameter that replaces that row in the forward pass). It is the one row a LoRA
  conversion cannot do without: `mdm.add_mask_token` initialises it to the mean of the other
  rows, and the frozen embedding could never teach the network that this token means
  "unknown". Every other row stays frozen: those tokens already mean what they meant to the
  ARM. With a tied LM head (SmolLM2, GPT-2) the head's mask row is the same trained row (peft
  ties the two); an untied head's mask row stays at its mean initialisation: the mask is never
  a target of the loss, so that row only enters the softmax's normaliser.

The adapters train through the one training loop like any weights (`conversion.train`): DDP
reduces their gradients, FSDP2 shards them with the frozen weights of their decoder layer.
Checkpoints hold what training changes: the adapter and mask-row parameters and their optimizer
state (`runfolder.save_checkpoint` keeps the parameters that require a gradient whenever some do
not); the frozen weights are rebuilt from the source on resume, which is deterministic (the
source's weights, the mean mask row, adapters seeded by `derive_seed(seed, "lora")` and then
overwritten by the checkpoint's).

Merged on save: `Adapters.merged` turns the gathered state dict of the wrapped model into the
plain model's (W + (alpha / r) B A per target; the mask row written into the embedding), so an
MDM folder and its snapshots are ordinary (`checkpoints.load_any`, probes and samplers see a plain
model) while the training model keeps its adapters and keeps training. `ar2mdm.json` records the
settings and the trainable-parameter count under `extra["lora"]`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.seeding import derive_seed

# peft and transformers are imported inside the functions that wrap or merge a model: parsing the
# option (`TrainConfig.validate`, the CLI) must not pay seconds of imports for them.

ADAPTER = "default"  # peft's name of the one adapter
ALL_LINEAR = "all-linear"
KEYS = ("r", "alpha", "targets", "dropout")
_EXAMPLE = "e.g. --lora r=8,alpha=16,targets=q_proj,k_proj,v_proj,o_proj"
_PREFIX = "base_model.model."  # where peft puts the wrapped model's names


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA setting. r: adapter rank (>= 1). alpha: scale numerator (the update is alpha / r x
    B A; default 2 r). targets: leaf names or dotted suffixes of the linear layers to adapt, or
    None for every linear layer of the decoder but the LM head. dropout: dropout on the adapters'
    input, in [0, 1)."""

    r: int
    alpha: float
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0

    def text(self) -> str:
        """The canonical --lora string (the same setting always reads the same, for resume checks).

        >>> parse_lora("alpha=16,r=8").text()
        'r=8,alpha=16,dropout=0,targets=all-linear'
        """
        targets = ",".join(self.targets) if self.targets else ALL_LINEAR
        return f"r={self.r},alpha={_short(self.alpha)},dropout={_short(self.dropout)},targets={targets}"


def _short(x: float) -> str:
    """A float as the shortest text that reads back the same (16.0 -> "16", 0.05 -> "0.05")."""
    return str(int(x)) if x.is_integer() else repr(x)


def parse_lora(text: str) -> LoraSpec | None:
    """Parse a --lora string ("" or only spaces: None, full fine-tuning).

    Comma-separated key=value pairs of r (required), alpha, dropout and targets; the value of
    targets runs on over the following items that hold no "=" (targets=q_proj,v_proj,dropout=0).
    "targets=all-linear" is the default.

    >>> parse_lora("r=4,targets=q_proj,v_proj")
    LoraSpec(r=4, alpha=8.0, targets=('q_proj', 'v_proj'), dropout=0.0)

    Raises UserError for an item that is not key=value, an unknown or repeated key, a missing r,
    and bad values (r < 1, alpha <= 0, dropout outside [0, 1), an empty target name).
    """
    if not text.strip():
        return None
    values: dict[str, list[str]] = {}
    last = None
    for item in (part.strip() for part in text.split(",")):
        if "=" not in item:
            if last != "targets" or not item:
                raise UserError(f"--lora {text!r}: {item!r} is not key=value; {_EXAMPLE}.")
            values["targets"].append(item)
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in KEYS:
            raise UserError(f"--lora {text!r}: unknown key {key!r}; the keys are {', '.join(KEYS)} ({_EXAMPLE}).")
        if key in values:
            raise UserError(f"--lora {text!r}: {key} is given twice.")
        values[key], last = [value], key
    if "r" not in values:
        raise UserError(f"--lora {text!r} has no r (the adapter rank); {_EXAMPLE}.")
    r = _number(text, "r", values["r"][0], int)
    if r < 1:
        raise UserError(f"--lora {text!r}: r (the adapter rank) must be an integer >= 1, got {r}.")
    alpha = _number(text, "alpha", values["alpha"][0], float) if "alpha" in values else 2.0 * r
    if not (alpha > 0 and math.isfinite(alpha)):
        raise UserError(f"--lora {text!r}: alpha must be a positive number, got {alpha}.")
    dropout = _number(text, "dropout", values["dropout"][0], float) if "dropout" in values else 0.0
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--lora {text!r}: dropout must be in [0, 1), got {dropout}.")
    targets = tuple(values.get("targets", [ALL_LINEAR]))
    if any(not t for t in targets):
        raise UserError(f"--lora {text!r}: a target is empty; name linear layers such as q_proj,v_proj.")
    return LoraSpec(r=r, alpha=alpha, targets=None if targets == (ALL_LINEAR,) else targets, dropout=dropout)


def _number(text: str, key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"--lora {text!r}: {key} must be {what}, got {value!r}.") from None


def linear_layers(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers LoRA may adapt: every nn.Linear / Conv1D but the LM head."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    ]


def _linear_dims(module: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (whose weight is [in, out])."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return int(module.weight.shape[0]), int(module.weight.shape[1])


def check_rank(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Raise UserError when `spec.r` is at or above the smaller dimension of a layer it targets.

    An adapter of rank r on a [d_out, d_in] weight is low-rank only while r < min(d_in, d_out):
    at that rank B A already spans every update of the weight, and it trains r (d_in + d_out)
    parameters, more than the weight itself holds. The message names the narrowest target and
    the largest useful rank (its smaller dimension - 1).
    """
    modules = dict(model.named_modules())
    names = linear_layers(model)
    if spec.targets:
        names = [n for n in names if any(n == t or n.endswith("." + t) for t in spec.targets)]
    if not names:
        return
    dims = {name: _linear_dims(modules[name]) for name in names}
    narrowest = min(dims, key=lambda n: min(dims[n]))
    d_in, d_out = dims[narrowest]
    smaller = min(d_in, d_out)
    if spec.r >= smaller:
        raise UserError(
            f"--lora r={spec.r} is not below the smaller dimension of target layer {narrowest} ({d_in} in, "
            f"{d_out} out): an adapter of that rank is no longer low-rank and trains more parameters than the "
            f"layer holds. The largest useful rank here is {smaller - 1}: pass r={smaller - 1} or less, or "
            "leave that layer out of targets=, or train every weight (no --lora)."
        )


def _check_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    """Raise UserError for a target that names no linear layer of `model` (the message lists them)."""
    names = linear_layers(model)
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
            raise UserError(
                f"--lora target {target!r} matches no linear layer of {type(model).__name__}; its linear layers "
                f"are {', '.join(leaves)} (the LM head cannot be a target)."
            )


@dataclass(frozen=True)
class Adapters:
    """The LoRA of a run: its `spec`, the mask row it trains, and what merging must give back.

    plain_keys: the state-dict names of the model before wrapping (tied aliases dropped), which a
    merged state dict must have exactly. trainable: parameters trained (adapters and the mask
    row); total: parameters of the plain model (what a full conversion trains). targets: the leaf
    names of the adapted layers.
    """

    spec: LoraSpec
    mask_id: int
    plain_keys: frozenset[str]
    trainable: int
    total: int
    targets: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """What ar2mdm.json keeps under extra["lora"]."""
        return {
            "r": self.spec.r,
            "alpha": self.spec.alpha,
            "dropout": self.spec.dropout,
            "targets": list(self.targets),
            "trained_embedding_rows": [self.mask_id],
            "trainable_params": self.trainable,
            "total_params": self.total,
        }

    def merged(
        self, model: torch.nn.Module, state_dict: dict[str, Shaped[Tensor, "*_shape"]]
    ) -> tuple[torch.nn.Module, dict[str, Shaped[Tensor, "*_shape"]]]:
        """(the plain HF model under `model`, its state dict with the adapters merged in).

        model: the wrapped model (a peft PeftModel, unwrapped from DDP); state_dict: its full state
        dict, gathered (`get_model_state_dict`). Each target's weight becomes W + (alpha / r) B A
        (transposed for GPT-2's Conv1D, as peft merges), the embedding's mask row becomes the
        trained row. New tensors throughout: the training model and `state_dict` are not changed.
        Raises RuntimeError if the result lacks a weight of the plain model (a naming of peft's
        that this code does not know).
        """
        from peft.tuners.lora import LoraLayer
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
        from peft.utils.other import transpose

        plain = {_plain_name(k): v for k, v in state_dict.items() if ".lora_" not in k and "trainable_tokens_" not in k}
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                key = _plain_name(f"{name}.base_layer.weight")
                a, b = state_dict[f"{name}.lora_A.{ADAPTER}.weight"], state_dict[f"{name}.lora_B.{ADAPTER}.weight"]
                delta = transpose(b.float() @ a.float(), module.fan_in_fan_out) * module.scaling[ADAPTER]
                plain[key] = (plain[key].float() + delta).to(plain[key].dtype)
            elif isinstance(module, TrainableTokensLayer) and module.tied_adapter is None:
                key = _plain_name(f"{name}.base_layer.weight")
                rows = torch.tensor(module.token_indices[ADAPTER])
                values = state_dict[f"{name}.trainable_tokens_delta.{ADAPTER}"]
                plain[key] = plain[key].index_copy(0, rows, values.to(plain[key].dtype))
        merged = {k: v for k, v in plain.items() if k in self.plain_keys}
        if merged.keys() != self.plain_keys:  # a peft naming this module does not know
            raise RuntimeError(f"merging LoRA lost weights: {sorted(self.plain_keys - merged.keys())[:5]}")
        return model.get_base_model(), merged


def _plain_name(key: str) -> str:
    """The plain model's name of a wrapped model's state-dict key."""
    return key.removeprefix(_PREFIX).replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")


def attach_lora(
    model: torch.nn.Module, spec: LoraSpec | None, mask_id: int, seed: int
) -> tuple[torch.nn.Module, Adapters | None]:
    """Wrap `model` (with its mask token) for LoRA training; (model, None) as is when spec is None.

    Every base weight is frozen; the adapters of the targets and the embedding row `mask_id`
    train (see the module docstring). The adapters' random init is seeded by (seed, "lora") and
    leaves the global torch RNG as it was. Raises UserError when a target matches no linear layer,
    or when the rank is at or above a target's smaller dimension (`check_rank`).
    """
    if spec is None:
        return model, None
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers.pytorch_utils import Conv1D

    if spec.targets:
        _check_targets(model, spec.targets)
    check_rank(model, spec)
    named = dict(model.named_parameters())
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - named.keys()
    plain_keys = frozenset(model.state_dict()) - aliases
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets) if spec.targets else ALL_LINEAR,
        trainable_token_indices=[mask_id],
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),  # GPT-2's transposed layers
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft asks transformers a deprecated question; the user can do nothing about it
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        torch.manual_seed(derive_seed(seed, "lora"))
        wrapped = get_peft_model(model, config)
    parameters = dict(wrapped.named_parameters())
    targets = sorted({name.rsplit(".", 1)[-1] for name, m in wrapped.named_modules() if isinstance(m, LoraLayer)})
    return wrapped, Adapters(
        spec=spec,
        mask_id=mask_id,
        plain_keys=plain_keys,
        trainable=sum(p.numel() for p in parameters.values() if p.requires_grad),
        total=sum(p.numel() for p in named.values()),
        targets=tuple(targets),
    )
