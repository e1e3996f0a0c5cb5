"""FreeMask's noisy-region filter: which synthetic pixels the loss leaves out (validate/pixel_trust.py), and that
those pixels do not reach the segmenter (segment/losses.py, segment/train.py, mixing.synthetic_pixel_filter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lesionforge.data.arrays import PairArrays
from lesionforge.data.manifest import Provenance, Sample
from lesionforge.errors import ConfigError, DataError
from lesionforge.experiment.config import ArmSettings
from lesionforge.segment.config import MixConfig, SegmentConfig
from lesionforge.segment.losses import mark_left_out, split_left_out
from lesionforge.segment.train import train_segmenter
from lesionforge.validate import pixel_trust
from lesionforge.validate.validator import Validator

SIZE = 16


class _Brightness(nn.Module):
    """A stand-in validator network: lesion probability sigmoid(4 x), x the first channel in [-1, 1]."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(4 * x[:, :1])


def _validator(path: str = "validators/fake") -> Validator:
    return Validator("pixel", Path(path), {"resolution": SIZE, "image_channels": 3}, _Brightness())


def _pair(lesion: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An image bright (value 200, p = 0.90) where ``painted``, dark (55, p = 0.10) elsewhere, and its mask."""
    image = np.where(painted[..., None], 200, 55).astype(np.uint8).repeat(3, axis=-1)
    return image, lesion.astype(np.uint8)


def _square(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1, c0:c1] = True
    return m


def _reference() -> PairArrays:
    """Real pairs the validator gets right at p 0.9 / 0.1: mean loss -log(0.9) in each class, plus one pair
    half missed so that the means are a real pair set's, not a perfect one's."""
    pairs = [_pair(_square(4, 10, 4, 10), _square(4, 10, 4, 10)) for _ in range(3)]
    pairs.append(_pair(_square(4, 10, 4, 10), _square(4, 7, 4, 10)))
    images, masks = (np.stack(x) for x in zip(*pairs, strict=True))
    return PairArrays(images, masks, np.ones(len(masks), bool), [f"r{i}" for i in range(len(masks))],
                      [None] * len(masks))


def test_the_pixels_a_mask_mislabels_are_left_out_and_the_ones_it_labels_right_are_kept():
    v = _validator()
    means = pixel_trust.class_mean_losses(v, _reference())
    assert means["lesion"] > means["background"] > 0  # the half-missed pair raises the lesion class's mean
    mask = _square(4, 10, 4, 10)
    painted = _square(4, 10, 6, 12)  # the painted lesion sits 2 px right of its mask
    image, m = _pair(mask, painted)
    out = pixel_trust.untrusted_pixels(v, image[None], m[None], means, margin=1.25)[0]
    assert np.array_equal(out, mask ^ painted)  # mask corner left unpainted + tissue painted outside the mask
    assert not out[mask & painted].any() and not out[~mask & ~painted].any()
    # one label's pixels only: tissue painted outside the mask (background), or the unpainted mask corner (lesion)
    only_bg = pixel_trust.untrusted_pixels(v, image[None], m[None], means, margin=1.25, only="background")[0]
    only_lesion = pixel_trust.untrusted_pixels(v, image[None], m[None], means, margin=1.25, only="lesion")[0]
    assert np.array_equal(only_bg, painted & ~mask) and np.array_equal(only_lesion, mask & ~painted)
    # a wide margin forgives every pixel of this set (loss -log(0.1) = 2.3 against means near 0.1-0.6)
    assert not pixel_trust.untrusted_pixels(v, image[None], m[None], means, margin=50).any()
    with pytest.raises(ConfigError, match="8 px"):  # another resolution than the validator's: a clear refusal
        pixel_trust.pixel_losses(v, image[None, ::2, ::2], m[None, ::2, ::2])


def _row(i: int, validator: str | None) -> Sample:
    validation = {"dice": 0.8, "kept": True, "validator": validator} if validator else None
    return Sample(id=f"s{i}", image=f"images/s{i}.png", masks=[f"masks/s{i}.png"], origin="synthetic",
                  provenance=Provenance(validation=validation))


def test_a_set_is_judged_by_each_rows_validator_and_rows_no_validator_scored_are_trusted_whole(monkeypatch):
    loaded = []
    monkeypatch.setattr(pixel_trust, "load_validator", lambda p: loaded.append(p) or _validator(str(p)))
    mask, painted = _square(4, 10, 4, 10), _square(4, 10, 6, 12)
    images, masks = (np.stack(x) for x in zip(*[_pair(mask, painted)] * 3, strict=True))
    arrays = PairArrays(images, masks, np.ones(3, bool), ["s0", "s1", "s2"], [None] * 3)
    # s1 is a real lesion pasted onto a background (a joined set's other part): no validator scored it
    rows = [_row(0, "cache/validators/a"), _row(1, None), _row(2, "cache/validators/a")]
    left_out, summary = pixel_trust.untrusted_in_set(rows, arrays, _reference(), margin=1.25)
    assert loaded == [Path("cache/validators/a")]  # one validator, loaded once
    assert left_out[[0, 2]].any(axis=(1, 2)).all() and not left_out[1].any()
    assert summary["pairs_scored"] == 2 and summary["pairs_trusted_whole"] == 1
    assert summary["left_out_share"] == pytest.approx((mask ^ painted).mean())
    assert 0 < summary["left_out_share_lesion"] < 1 and 0 < summary["left_out_share_background"] < 1
    with pytest.raises(ConfigError, match="give the set's generator entry a filter"):
        pixel_trust.untrusted_in_set([_row(1, None)], arrays.subset([1]), _reference(), margin=1.25)


def test_marked_labels_keep_their_class_and_say_which_pixels_count():
    masks = np.array([[[0, 1], [1, 0]]], np.uint8)
    left = np.array([[[True, True], [False, False]]])
    marked = mark_left_out(masks * 7, left)  # any label value counts as lesion, as elsewhere
    assert marked.tolist() == [[[2, 3], [1, 0]]]
    y, counted = split_left_out(torch.from_numpy(marked).float()[:, None])
    assert y[0, 0].tolist() == [[0, 1], [1, 0]] and counted[0, 0].tolist() == [[0, 0], [1, 1]]


@pytest.mark.parametrize("resident", [False, True])
def test_labels_of_left_out_pixels_do_not_reach_the_segmenter(tmp_path, demo_arrays, resident):
    """Two synthetic sets that differ only inside the left-out pixels train the same segmenter, bit for bit;
    without the filter the same difference changes training."""
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    train, val, syn = a.subset(list(range(8))), a.subset(list(range(8, 12))), a.subset(list(range(12, 24)))
    left_out = np.zeros(syn.masks.shape, bool)
    left_out[:, 8:20, 8:20] = True  # the middle of every synthetic pair, lesion or not
    flipped = PairArrays(syn.images, np.where(left_out, 1 - (syn.masks > 0), syn.masks > 0).astype(np.uint8),
                         syn.has_mask, syn.ids, syn.classes)
    base = {"features": (8, 8, 16, 16, 32, 8), "resolution": 32, "steps": 4, "batch_size": 4, "val_interval": 2,
            "warmup_steps": 1}
    runs = {}
    for name, s, margin, lo in (("a", syn, 1.25, left_out), ("b", flipped, 1.25, left_out),
                                ("plain-a", syn, None, None), ("plain-b", flipped, None, None)):
        cfg = SegmentConfig(**base, mixing={"mode": "ratio", "ratio": 1.0, "synthetic_pixel_filter": margin})
        run = train_segmenter(cfg, train, val, tmp_path / name, synthetic=s, progress=False, resident=resident,
                              left_out=lo)
        runs[name] = [h["loss"] for h in run.history]
    assert runs["a"] == runs["b"]  # the flipped labels sit only where the loss does not look
    assert runs["plain-a"] != runs["plain-b"]  # elsewhere they would have changed training
    assert runs["a"] != runs["plain-a"]


def test_the_filter_is_refused_where_it_cannot_apply(tmp_path, demo_arrays):
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    cfg = SegmentConfig(features=(8, 8, 16, 16, 32, 8), resolution=32, steps=2, batch_size=4,
                        mixing={"mode": "ratio", "synthetic_pixel_filter": 1.25})
    with pytest.raises(ConfigError, match="go together"):  # the margin without the pixels it picked
        train_segmenter(cfg, a.subset(range(8)), a.subset(range(8, 12)), tmp_path / "x",
                        synthetic=a.subset(range(12, 20)))
    with pytest.raises(DataError, match="pixels to leave out"):
        train_segmenter(cfg, a.subset(range(8)), a.subset(range(8, 12)), tmp_path / "y",
                        synthetic=a.subset(range(12, 20)), left_out=np.zeros((3, 32, 32), bool))
    assert "synthetic_pixel_filter" not in MixConfig(mode="ratio").model_dump()  # old dumps and hashes unchanged
    with pytest.raises(ValueError, match="synthetic_pixel_filter"):
        MixConfig(mode="patch-merge", synthetic_pixel_filter=1.25)
    with pytest.raises(ValueError, match="give that margin too"):
        MixConfig(mode="ratio", synthetic_pixel_filter_class="background")
    assert "synthetic_pixel_filter_class" not in MixConfig(mode="ratio", synthetic_pixel_filter=1.25).model_dump()
    with pytest.raises(ValueError, match="no filter scored"):
        ArmSettings(name="loop", kind="closed-loop", generator="g", loop={"open_loop_arm": "synthetic"},
                    mixing={"mode": "ratio", "synthetic_pixel_filter": 1.25})
