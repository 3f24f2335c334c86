"""The ophthalmic text corpus for stage 1 (textual pretraining) and the WordPiece vocabulary.

Sources, all deduplicated:

* ``corpus/*.txt`` shipped with the plugin: ophthalmic knowledge written for fundbench
  (anatomy, diabetic retinopathy grading, glaucoma, macular disease, myopia, angiography,
  OCT, imaging) -- one sentence per line, our own wording;
* the training data's texts: captions of the TRAIN split (the elite pairs) and every
  template x expert description of the categorical datasets;
* any folders of ``.txt`` files given in ``data.corpus`` (e.g. MM-Retinal-Text), split into
  sentences.

A deterministic slice (by a hash of each sentence, so it does not depend on order) is held
out to measure masked-LM loss before and after stage 1.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

from fundbench.api.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def builtin_sentences() -> list[str]:
    """The sentences of the corpus files shipped in ``fundbench_keepfit_v2/corpus``."""
    folder = resources.files("fundbench_keepfit_v2") / "corpus"
    lines: list[str] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            lines += split_sentences(entry.read_text(encoding="utf-8"))
    return lines


def split_sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return out


def folder_sentences(folder: str | Path) -> list[str]:
    """Every sentence of every ``.txt`` file under ``folder`` (recursively, sorted)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"data.corpus: {root} is not a folder of .txt files")
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise DataError(f"data.corpus: no .txt files under {root}")
    out: list[str] = []
    for path in files:
        try:
            out += split_sentences(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    return out


def dedupe(sentences: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for s in sentences:
        key = " ".join(s.split()).lower()
        if key not in seen:
            seen.add(key)
            out.append(" ".join(s.split()))
    return out


def is_held_out(sentence: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(sentence.lower().encode()).digest()[:4], "big")
    return h % 10_000 < fraction * 10_000


def split_holdout(sentences: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out) by sentence hash; both non-empty when there are >= 2 sentences."""
    train = [s for s in sentences if not is_held_out(s, fraction)]
    held = [s for s in sentences if is_held_out(s, fraction)]
    if not held and len(train) > 1:
        held = [train.pop()]
    if not train and len(held) > 1:
        train = [held.pop()]
    return train, held
