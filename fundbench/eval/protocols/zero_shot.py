"""Zero-shot classification from cached image embeddings and class text embeddings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; all-zero rows stay zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_prompts(templates: list[str], descriptions: list[str]) -> list[str]:
    """Every template (containing ``{}``) filled with every description of a class."""
    return [t.format(d) for t in templates for d in descriptions]


#: Class-prototype conventions. ``renormalized_mean``: CLIP's prompt ensembling, the mean of
#: the unit prompt embeddings normalised again. ``raw_mean``: FLAIR's and KeepFIT's
#: ``compute_text_embeddings`` (flair.md section 4.2), the mean left as it is, so a class
#: whose descriptions disagree gets a shorter prototype and smaller logits.
PROTOTYPES = ("renormalized_mean", "raw_mean")


def class_text_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    templates: list[str],
    descriptions: dict[str, list[str]],
    classes: list[str],
    prototype: str = "renormalized_mean",
    blocks: int = 1,
) -> np.ndarray:
    """One text prototype per class, ``[C, D]``, in the order of ``classes``.

    Each prompt embedding is normalised before averaging so that no prompt weighs more
    because its embedding happens to be longer; ``prototype`` says whether the mean is
    normalised again (see :data:`PROTOTYPES`). ``blocks``: the embedding is that many
    concatenated spaces (a model's ``eye_views``), each normalised on its own.
    """
    if prototype not in PROTOTYPES:
        raise ValueError(f"unknown zero-shot prototype {prototype!r} (one of {PROTOTYPES})")
    rows = []
    for name in classes:
        if not descriptions.get(name):
            raise KeyError(f"no text descriptions for class {name!r}")
        prompts = class_prompts(templates, descriptions[name])
        prompt_emb = _blockwise(l2_normalize, np.asarray(encode_texts(prompts)), blocks)
        rows.append(prompt_emb.mean(axis=0))
    means = np.stack(rows)
    if prototype == "renormalized_mean":
        means = _blockwise(l2_normalize, means, blocks)
    return means.astype(np.float32)


def _blockwise(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, blocks: int) -> np.ndarray:
    """``fn`` applied to each of ``blocks`` equal column blocks of ``x`` (rows unchanged)."""
    if blocks == 1:
        return fn(x)
    return np.concatenate([fn(part) for part in np.split(x, blocks, axis=1)], axis=1)


#: how datasets write an eye, by the side it means (lower case)
_EYE_WORDS = {
    "left": ("left", "l", "os", "le", "left eye"),
    "right": ("right", "r", "od", "re", "right eye"),
}


def eye_side(value: object) -> str | None:
    """``"left"``, ``"right"`` or None (unknown, both, blank) for a dataset's eye value."""
    text = str(value).strip().lower() if value is not None else ""
    for side, words in _EYE_WORDS.items():
        if text in words:
            return side
    return None


def zero_shot_probs_by_eye(
    image_x: np.ndarray,
    text_x: np.ndarray,
    eyes: list[str],
    views: tuple[str, ...],
    logit_scales: tuple[float, ...],
) -> np.ndarray:
    """:func:`zero_shot_probs` for a model with one head per eye (``Model.eye_views``): each
    image is scored in the block of its eye (``eyes[i]`` is one of ``views``) against that
    block of the prototypes, with that eye's logit scale."""
    n_views = len(views)
    image_blocks = np.split(np.asarray(image_x), n_views, axis=1)
    text_blocks = np.split(np.asarray(text_x), n_views, axis=1)
    eyes_arr = np.asarray(eyes)
    probs = np.zeros((len(eyes_arr), text_blocks[0].shape[0]))
    for view, scale, images, texts in zip(
        views, logit_scales, image_blocks, text_blocks, strict=True
    ):
        rows = eyes_arr == view
        if rows.any():
            probs[rows] = zero_shot_probs(images[rows], texts, scale)
    return probs


def zero_shot_probs(
    image_x: np.ndarray, text_x: np.ndarray, logit_scale: float = 100.0
) -> np.ndarray:
    """Softmax over ``logit_scale * image @ prototype``; returns ``[N, C]``. Images are
    L2-normalised; the prototypes are used as given (their norm is part of the convention)."""
    logits = logit_scale * l2_normalize(image_x) @ np.asarray(text_x, dtype=np.float64).T
    return softmax(logits)
