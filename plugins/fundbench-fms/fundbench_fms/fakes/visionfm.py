"""Fake VisionFM releases: the full iBOT training checkpoint that upstream ``main_pretrain.py``
writes every epoch and the README publishes as ``VFM_<Modality>_weights.pth`` (ref. §5), with
the real key names and shapes and random values. Nothing is downloaded.

Container (upstream main_pretrain.py ``save_dict``)::

    {'student':     161 tensors: module.backbone.* (150 + masked_embed), module.head.* (10),
     'teacher':     160 tensors: backbone.* (150), head.* (10),
     'optimizer':   AdamW state dict (moments for a few tensors only: the size is not real),
     'epoch':       int,
     'args':        argparse.Namespace,
     'ibot_loss':   {'center': [1, 8192], 'center2': [1, 1, 8192]},
     'fp16_scaler': GradScaler state dict}

The student is stored at full size with its own random values (a file of ~0.75 GB): the
loader must read the teacher, and a student with different values is what shows it does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fundbench_fms.fakes import adamw_state, random_tensors, shapes_of, timm_shapes, training_args

__all__ = [
    "HEAD_HIDDEN",
    "OUT_DIM",
    "ibot_head_shapes",
    "student_state",
    "teacher_state",
    "visionfm_checkpoint",
    "write_visionfm_release",
]

#: iBOT head sizes (ref. §5; upstream models/head.py DINOHead defaults nlayers 3, hidden_dim
#: 2048, bottleneck_dim 256; main_pretrain.py ``--out_dim 8192`` as in the README's command)
HEAD_HIDDEN, HEAD_BOTTLENECK, OUT_DIM = 2048, 256, 8192


def ibot_head_shapes(width: int = 768) -> dict[str, tuple[int, ...]]:
    """The 10 tensors of a shared iBOT head (``--shared_head true`` in the README's command):
    MLP ``mlp.0``/``mlp.2``/``mlp.4`` (GELU between) and the weight-normed last layer, whose
    module is also ``last_layer2``, so the state dict names its two tensors twice."""
    with torch.device("meta"):
        mlp = nn.Sequential(
            nn.Linear(width, HEAD_HIDDEN),
            nn.GELU(),
            nn.Linear(HEAD_HIDDEN, HEAD_HIDDEN),
            nn.GELU(),
            nn.Linear(HEAD_HIDDEN, HEAD_BOTTLENECK),
        )
        with warnings.catch_warnings():  # the legacy API upstream used (weight_g / weight_v)
            warnings.simplefilter("ignore")
            last = nn.utils.weight_norm(nn.Linear(HEAD_BOTTLENECK, OUT_DIM, bias=False))
    shapes = {f"mlp.{k}": s for k, s in shapes_of(mlp).items()}
    for name in ("last_layer", "last_layer2"):
        shapes.update({f"{name}.{k}": s for k, s in shapes_of(last).items()})
    return shapes


def teacher_state(seed: int = 11) -> dict[str, torch.Tensor]:
    """``ckpt['teacher']``: ``backbone.`` + timm vit_base_patch16_224 (150) and ``head.`` (10).
    As in a real shared head, ``last_layer2.*`` are the same tensors as ``last_layer.*``."""
    from fundbench_fms.models.visionfm import ARCH

    backbone = random_tensors(timm_shapes(ARCH), seed)
    head_shapes = {k: s for k, s in ibot_head_shapes().items() if not k.startswith("last_layer2")}
    head = random_tensors(head_shapes, seed + 1)
    head["last_layer.weight_g"] = torch.ones(OUT_DIM, 1)  # filled with 1 and frozen upstream
    for leaf in ("weight_g", "weight_v"):
        head[f"last_layer2.{leaf}"] = head[f"last_layer.{leaf}"]
    return {
        **{f"backbone.{k}": v for k, v in backbone.items()},
        **{f"head.{k}": v for k, v in head.items()},
    }


def student_state(seed: int = 21) -> dict[str, torch.Tensor]:
    """``ckpt['student']``: the DDP-wrapped student (``module.``), with the ``masked_embed``
    token of masked image modelling ([1, 768]; upstream VisionTransformer) — 161 tensors."""
    state = teacher_state(seed)
    out = {f"module.{k}": v for k, v in state.items()}
    gen = torch.Generator().manual_seed(seed + 2)
    out["module.backbone.masked_embed"] = torch.randn(1, 768, generator=gen) * 0.02
    return out


def visionfm_checkpoint(modality: str = "Fundus", seed: int = 11) -> dict:
    """The whole ``save_dict`` of upstream main_pretrain.py for a ViT-B/16 run."""
    teacher = teacher_state(seed)
    student = student_state(seed + 10)
    trained = {k: v for k, v in student.items() if not k.endswith("weight_g")}
    args = training_args(
        arch="vit_base",
        patch_size=16,
        input_size=224,
        modality=modality,
        out_dim=OUT_DIM,
        patch_out_dim=OUT_DIM,
        shared_head=True,
        shared_head_teacher=True,
        norm_last_layer=True,
        use_masked_im_modeling=True,
        use_fp16=True,
        epochs=400,
        batch_size_per_gpu=128,
        lr=0.0005,
        output_dir="./results",
        load_pretrain=True,
    )
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": adamw_state(trained),
        "epoch": 400,
        "args": args,
        "ibot_loss": {"center": torch.zeros(1, OUT_DIM), "center2": torch.zeros(1, 1, OUT_DIM)},
        "fp16_scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 0,
        },
    }


def write_visionfm_release(path: str | Path, seed: int = 11, modality: str = "Fundus") -> Path:
    """A fake ``VFM_<modality>_weights.pth`` (modality as upstream names it: Fundus, OCT,
    FFA, ...); ~0.75 GB."""
    path = Path(path)
    torch.save(visionfm_checkpoint(modality, seed), path)
    return path
