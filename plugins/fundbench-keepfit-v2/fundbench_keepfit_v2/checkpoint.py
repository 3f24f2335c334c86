"""Checkpoint files: atomic saving, safe loading, strict key checks, model rebuilding.

Two kinds of file, both ``torch.save`` of a plain dict that ``torch.load(weights_only=True)``
can read (tensors, numbers, strings, lists, dicts only -- no pickled code):

* ``last.pt`` (``kind: "training"``): model + optimizer + scheduler + position (stage, step,
  data-order position) + RNG states of every process + config + tokenizer. ``--resume``
  continues from it exactly.
* ``keepfit_v2.pt`` (``kind: "model"``): model weights + config + tokenizer + the ids of the
  datasets it was trained on. What ``fundbench run --weights`` loads.

A released KeepFIT V1 state dict is recognised and refused with a pointer to the
``keepfit_v1`` model, which loads it into V1's own network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fundbench.api.errors import CheckpointError
from fundbench.models.checkpoints import load_strict, read_checkpoint
from fundbench.util.atomic import write_atomic
from fundbench_keepfit_v2.config import Config
from fundbench_keepfit_v2.model import KeepFITV2

FORMAT = "fundbench-keepfit_v2"
VERSION = 1
MODEL = "keepfit_v2"


def save(path: Path, payload: dict) -> Path:
    """Write ``payload`` atomically (a crash never leaves half a file at ``path``)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def read(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; errors become one-line CheckpointErrors."""
    return read_checkpoint(path)


def load_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """Strict load: every key and shape must match (one-line error otherwise)."""
    load_strict(model, state, path, MODEL)


@dataclass
class LoadedModel:
    model: KeepFITV2
    tokenizer: object
    config: Config
    pretraining_datasets: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the network and tokenizer from a keepfit_v2 checkpoint, strictly."""
    from fundbench_keepfit_v2.text import build_bert, wrap_tokenizer

    data = read(path)
    if data.get("format") != FORMAT:
        if "attention.W_q.weight" in data:
            raise CheckpointError(
                f"{path}: a KeepFIT V1 state dict, not a keepfit_v2 "
                "checkpoint; evaluate it with --model keepfit_v1"
            )
        raise CheckpointError(
            f"{path}: not a keepfit_v2 checkpoint (no format={FORMAT!r}); "
            "train one with `fundbench train keepfit_v2`"
        )
    for key in ("config", "bert_config", "tokenizer", "model"):
        if key not in data:
            raise CheckpointError(f"{path}: keepfit_v2 checkpoint lacks {key!r}")
    config = Config.from_dict(data["config"], source=str(path))
    bert = build_bert(data["bert_config"])
    model = KeepFITV2(config, bert)
    load_state(model, data["model"], path)
    tokenizer = wrap_tokenizer(data["tokenizer"], config.text.max_length)
    return LoadedModel(
        model.eval(),
        tokenizer,
        config,
        tuple(data.get("pretraining_datasets", ())),
        {k: data.get(k) for k in ("kind", "summary")},
    )
