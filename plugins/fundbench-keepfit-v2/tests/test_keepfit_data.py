"""KeepFIT V2 stage-2 data: seeded order streams, dataset balancing, rank slices, folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.data import (
    BatchMaker,
    ImageSource,
    balanced_stream,
    drop_full_masks,
    load_training_data,
    stream,
)
from fundbench_keepfit_v2.testing import TINY_SHAPES, make_toy_folder
from fundbench_keepfit_v2.text import train_wordpiece

from fundbench.api.errors import DataError


def test_stream_is_a_sequence_of_permutations_and_resumable():
    full = stream(7, seed=3, purpose=0, start=0, count=21)
    for epoch in range(3):
        assert sorted(full[epoch * 7 : (epoch + 1) * 7]) == list(range(7))
    assert not np.array_equal(full[:7], full[7:14])
    # any window equals the same slice of the whole stream: a resumed run sees the same data
    assert np.array_equal(stream(7, 3, 0, 5, 9), full[5:14])
    assert not np.array_equal(stream(7, 4, 0, 0, 7), full[:7])


def test_balanced_stream_gives_every_group_the_same_share():
    groups = [np.arange(0, 30), np.arange(30, 36), np.arange(36, 45)]
    items = balanced_stream(groups, seed=0, purpose=0, start=0, count=90)  # one epoch
    counts = [np.isin(items, g).sum() for g in groups]
    assert counts == [30, 30, 30]
    assert set(items[np.isin(items, groups[0])]) == set(groups[0])  # big group: each once
    assert np.array_equal(balanced_stream(groups, 0, 0, 40, 20), items[40:60])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("keepfit_data") / "toy")


def test_folder_reader_builds_categorical_and_elite_data(toy):
    data = load_training_data(make_config("tiny", data=[str(toy)]))
    assert len(data.cat_image) == 24 and len(data.elite_image) == 24 and len(data.paths) == 24
    assert [c for _, c in data.categories] == ["drusen", "haemorrhage", "normal"]
    assert data.category_prompts[0] == ["a colour fundus photograph showing drusen."]
    assert any("blot haemorrhages" in t for t in data.texts)


def test_folder_errors_name_the_file(tmp_path):
    (tmp_path / "bad.csv").write_text("image,caption\nmissing.png,some text\n")
    with pytest.raises(DataError, match="bad.csv.*missing.png"):
        load_training_data(make_config("tiny", data=[str(tmp_path)]))


def test_rank_slices_make_up_the_global_batch(toy):
    config = make_config("tiny", TINY_SHAPES, data=[str(toy)])
    data = load_training_data(config)
    images = ImageSource(data.paths, config.vision.resolution, preload=True, workers=1)
    tok = train_wordpiece(data.texts, 200, 32)
    whole = BatchMaker(config, data, images, tok, data.texts).stage2(3)
    parts = [
        BatchMaker(config, data, images, tok, data.texts, rank=r, world=2).stage2(3)
        for r in range(2)
    ]
    assert torch.equal(torch.cat([p["cat_images"] for p in parts]), whole["cat_images"])
    assert torch.equal(torch.cat([p["cat_ids"] for p in parts]), whole["cat_ids"])
    assert torch.equal(torch.cat([p["caption_ids"] for p in parts]), whole["caption_ids"])
    assert torch.equal(parts[0]["cat_labels"], whole["cat_labels"])  # global, for targets
    again = BatchMaker(config, data, images, tok, data.texts).stage2(3)
    assert all(torch.equal(again[k], whole[k]) for k in whole)
    nxt = BatchMaker(config, data, images, tok, data.texts).stage2(4)
    assert not torch.equal(nxt["cat_images"], whole["cat_images"])
    with pytest.raises(DataError, match="multiple of WORLD_SIZE"):
        BatchMaker(config, data, images, tok, data.texts, rank=0, world=3).stage2(0)
    images.close()


def test_text_masks_without_padding_are_left_out_of_batches():
    padded = torch.tensor([[1, 1, 0], [1, 1, 1]])
    full = torch.ones(2, 3, dtype=torch.long)
    batch = drop_full_masks(
        {"cat_mask": padded, "elite_mask": full, "attention_mask": full, "caption_mask": full}
    )
    assert set(batch) == {"cat_mask", "caption_mask"}  # the decoder's mask always stays
    assert torch.equal(batch["cat_mask"], padded)
