"""Checkpoint files: atomic saving, safe loading, strict key checks, model rebuilding.

Two kinds of file, both ``torch.save`` of a plain dict that ``torch.load(weights_only=True)``
can read (tensors, numbers, strings, lists, dicts only -- no pickled code):

* ``last.pt`` (``kind: "training"``): model + optimizer + scheduler + position (stage, step,
  data-order position) + RNG states of every process + config + tokenizer. ``--resume``
  continues from it exactly.
* ``keepfit_v2.pt`` (``kind: "model"``): model weights + config + tokenizer + the ids of the
  datasets it was trained on. What ``fundbench run --weights`` loads.

A plain V1 state dict (the released KeepFIT V1 ``.pth`` files) also loads: its keys are the
V1 subset of ours (keepfit.md section 3); the caption decoder and MLM head are then left
untrained, which does not affect embeddings.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fundbench_keepfit_v2.config import Config, paper_preset
from fundbench_keepfit_v2.model import OWN_PREFIXES, KeepFITV2

from fundbench.atomic import write_atomic
from fundbench.errors import CheckpointError

FORMAT = "fundbench-keepfit_v2"
VERSION = 1
#: Buffer written by transformers < 4.31 (the V1/FLAIR release files); harmless to drop.
LEGACY_BUFFERS = ("text_model.model.embeddings.position_ids",)
#: Bio_ClinicalBERT's architecture (flair.md section 1.2), to rebuild V1 files without
#: downloading anything.
BIO_CLINICALBERT_CONFIG = {
    "vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def save(path: Path, payload: dict) -> Path:
    """Write ``payload`` atomically (a crash never leaves half a file at ``path``)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def read(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; errors become one-line CheckpointErrors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safe checkpoint ({first[:200]}); only "
                              "files of tensors and plain containers are accepted") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
    return data


def check_keys(model: torch.nn.Module, state: dict, path: str | Path,
               optional_prefixes: tuple[str, ...] = ()) -> None:
    """Strict key and shape check with a one-line error naming the file and the keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in state
             if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape (e.g. {'; '.join(wrong[:3])})")
        raise CheckpointError(f"{path}: state dict does not match the keepfit_v2 model: "
                              + "; ".join(parts))


def load_state(model: torch.nn.Module, state: dict, path: str | Path,
               optional_prefixes: tuple[str, ...] = ()) -> None:
    state = {k: v for k, v in state.items() if k not in LEGACY_BUFFERS}
    check_keys(model, state, path, optional_prefixes)
    model.load_state_dict(state, strict=not optional_prefixes)


@dataclass
class LoadedModel:
    model: KeepFITV2
    tokenizer: object
    config: Config
    pretraining_datasets: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the network and tokenizer from any checkpoint kind, strictly."""
    from fundbench_keepfit_v2.text import build_bert, wrap_tokenizer

    data = read(path)
    if data.get("format") != FORMAT:
        if all(isinstance(v, torch.Tensor) for v in data.values()):
            return _load_v1(data, path)
        raise CheckpointError(f"{path}: not a keepfit_v2 checkpoint (no format={FORMAT!r}) "
                              "and not a plain V1 state dict")
    for key in ("config", "bert_config", "tokenizer", "model"):
        if key not in data:
            raise CheckpointError(f"{path}: keepfit_v2 checkpoint lacks {key!r}")
    config = Config.from_dict(data["config"], source=str(path))
    bert = build_bert(data["bert_config"])
    model = KeepFITV2(config, bert)
    load_state(model, data["model"], path)
    tokenizer = wrap_tokenizer(data["tokenizer"], config.text.max_length)
    return LoadedModel(model.eval(), tokenizer, config,
                       tuple(data.get("pretraining_datasets", ())),
                       {k: data.get(k) for k in ("kind", "summary")})


def _load_v1(state: dict, path: str | Path) -> LoadedModel:
    """A released KeepFIT V1 state dict: paper architecture, Bio_ClinicalBERT tokenizer."""
    from fundbench_keepfit_v2.text import build_bert, load_pretrained

    config = paper_preset()
    model = KeepFITV2(config, build_bert(BIO_CLINICALBERT_CONFIG))
    load_state(model, state, path, optional_prefixes=OWN_PREFIXES)
    tokenizer, _ = load_pretrained(config, weights=False)
    return LoadedModel(model.eval(), tokenizer, config, (), {"kind": "v1"})
