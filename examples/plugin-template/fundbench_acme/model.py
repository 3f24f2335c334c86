"""The ``acme_tiny`` model: a small CNN image encoder (no text tower).

Imported only when the model is built (``plugin.py`` names it as a string), so listing
models never imports torch. Without ``weights=`` the encoder is initialised from a fixed seed
(the same weights, and so the same weights digest, on every build); with ``weights=PATH`` a
state dict is loaded from a ``.safetensors`` or ``torch.save`` file, strictly.

For a real model, replace :class:`AcmeEncoder` with the authors' architecture (same module
and parameter names as their checkpoint), :data:`PREPROCESS` with their evaluation transform,
and the seeded fallback with ``needs_weights=True`` in ``plugin.py`` if the model means
nothing without its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fundbench import Model, PreprocessConfig
from fundbench.models.checkpoints import load_strict, read_checkpoint, unwrap, weights_digest

#: The authors' evaluation transform, value by value (TEMPLATE: the common timm/RETFound one).
#: It composes the same torchvision operations: Resize(int(224 / 0.875) = 256, BICUBIC) on the
#: PIL image, CenterCrop(224), ToTensor, Normalize(mean, std).
PREPROCESS = PreprocessConfig(
    resolution=224,
    mode="center_crop",
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)

EMBED_DIM = 128


class AcmeEncoder(nn.Module):
    """Four conv-BN-ReLU blocks (strides 4, 2, 2, 2), global average pooling, a linear
    projection to ``embed_dim``. About 0.4 M parameters: fast on a CPU."""

    def __init__(self, embed_dim: int = EMBED_DIM, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, width, 7, 4),
            block(width, 2 * width, 3, 2),
            block(2 * width, 4 * width, 3, 2),
            block(4 * width, 8 * width, 3, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(8 * width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.features(x)).flatten(1))


class AcmeTiny(Model):
    """``acme_tiny``: ``AcmeTiny()`` (seeded), ``AcmeTiny(weights="acme_tiny.safetensors")``."""

    name = "acme_tiny"
    embed_dim = EMBED_DIM
    preprocess_config = PREPROCESS

    def __init__(self, weights: str | Path | None = None, seed: int = 0) -> None:
        # a private RNG stream: the seeded weights are the same on every build, and the
        # caller's global torch RNG state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = AcmeEncoder()
        if weights is not None:
            # read_checkpoint: safetensors, or torch.load(weights_only=True) (no pickled code
            # runs); unwrap: the state dict inside {"model": ...} or {"state_dict": ...};
            # load_strict: any missing, unexpected or mis-shaped key is one error line naming
            # the file and the first offending keys
            state = unwrap(read_checkpoint(weights), weights)
            load_strict(self.encoder, state, weights, self.name)
            # the SHA-256 of the file: it keys the feature cache and every result record
            self.weights_digest = weights_digest(weights)
        else:
            self.name = self.name if seed == 0 else f"acme_tiny[seed={seed}]"
            # None: fundbench computes the digest from the state dict (seeded weights)
            self.weights_digest = None
        # eval mode: BatchNorm uses its running statistics, so each image embeds the same
        # alone and in a batch
        self.encoder.eval()

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """A preprocessed batch [N, 3, 224, 224] -> embeddings [N, 128]."""
        return self.encoder(batch)

    # No encode_texts: acme_tiny has no text tower, so zero-shot cells are reported as
    # "not applicable". A CLIP-like model implements encode_texts(texts) -> [N, embed_dim]
    # in the image space (and sets logit_scale / zero_shot_prototype as its authors do).
