"""The shapes of the check (the paper preset, or tiny for a CPU smoke test) and the synthetic
host batches that feed the trainer's batch stream."""

from __future__ import annotations

import torch

from fundbench_keepfit_v2.data import augment_params, drop_full_masks

CATEGORICAL_TEXT_LEN = 32  # a prompt: "a colour fundus photograph showing ..." + padding
ELITE_TEXT_LEN = 128  # an atlas caption
V1_BATCH = 24  # the batch of the levers-off baseline (V1 main_pretrain.py)


def paper_shapes(tiny: bool) -> tuple[dict, dict]:
    """(config overrides of the paper preset, BERT config) of the check's model."""
    overrides = {"stage2.augment": "true"}
    bert = {
        "vocab_size": 28996,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    if tiny:
        overrides.update(
            {
                "vision.arch": "resnet_small",
                "vision.width": "8",
                "vision.resolution": "64",
                "model.proj_dim": "32",
                "model.decoder_dim": "32",
                "model.decoder_heads": "2",
                "model.decoder_ff": "64",
                "model.decoder_layers": "1",
                "model.caption_max_length": "24",
                "stage2.batch_size": "4",
                "stage2.elite_batch_size": "4",
            }
        )
        bert.update(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    return overrides, bert


class SyntheticBatches:
    """Host batches shaped like ``BatchMaker.stage2``'s: uint8 images (drawn per step from a
    small pool, as decoded images would arrive), token ids, labels and augmentation
    parameters. Picklable, so ``DataLoader`` workers can build them."""

    def __init__(
        self,
        batch: int,
        elite: int,
        resolution: int,
        vocab: int,
        text_lengths: tuple[int, int],
        caption_length: int,
        pool: int = 16,
    ) -> None:
        g = torch.Generator().manual_seed(0)
        self.batch, self.elite, self.pool = batch, elite, pool
        self.images = torch.randint(
            0, 256, (pool, 3, resolution, resolution), generator=g, dtype=torch.uint8
        )

        def tokens(length: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Texts of 60-100 % of ``length`` tokens, padded (id 0) to ``length``."""
            ids = torch.randint(5, vocab, (pool, length), generator=g)
            ids[:, 0] = 2
            keep = torch.randint(int(0.6 * length), length + 1, (pool, 1), generator=g)
            mask = (torch.arange(length)[None, :] < keep).long()
            return ids * mask, mask

        self.cat_ids, self.cat_mask = tokens(text_lengths[0])
        self.elite_ids, self.elite_mask = tokens(text_lengths[1])
        self.caption_ids, self.caption_mask = tokens(caption_length)
        self.labels = torch.randint(0, max(2, pool // 3), (pool,), generator=g)

    def make(self, step: int) -> dict:
        g = torch.Generator().manual_seed(step)
        ic = torch.randint(0, self.pool, (self.batch,), generator=g)
        ie = torch.randint(0, self.pool, (self.elite,), generator=g)
        batch = {
            "cat_images": self.images[ic],
            "cat_ids": self.cat_ids[ic],
            "cat_mask": self.cat_mask[ic],
            "cat_labels": self.labels[ic],
            "cat_aug": augment_params(step, 0, self.batch),
            "elite_images": self.images[ie],
            "elite_ids": self.elite_ids[ie],
            "elite_mask": self.elite_mask[ie],
            "elite_labels": ie,  # the same caption twice: positives of each other
            "caption_ids": self.caption_ids[ie],
            "caption_mask": self.caption_mask[ie],
            "elite_aug": augment_params(step, 1, self.elite),
        }
        return drop_full_masks(batch)
