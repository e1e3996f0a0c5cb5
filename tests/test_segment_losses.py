"""The loss with an untrusted border band on synthetic labels (segment/losses.py, mixing.synthetic_border_ignore)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from lesionforge.data.arrays import PairArrays
from lesionforge.segment.config import MixConfig, SegmentConfig
from lesionforge.segment.losses import MaskedDiceCELoss, trusted_pixels
from lesionforge.segment.train import train_segmenter


def _labels() -> torch.Tensor:
    y = torch.zeros(3, 1, 32, 32)
    y[:, :, 11:21, 11:21] = 1  # a 10 x 10 lesion in every sample
    return y


def test_the_band_covers_border_pixels_of_synthetic_samples_only():
    y = _labels()
    w = trusted_pixels(y, first_synthetic=1, border=2)
    assert torch.all(w[0] == 1)  # the real sample: every pixel counts
    for k in (1, 2):
        # 14 x 14 grown minus 6 x 6 shrunk: 160 pixels within 2 of the border, inside or outside the lesion
        assert int((w[k] == 0).sum()) == 14 * 14 - 6 * 6
        assert w[k, 0, 16, 16] == 1 and w[k, 0, 0, 0] == 1  # deep inside, far outside: counted
        # rows 11-20 hold the lesion: 9-12 (two outside, two inside) are the band, 8 and 13 are counted
        assert all(w[k, 0, r, 16] == 0 for r in (9, 10, 11, 12)) and w[k, 0, 8, 16] == 1 and w[k, 0, 13, 16] == 1
    assert torch.all(trusted_pixels(y, first_synthetic=3, border=2) == 1)  # no synthetic sample in the batch


def test_with_every_pixel_counted_it_is_monais_dice_ce_and_the_band_gets_no_gradient():
    torch.manual_seed(0)
    y = _labels()
    logits = torch.randn(3, 1, 32, 32, requires_grad=True)
    ones = torch.ones_like(y)
    assert MaskedDiceCELoss()(logits, y, ones).item() == pytest.approx(
        DiceCELoss(sigmoid=True, batch=True)(logits, y).item(), rel=1e-5)
    w = trusted_pixels(y, first_synthetic=1, border=2)
    MaskedDiceCELoss()(logits, y, w).backward()
    band = w[1:] == 0
    assert torch.all(logits.grad[1:][band] == 0)  # a synthetic label's border does not pull the prediction
    assert torch.all(logits.grad[0][band[0]] != 0)  # the real sample's does
    assert torch.all(logits.grad[1:][~band] != 0)


def test_training_with_the_band_runs_and_is_refused_where_it_cannot_apply(tmp_path, demo_arrays):
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    base = {"features": (8, 8, 16, 16, 32, 8), "resolution": 32, "steps": 3, "batch_size": 4, "val_interval": 3,
            "warmup_steps": 1}
    runs = {}
    for border in (None, 2):
        cfg = SegmentConfig(**base, mixing={"mode": "ratio", "ratio": 1.0, "synthetic_border_ignore": border})
        runs[border] = train_segmenter(cfg, a.subset(list(range(8))), a.subset(list(range(8, 12))),
                                       tmp_path / f"seg-{border}", synthetic=a.subset(list(range(12, 24))),
                                       progress=False)
    losses = {b: [h["loss"] for h in r.history] for b, r in runs.items()}
    assert losses[None] != losses[2]  # same batches, same seed: only the loss differs
    assert "synthetic_border_ignore" not in MixConfig(mode="ratio").model_dump()  # old dumps and hashes unchanged
    with pytest.raises(ValueError, match="synthetic_border_ignore"):
        MixConfig(mode="patch-merge", synthetic_border_ignore=2)
