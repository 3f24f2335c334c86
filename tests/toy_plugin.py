"""A toy fundbench plugin used by the tests: a tiny CLIP-like model with a text tower.

Images: an 8x8 thumbnail through a fixed random projection. Texts: a bag of words with fixed
random word vectors. It has both towers, so every protocol and adapter runs on it in seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fundbench import Licence, Model, PreprocessConfig, Verification, hookimpl

FUNDBENCH_CONTRACT = "2.0"
DATA_DIR: Path | None = None
DIM = 32
#: the typed registration fields every toy model shares (fundbench.api.spec.ModelSpec)
SPEC = {
    "modalities": ("cfp",),
    "embed_dim": DIM,
    "licence": Licence(code="Apache-2.0", weights="none (generated)", weights_redistributable=True),
    "verification": Verification("native", "a fixture of fundbench's own tests"),
}


def _word_vector(word: str) -> torch.Tensor:
    seed = int(hashlib.sha256(word.lower().strip(".,:").encode()).hexdigest()[:8], 16)
    return torch.from_numpy(np.random.default_rng(seed).normal(size=DIM).astype(np.float32))


class ToyClip(Model):
    name = "toy_clip"
    embed_dim = DIM
    modalities = frozenset({"cfp"})
    pretraining_datasets = ("toy_pretrain",)

    def __init__(self, resolution: int = 16) -> None:
        self.preprocess_config = PreprocessConfig(
            resolution=resolution, mode="stretch", mean=None, std=None
        )
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.randn(3 * 8 * 8, DIM, generator=generator)
        # Tie colour words to the colour channels so zero-shot has something to find.
        colour = {"red": 0, "green": 1, "blue": 2}
        self.colour_vectors = {
            w: self.projection[c * 64 : (c + 1) * 64].mean(0) for w, c in colour.items()
        }
        self.weights_digest = hashlib.sha256(self.projection.numpy().tobytes()).hexdigest()

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        thumb = F.adaptive_avg_pool2d(batch, 8).flatten(1)
        thumb = thumb - thumb.mean(dim=1, keepdim=True)
        return F.normalize(thumb @ self.projection, dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for text in texts:
            words = text.split()
            vec = sum(self.colour_vectors.get(w.strip(".,:"), 0.1 * _word_vector(w)) for w in words)
            out.append(vec)
        return F.normalize(torch.stack(out), dim=-1)


def _broken_factory(**options):
    raise RuntimeError("weights server unreachable")


class ToyRawMeanClip(ToyClip):
    """ToyClip declaring FLAIR's zero-shot convention (raw mean of unit prompt vectors)."""

    zero_shot_prototype = "raw_mean"
    logit_scale = 20.0
    logit_scale_rule = "fixed 20 (toy)"


@hookimpl
def fundbench_register_models(register):
    register("toy_clip", ToyClip, description="toy image-text model for tests", **SPEC)
    register(
        "toy_paper_clip",
        ToyRawMeanClip,
        description="toy model with a paper mode: 12 px, and 20 px for the linear probe",
        paper_options={"resolution": 12},
        paper_protocol_options={"linear_probe": {"resolution": 20}},
        **SPEC,
    )
    register("toy_broken", _broken_factory, description="a model whose factory raises", **SPEC)


@hookimpl
def fundbench_register_datasets(register):
    register(
        "toy_csv",
        {
            "id": "toy_csv",
            "modality": "cfp",
            "classes": ["red", "green", "blue"],
            "format": "csv",
            "prompts": str(Path(__file__).parent / "toy_prompts.yaml"),
            "options": {
                "path": str(DATA_DIR),
                "file": "labels.csv",
                "columns": {"path": "image", "label": "diagnosis", "patient": "patient_id"},
            },
        },
    )
    register(
        "toy_oct",
        {
            "id": "toy_oct",
            "modality": "oct",
            "classes": ["red", "green", "blue"],
            "format": "csv",
            "options": {"path": str(DATA_DIR), "columns": {"path": "image", "label": "diagnosis"}},
        },
    )


@hookimpl
def fundbench_register_tasks(register):
    register(
        "few_shot_quick",
        {
            "name": "few_shot_quick",
            "protocol": "few_shot",
            "shots": [1, 4],
            "seeds": 2,
            "bootstrap": 50,
            "adapters": ["linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f"],
        },
    )


@hookimpl
def fundbench_register_suites(register):
    register(
        "toy",
        {
            "name": "toy",
            "datasets": ["toy_csv", "toy_oct"],
            "tasks": ["zero_shot", "few_shot_quick", "linear_probe"],
        },
    )
    register(
        "toy_paper",
        {
            "name": "toy_paper",
            "paper": True,
            "datasets": ["toy_csv"],
            "tasks": ["zero_shot", "linear_probe"],
        },
    )
