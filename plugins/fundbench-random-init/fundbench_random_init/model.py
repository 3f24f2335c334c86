"""The ``random_init`` model: a randomly initialised timm ResNet with a fixed seed.

Imported only when the model is built (``plugin.py`` registers it by name), so listing
models never imports torch or timm.
"""

from __future__ import annotations

import timm
import torch

from fundbench import Model, PreprocessConfig
from fundbench.api.model import state_dict_digest
from fundbench.api.preprocess import IMAGENET_MEAN, IMAGENET_STD


class RandomInitModel(Model):
    """timm ``arch`` with ``pretrained=False`` under ``torch.manual_seed(seed)``, in eval mode
    and without gradients. Built on the CPU; the host moves it (``device`` is only a
    convenience for direct callers)."""

    def __init__(
        self, arch: str = "resnet18", seed: int = 0, resolution: int = 224, device: str = "cpu"
    ) -> None:
        torch.manual_seed(seed)
        self.arch = arch
        self.encoder = timm.create_model(arch, pretrained=False, num_classes=0)
        self.encoder.eval().requires_grad_(False)  # inference only: no autograd graphs
        self.name = f"random_init[{arch},seed={seed}]"
        self.embed_dim = int(self.encoder.num_features)
        # fundbench's choice (there are no authors): 0.875 centre crop, bicubic, ImageNet
        self.preprocess_config = PreprocessConfig(
            resolution=resolution,
            mode="center_crop",
            crop_pct=0.875,
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        # generated weights: the digest of the state dict itself (same seed, same digest)
        self.weights_digest = state_dict_digest(self.encoder)
        self.to(device)

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch)

    def trainable_image_module(self, *, drop_path_rate: float = 0.0) -> torch.nn.Module:
        """The same timm ``arch`` built anew with ``drop_path_rate`` (timm's ResNets apply
        stochastic depth per residual block) holding a copy of these weights: fine-tuning
        never touches :attr:`encoder`. timm's ``group_matcher`` gives its lr-decay layers."""
        with torch.random.fork_rng(devices=[]):  # the draw is overwritten: leave the RNG be
            module = timm.create_model(
                self.arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate
            )
        module.load_state_dict(self.encoder.state_dict())
        return module.train().requires_grad_(True)
