"""What a checkpoint must carry to be used right, and the one rule for where to read a prediction.

Every model the toolkit handles comes with a `ModelMeta`. For an AR checkpoint it is derived at
load time; for an MDM it is stored beside the weights as `ar2mdm.json`. The single most important
field is `shift`: with shift on (every ARM, and MDMs converted DiffuLLaMA/Dream-style) the
prediction for the token at position i is read from the logits at position i - 1; with shift off
(LLaDA/MDLM-style) it is read at position i itself. `read_positions` is the only place that rule
lives: tasks, samplers, metrics and probes all call it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from conversion.errors import CheckpointError

META_FILE = "ar2mdm.json"


@dataclass
class ModelMeta:
    """Metadata of a loaded checkpoint.

    kind: "ar" (causal, next-token) or "mdm" (bidirectional, fills masked positions).
    source: where the weights came from (a name such as "smollm2", a path).
    source_hash: sha256 of the source's weight files (empty when unknown).
    family: the HF `model_type` (llama, qwen2, gpt2, ...).
    shift: True if logits at i predict token i + 1 (always True for kind "ar").
    mask_id: the mask token id (MDM only).
    noise / schedule / block_size: the diffusion objective the MDM was trained with.
    extra: anything else a producer wants to record (steps, tokens seen, training options).
    """

    kind: Literal["ar", "mdm"] = "ar"
    source: str = ""
    source_hash: str = ""
    family: str = ""
    shift: bool = True
    mask_id: int | None = None
    noise: str | None = None
    schedule: str | None = None
    block_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / META_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ModelMeta:
        path = Path(folder) / META_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} does not exist: this folder is not an ar2mdm checkpoint.") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged.") from None
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise CheckpointError(
                f"{path} has unknown fields {sorted(unknown)}: it was written by a newer ar2mdm; upgrade."
            )
        return cls(**raw)


def read_positions(answer_positions: torch.Tensor | int, shift: bool) -> torch.Tensor | int:
    """Logit positions that predict the tokens at `answer_positions`.

    >>> read_positions(torch.tensor([5, 6]), shift=True).tolist()
    [4, 5]
    >>> read_positions(5, shift=False)
    5
    """
    return answer_positions - 1 if shift else answer_positions
