"""Write random-weight files in each released checkpoint format, for smoke runs without the
real weights (which cannot be downloaded here):

    .venv/bin/python scripts/make-fake-weights.py OUT_DIR
    FUNDBENCH_BIO_CLINICALBERT=OUT_DIR/bert .venv/bin/fundbench run --model flair \
        --weights OUT_DIR/flair_resnet.pth

Files: flair_resnet.pth (521 keys, with position_ids), keepfit_v1.pth (FLAIR + attention),
RETFound_cfp_weights.pth ({'model': encoder + the 104 MAE decoder keys}),
RETFound_dinov2_meh.pth ({'teacher': backbone.* at 518 px + a DINO head key}) and a tiny
Bio_ClinicalBERT-like tokenizer folder ``bert/``. The numbers they give are chance level.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from fundbench_flair.testing import random_state, with_position_ids, write_bert_folder
from fundbench_keepfit_v2.v1 import KeepFITV1Network


def mae_decoder(width: int = 512, depth: int = 8, patch_pixels: int = 768) -> dict:
    """RETFound's MAE decoder keys and shapes (retfound.md section 2.4), random values."""
    shapes = {
        "mask_token": (1, 1, width),
        "decoder_pos_embed": (1, 197, width),
        "decoder_embed.weight": (width, 1024),
        "decoder_embed.bias": (width,),
        "decoder_norm.weight": (width,),
        "decoder_norm.bias": (width,),
        "decoder_pred.weight": (patch_pixels, width),
        "decoder_pred.bias": (patch_pixels,),
    }
    for i in range(depth):
        b = f"decoder_blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (width,),
                b + "norm1.bias": (width,),
                b + "attn.qkv.weight": (3 * width, width),
                b + "attn.qkv.bias": (3 * width,),
                b + "attn.proj.weight": (width, width),
                b + "attn.proj.bias": (width,),
                b + "norm2.weight": (width,),
                b + "norm2.bias": (width,),
                b + "mlp.fc1.weight": (4 * width, width),
                b + "mlp.fc1.bias": (4 * width,),
                b + "mlp.fc2.weight": (width, 4 * width),
                b + "mlp.fc2.bias": (width,),
            }
        )
    return {k: torch.randn(s) * 0.02 for k, s in shapes.items()}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_bert_folder(out / "bert")
    torch.save(with_position_ids(random_state()), out / "flair_resnet.pth")
    torch.save(with_position_ids(random_state(KeepFITV1Network, seed=3)), out / "keepfit_v1.pth")
    torch.manual_seed(0)
    encoder = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0)
    torch.save(
        {"model": {**encoder.state_dict(), **mae_decoder()}}, out / "RETFound_cfp_weights.pth"
    )
    dinov2 = timm.create_model(
        "vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=518
    )
    teacher = {f"backbone.{k}": v for k, v in dinov2.state_dict().items()}
    teacher["backbone.mask_token"] = torch.zeros(1, 1024)
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, 1024)
    torch.save({"teacher": teacher}, out / "RETFound_dinov2_meh.pth")
    for path in sorted(out.glob("*.pth")):
        print(f"{path}  {path.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make-fake-weights.py OUT_DIR")
    main(Path(sys.argv[1]))
