"""The ``random_init`` model: a randomly initialised timm ResNet with a fixed seed.

Imported only when the model is built (``plugin.py`` registers it by name), so listing
models never imports torch or timm.
"""

from __future__ import annotations

import timm
import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.model import state_dict_digest


class RandomInitModel(Model):
    def __init__(
        self, arch: str = "resnet18", seed: int = 0, resolution: int = 224, device: str = "cpu"
    ) -> None:
        torch.manual_seed(seed)
        self.encoder = timm.create_model(arch, pretrained=False, num_classes=0).eval()
        self.name = f"random_init[{arch},seed={seed}]"
        self.embed_dim = self.encoder.num_features
        self.preprocess_config = PreprocessConfig(
            resolution=resolution, mode="center_crop", crop_pct=0.875
        )
        self.weights_digest = state_dict_digest(self.encoder)
        self.to(device)

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch)
