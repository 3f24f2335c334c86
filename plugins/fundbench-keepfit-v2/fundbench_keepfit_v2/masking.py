"""BERT masking for the textual pretraining stage.

Each maskable token (not [CLS]/[SEP]/[PAD]/other special tokens) is selected with
probability ``p`` (0.15 in BERT and RetCoP's step 0); of the selected tokens 80% become
[MASK], 10% a random non-special token and 10% stay unchanged (the 80/10/10 rule). With
``whole_word`` the selection is per word (all WordPiece pieces of a word together), as
``DataCollatorForWholeWordMask`` in RetCoP's step 0. Labels are -100 where nothing is
predicted.
"""

from __future__ import annotations

import torch

IGNORE = -100


def special_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """True at special tokens (CLS, SEP, PAD, MASK, UNK...)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
    return torch.isin(input_ids, special)


def mask_tokens(
    encoding, tokenizer, prob: float, generator: torch.Generator, *, whole_word: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels) for a padded batch ``encoding`` from the fast tokenizer."""
    ids = encoding["input_ids"].clone()
    special = special_mask(ids, tokenizer) | (encoding["attention_mask"] == 0)
    if whole_word:
        selected = _select_words(encoding, special, prob, generator)
    else:
        selected = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    ids[to_mask] = tokenizer.mask_token_id
    vocab = _regular_ids(tokenizer)
    pick = torch.randint(len(vocab), ids.shape, generator=generator)
    ids[to_random] = vocab[pick][to_random]
    return ids, labels


def _select_words(
    encoding, special: torch.Tensor, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Select whole words: one draw per word, shared by all its pieces."""
    n, length = special.shape
    draws = torch.rand(n, length, generator=generator)  # one per possible word index
    selected = torch.zeros(n, length, dtype=torch.bool)
    for row in range(n):
        words = encoding.word_ids(row)
        for col, word in enumerate(words):
            if word is not None and not special[row, col]:
                selected[row, col] = bool(draws[row, word] < prob)
    return selected


def _regular_ids(tokenizer) -> torch.Tensor:
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)
