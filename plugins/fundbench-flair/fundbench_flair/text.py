"""The Bio_ClinicalBERT tokenizer, found on this disk and never downloaded.

FLAIR and KeepFIT checkpoints do not contain their tokenizer (flair.md section 2.2). It is
looked up, in order, at: the ``tokenizer`` option (a folder), ``$FUNDBENCH_BIO_CLINICALBERT``
(a folder), then the Hugging Face cache (``emilyalsentzer/Bio_ClinicalBERT``, offline only).
The hub repo ships ``vocab.txt`` without a ``tokenizer_config.json``, so the tokenizer
lowercases (BERT's default); a local copy behaves the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from fundbench.api.errors import ConfigError
from fundbench.models.checkpoints import resolve_hf_folder

BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"
TOKENIZER_ENV = "FUNDBENCH_BIO_CLINICALBERT"


def find_tokenizer_folder(
    explicit: str | None = None, hub_id: str = BIO_CLINICALBERT
) -> Path | None:
    """The first local folder holding the tokenizer, or None (nothing is downloaded)."""
    if explicit:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"tokenizer={explicit!r}: not a folder; give a local copy of "
                f"{hub_id} (config.json + vocab.txt)"
            )
        return folder
    env = os.environ.get(TOKENIZER_ENV)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"${TOKENIZER_ENV}={env!r}: not a folder; point it at a local "
                f"copy of {hub_id} (config.json + vocab.txt) or unset it"
            )
        return folder
    return resolve_hf_folder(hub_id, allow_patterns=("*.json", "*.txt"))


def load_tokenizer(folder: Path, max_length: int) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{folder}: cannot load a tokenizer there ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); it needs vocab.txt "
            "(and config.json)"
        ) from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        # transformers 5 builds an empty tokenizer from a folder without vocabulary files
        raise ConfigError(
            f"{folder}: no tokenizer vocabulary there (vocab.txt or "
            "tokenizer.json); give a local copy of Bio_ClinicalBERT"
        )
    tokenizer.model_max_length = max_length
    return tokenizer


def missing_tokenizer_reason(hub_id: str = BIO_CLINICALBERT) -> str:
    return (
        f"text tokenizer {hub_id} not found on this disk (fundbench never downloads); "
        f"set {TOKENIZER_ENV}=/path/to/Bio_ClinicalBERT or pass --model-arg "
        "MODEL.tokenizer=/path to run zero-shot"
    )


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int):
    """Pad to the longest text of the call (FLAIR: ``padding=True``), truncate."""
    return tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
