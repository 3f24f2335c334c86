"""Test fakes for the FLAIR family: released-format checkpoints with random weights and a
Bio_ClinicalBERT-like tokenizer folder (vocab.txt + config.json, no tokenizer_config.json,
like the hub repo), all built locally."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from fundbench_flair.network import BIO_CLINICALBERT_CONFIG, FLAIRNetwork

WORDS = (
    "a fundus photograph of no diabetic retinopathy mild moderate severe proliferative "
    "glaucoma normal healthy optic disc cup lesion macula red dots few small many with and "
    "without signs the retina colour showing image retinal haemorrhages exudates"
).split()


def write_bert_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {**BIO_CLINICALBERT_CONFIG, "model_type": "bert", "architectures": ["BertModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(special + WORDS + ["##s", "##ing", ","]) + "\n")
    return folder


def random_state(network_cls=FLAIRNetwork, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the released key names and shapes; BN statistics and logit_scale are
    randomised too, so a loader that skips them is caught."""
    torch.manual_seed(seed)
    state = network_cls().state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
    state["logit_scale"] = torch.tensor(3.9)
    return state


def with_position_ids(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2023 file's extra buffer (transformers < 4.31)."""
    return {**state, "text_model.model.embeddings.position_ids": torch.arange(512)[None]}
