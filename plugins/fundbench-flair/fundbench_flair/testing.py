"""Test fakes for the FLAIR family: released-format checkpoints with random weights, a
Bio_ClinicalBERT-like tokenizer folder (vocab.txt + config.json, no tokenizer_config.json,
like the hub repo), all built locally, and independent reference embeddings computed with
plain torchvision / transformers / tokenizers modules. Used by this plugin's tests, by
KeepFIT's, by the core's fidelity tests and by ``scripts/make-fake-weights.py``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

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


def reference_vision(state: dict, images: torch.Tensor, project: bool = True) -> torch.Tensor:
    """Independent: torchvision ResNet-50 + normalise / linear / normalise by hand."""
    from torchvision.models import resnet50

    trunk = resnet50(weights=None)
    trunk.fc = torch.nn.Identity()
    prefix = "vision_model.model."
    trunk.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        features = trunk.eval()(images)
    if not project:
        return features
    weight = state["vision_model.projection_head_vision.projection.weight"]
    return F.normalize(F.normalize(features, dim=-1) @ weight.T, dim=-1)


def reference_text(state: dict, folder, texts: list[str], max_length: int = 77) -> torch.Tensor:
    """Independent: a transformers BertModel; FLAIR's pooling written out by hand -- mean over
    every position of the padded batch (PAD included) of layers 1, 2 and 12."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**BIO_CLINICALBERT_CONFIG), add_pooling_layer=True)
    prefix = "text_model.model."
    bert.load_state_dict(
        {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and not k.endswith("position_ids")
        },
        strict=False,
    )
    tokenizer = BertWordPieceTokenizer(str(Path(folder) / "vocab.txt"), lowercase=True)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of the batch
    batch = tokenizer.encode_batch(texts)
    enc = {
        "input_ids": torch.tensor([e.ids for e in batch]),
        "attention_mask": torch.tensor([e.attention_mask for e in batch]),
    }
    with torch.no_grad():
        hidden = bert.eval()(**enc, output_hidden_states=True).hidden_states
    pooled = (hidden[1].mean(dim=1) + hidden[2].mean(dim=1) + hidden[12].mean(dim=1)) / 3
    weight = state["text_model.projection_head_text.projection.weight"]
    return F.normalize(F.normalize(pooled, dim=-1) @ weight.T, dim=-1)
