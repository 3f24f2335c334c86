"""Write random-weight files in each released checkpoint format, for smoke runs without the
real weights (which cannot be downloaded here):

    .venv/bin/python scripts/make-fake-weights.py OUT_DIR
    FUNDBENCH_BIO_CLINICALBERT=OUT_DIR/bert .venv/bin/fundbench run --model flair \
        --weights OUT_DIR/flair_resnet.pth

Files: flair_resnet.pth (521 keys, with position_ids), keepfit_v1.pth (FLAIR + attention),
RETFound_cfp_weights.pth ({'model': encoder + the 104 MAE decoder keys}),
RETFound_dinov2_meh.pth ({'teacher': backbone.* at 518 px + a DINO head key}), a tiny
Bio_ClinicalBERT-like tokenizer folder ``bert/``, and the newer models' releases
(plugins/fundbench-fms, ``fundbench_fms.fakes``): retfoundgreen_statedict.pth, RetiZero.pth,
VFM_{Fundus,OCT,FFA}_weights.pth (whole iBOT checkpoints with their ``args``),
urfound_mm.pth (MAE training checkpoint), dinoret.pth / bedinoret.pth / loradinoret.pth,
eyeclip_visual.pt (``model_state_dict`` + optimizer), ret_clip_vit_b_16.pt (``module.``
keys) and a tiny Chinese vocabulary ``ret_clip_vocab/``. The numbers they give are chance
level. ``--only NAME ...`` writes only the named files (about 10 GB in all otherwise).
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from fundbench_flair.testing import random_state, with_position_ids, write_bert_folder
from fundbench_fms.fakes import (
    dinoret,
    eyeclip,
    ret_clip,
    retfound_green,
    retizero,
    urfound,
    visionfm,
)
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


def write_retfound_mae(path: Path) -> None:
    torch.manual_seed(0)
    encoder = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0)
    torch.save({"model": {**encoder.state_dict(), **mae_decoder()}}, path)


def write_retfound_dinov2(path: Path) -> None:
    dinov2 = timm.create_model(
        "vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=518
    )
    teacher = {f"backbone.{k}": v for k, v in dinov2.state_dict().items()}
    teacher["backbone.mask_token"] = torch.zeros(1, 1024)
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, 1024)
    torch.save({"teacher": teacher}, path)


#: file name -> writer(path); folders (tokenizers) end with "/"
WRITERS = {
    "bert/": write_bert_folder,
    "flair_resnet.pth": lambda p: torch.save(with_position_ids(random_state()), p),
    "keepfit_v1.pth": lambda p: torch.save(
        with_position_ids(random_state(KeepFITV1Network, seed=3)), p
    ),
    "RETFound_cfp_weights.pth": write_retfound_mae,
    "RETFound_dinov2_meh.pth": write_retfound_dinov2,
    "retfoundgreen_statedict.pth": retfound_green.write_retfound_green,
    "RetiZero.pth": retizero.write_retizero,
    "VFM_Fundus_weights.pth": lambda p: visionfm.write_visionfm_release(p, modality="Fundus"),
    "VFM_OCT_weights.pth": lambda p: visionfm.write_visionfm_release(p, modality="OCT"),
    "VFM_FFA_weights.pth": lambda p: visionfm.write_visionfm_release(p, modality="FFA"),
    "urfound_mm.pth": urfound.write_urfound_release,
    "dinoret.pth": dinoret.write_dinoret,
    "bedinoret.pth": dinoret.write_dinoret_be,
    "loradinoret.pth": dinoret.write_dinoret_lora,
    "eyeclip_visual.pt": eyeclip.write_eyeclip_visual,
    "ret_clip_vit_b_16.pt": ret_clip.write_ret_clip,
    "ret_clip_vocab/": ret_clip.write_vocab,
}


def main(out: Path, only: list[str]) -> None:
    unknown = sorted(set(only) - set(WRITERS))
    if unknown:
        sys.exit(f"make-fake-weights.py: unknown file(s) {unknown}; choose from {list(WRITERS)}")
    out.mkdir(parents=True, exist_ok=True)
    for name, write in WRITERS.items():
        if only and name not in only:
            continue
        path = out / name.rstrip("/")
        write(path)
        size = path.stat().st_size if path.is_file() else 0
        print(f"{path}  {size / 1e6:.0f} MB" if size else f"{path}/")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit("usage: make-fake-weights.py OUT_DIR [--only FILE ...]")
    only = args[2:] if len(args) > 1 and args[1] == "--only" else []
    if len(args) > 1 and not only:
        sys.exit("usage: make-fake-weights.py OUT_DIR [--only FILE ...]")
    main(Path(args[0]), only)
