"""``keepfit_v1``: KeepFIT V1 (MM-Retinal, MICCAI 2024) from its released state dicts.

V1 is FLAIR's network plus one knowledge-transfer attention module (keepfit.md section 3).
The released ``KeepFIT (flair+MM).pth`` files are a raw ``state_dict`` of ``KeepFITModel``;
they load strictly here. The attention module only shapes training, so embeddings come from
the FLAIR part, with V1's preprocessing (512 px canvas, [0, 1], no crop) and its prompt
template "A fundus photograph of {}". V1 tokenises up to 256 tokens (FLAIR: 77).
Registered by :mod:`fundbench_keepfit_v2.plugin_v1`.
"""

from __future__ import annotations

from fundbench_flair.family import FlairFamilyModel
from fundbench_flair.network import FLAIRNetwork
from fundbench_flair.plugin import FLAIR_PRETRAINING

from fundbench_keepfit_v2.model import MultiHeadAttention

#: V1's attention: 512-d, 2 heads, dropout 0.5, bias-free W_q/W_k/W_v/W_o (keepfit.md s. 3).
ATTENTION_HEADS, ATTENTION_DROPOUT = 2, 0.5


class KeepFITV1Network(FLAIRNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(512, ATTENTION_HEADS, ATTENTION_DROPOUT)


class KeepFITV1Model(FlairFamilyModel):
    """KeepFIT V1 embeddings: 512-d projected, L2-normalised image and text vectors.
    V1 never crops the foreground (it predates FLAIR's crop), also in paper mode; the
    option stays available."""

    family_name = "keepfit_v1"
    network_cls = KeepFITV1Network
    max_length = 256
    #: KeepFIT's LoadImage reads np.array(Image.open(path)) without convert('RGB')
    reader = "keepfit_array"
    pretraining_datasets = (*FLAIR_PRETRAINING, "MM-Retinal")
    modalities = frozenset({"cfp"})
