"""KeepFIT V2 loss terms and MLM masking on small hand-made inputs with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fundbench_keepfit_v2.corpus import builtin_sentences
from fundbench_keepfit_v2.losses import (
    caption_targets,
    cooccurrence_targets,
    knowledge_loss,
    soft_clip_loss,
    token_ce_sum,
)
from fundbench_keepfit_v2.masking import IGNORE, mask_tokens
from fundbench_keepfit_v2.model import MultiHeadAttention
from fundbench_keepfit_v2.text import tokenize, tokenizer_json, train_wordpiece, wrap_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(builtin_sentences(), vocab_size=400, max_length=64)


def test_cooccurrence_targets_single_and_multi_label():
    t = cooccurrence_targets(torch.tensor([0, 0, 1]))
    assert torch.allclose(t, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    multi = torch.tensor([[1, 0], [1, 1], [0, 1]])
    t = cooccurrence_targets(multi)
    # cooc = [[1,1,0],[1,2,1],[0,1,1]], each row divided by its sum
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    assert torch.allclose(t, expected)


def test_soft_clip_loss_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])  # texts 0 and 1 share a category
    e = math.e
    z_a = math.log(e**2 + e + 1)  # log-sum-exp of [2, 1, 0]
    z_b = math.log(e**2 + 2)  # log-sum-exp of [2, 0, 0] in any order
    # texts -> images: rows [2,1,0] t=[.5,.5,0]; [0,2,0] t=[.5,.5,0]; [0,0,2] t=[0,0,1]
    text_side = ((z_a - 1.5) + (z_b - 1.0) + (z_b - 2.0)) / 3
    # images -> texts (transpose): rows [2,0,0]; [1,2,0]; [0,0,2] with the same targets
    image_side = ((z_b - 1.0) + (z_a - 1.5) + (z_b - 2.0)) / 3
    got = soft_clip_loss(logits, labels)
    assert got.item() == pytest.approx((text_side + image_side) / 2, abs=1e-6)


def test_soft_clip_loss_with_distinct_labels_is_clip_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    expected = (
        F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))
    ) / 2
    assert soft_clip_loss(logits, torch.arange(5)).item() == pytest.approx(
        expected.item(), abs=1e-6
    )


def test_soft_clip_loss_is_lower_when_positives_match():
    labels = torch.tensor([0, 1, 0])
    aligned = torch.tensor([[5.0, 0.0, 5.0], [0.0, 5.0, 0.0], [5.0, 0.0, 5.0]])
    wrong = aligned[[1, 0, 2]]
    assert soft_clip_loss(aligned, labels) < soft_clip_loss(wrong, labels)


def test_caption_loss_ignores_padding():
    ids = torch.tensor([[2, 5, 6, 3, 0, 0]])  # [CLS] w w [SEP] [PAD] [PAD]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    inputs, pad, targets = caption_targets(ids, mask)
    assert inputs.tolist() == [[2, 5, 6, 3, 0]]
    assert pad.tolist() == [[False, False, False, False, True]]
    assert targets.tolist() == [[5, 6, 3, IGNORE, IGNORE]]
    vocab = 7
    logits = torch.zeros(1, 5, vocab)
    logits[0, 0, 5] = math.log(2.0)  # p(target 5) = 2 / (2 + 6) = 1/4
    logits[0, 3:, :] = torch.randn(2, vocab) * 100  # padding positions: anything
    total, count = token_ce_sum(logits, targets)
    assert count.item() == 3
    assert total.item() == pytest.approx(math.log(4) + 2 * math.log(7), abs=1e-5)


def test_knowledge_mse_and_attention_hand_computed():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    attended = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert knowledge_loss(text, attended).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    mha = MultiHeadAttention(2, heads=1, dropout=0.0)
    with torch.no_grad():
        for w in (mha.W_q, mha.W_k, mha.W_v, mha.W_o):
            w.weight.copy_(torch.eye(2))
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    out = mha(q, k, v)
    assert out.tolist()[0] == pytest.approx([2 * a, 4 * (1 - a)], abs=1e-6)


def test_mlm_masking_statistics(tokenizer):
    sentences = builtin_sentences() * 8
    enc = tokenize(tokenizer, sentences, 64)
    gen = torch.Generator().manual_seed(0)
    ids, labels = mask_tokens(enc, tokenizer, 0.15, gen)
    original = enc["input_ids"]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    maskable = ~special & (enc["attention_mask"] == 1)
    selected = labels != IGNORE
    assert not (selected & ~maskable).any(), "special or padding tokens were selected"
    assert torch.equal(ids[~selected], original[~selected])
    assert torch.equal(labels[selected], original[selected])
    rate = selected.sum().item() / maskable.sum().item()
    assert rate == pytest.approx(0.15, abs=0.01)
    n = selected.sum().item()
    to_mask = (ids[selected] == tokenizer.mask_token_id).sum().item() / n
    unchanged = (ids[selected] == original[selected]).sum().item() / n
    randomised = 1 - to_mask - unchanged
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1, abs=0.02)
    assert randomised == pytest.approx(0.1, abs=0.02)
    assert not torch.isin(
        ids[selected & (ids != original) & (ids != tokenizer.mask_token_id)],
        torch.tensor(tokenizer.all_special_ids),
    ).any()


def test_whole_word_masking_keeps_words_together(tokenizer):
    sentences = builtin_sentences() * 4
    enc = tokenize(tokenizer, sentences, 64)
    gen = torch.Generator().manual_seed(1)
    _, labels = mask_tokens(enc, tokenizer, 0.15, gen, whole_word=True)
    selected = labels != IGNORE
    split_words = 0
    for row in range(len(sentences)):
        by_word: dict[int, set] = {}
        for col, word in enumerate(enc.word_ids(row)):
            if word is not None:
                by_word.setdefault(word, set()).add(bool(selected[row, col]))
        for states in by_word.values():
            assert len(states) == 1, "a word was partly masked"
        split_words += sum(1 for w in enc.word_ids(row) if w is not None)
    assert 0.10 < selected.sum().item() / split_words < 0.20


def test_tokenisation_round_trip(tokenizer):
    text = "Dot and blot haemorrhages in the inferotemporal quadrant with hard exudates"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    again = wrap_tokenizer(tokenizer_json(tokenizer), 64)  # as stored in checkpoints
    assert again(text)["input_ids"] == ids
    assert again.mask_token_id == tokenizer.mask_token_id


def test_wordpiece_training_is_deterministic():
    a = train_wordpiece(builtin_sentences(), 300, 32)
    b = train_wordpiece(builtin_sentences(), 300, 32)
    assert tokenizer_json(a) == tokenizer_json(b)
