"""A fake ``ret_clip_vit_b_16.pt``: the released 367 ``module.``-prefixed keys (ref. §9) at
their real shapes, random values, and a tiny Chinese-BERT-like ``vocab.txt``."""

from __future__ import annotations

from pathlib import Path

import torch

from fundbench_fms.fakes import random_tensors, shapes_of

#: a few characters, each once; [PAD] first as in RET_CLIP/clip/vocab.txt
_CHARS = (
    "彩色眼底照片显示图像正常视网膜未见明显异糖尿病变轻中重度非增殖性青光杯盘比黄斑"
    "雪地里的一辆红自行车学相干断层扫描裂孔"
)
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *dict.fromkeys(_CHARS),
    "。",
    "：",
    "，",
    "a",
    "b",
]


def ret_clip_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """The network's 367 tensors (no prefix), logit scales near ln 90 as initialised."""
    from fundbench_fms.models.ret_clip import RETCLIPNetwork

    with torch.device("meta"):
        shapes = shapes_of(RETCLIPNetwork())
    state = random_tensors(shapes, seed)
    # BERT is post-norm: 25 LayerNorm gains of 1 +- 0.1 compound until every token is the
    # same vector, and the text tower would (rightly) fail its sanity check. Identity gains,
    # as BERT is initialised, keep texts apart.
    for key in state:
        if key.startswith("bert.") and ".LayerNorm." in key:
            fill = 1.0 if key.endswith("weight") else 0.0
            state[key] = torch.full_like(state[key], fill)
    for i, key in enumerate(("logit_scale", "logit_scale_left", "logit_scale_right")):
        state[key] = torch.tensor(4.0 + 0.2 * i)
    return state


def write_ret_clip(path: str | Path, seed: int = 7) -> Path:
    """The release: a flat dict, every key ``module.``-prefixed (DDP)."""
    path = Path(path)
    torch.save({f"module.{k}": v for k, v in ret_clip_state(seed).items()}, path)
    return path


def write_vocab(folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder
