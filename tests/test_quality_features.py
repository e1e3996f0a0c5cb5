"""Feature extractors: fixed-size, deterministic, named with their checkpoint hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionforge.data.arrays import PairArrays
from lesionforge.errors import CheckpointError, OverwriteError
from lesionforge.quality.features import load_extractor, pixel_extractor, train_segmentation_encoder
from lesionforge.quality.inception import FIDInceptionV3

TINY = (8, 8, 16, 16, 32, 8)


def _pairs(demo, n: int) -> PairArrays:
    return PairArrays(demo.images[:n], demo.masks[:n], demo.masks[:n].any((1, 2)), list(demo.ids[:n]), [None] * n)


def test_pixel_features_have_a_fixed_size_for_any_input(demo_arrays):
    ex = load_extractor("pixels:4")
    assert ex.features(demo_arrays.images[:3]).shape == (3, 48)
    big = np.repeat(np.repeat(demo_arrays.images[:3], 2, axis=1), 2, axis=2)
    assert ex.features(big).shape == (3, 48)
    grey = demo_arrays.images[:3, :, :, :1]
    assert ex.features(grey).shape == (3, 48)
    assert np.allclose(pixel_extractor(4).features(big), ex.features(demo_arrays.images[:3]), atol=1e-6)


def test_seg_encoder_trains_saves_and_extracts_deterministically(demo_arrays, tmp_path):
    train = _pairs(demo_arrays, 12)
    a = train_segmentation_encoder(train, tmp_path / "a", features=TINY, steps=2, batch_size=4, seed=1)
    b = train_segmentation_encoder(train, tmp_path / "b", features=TINY, steps=2, batch_size=4, seed=1)
    ex_a, ex_b = load_extractor(a), load_extractor(b)
    assert ex_a.name == "seg-encoder-basicunet-32px"
    assert ex_a.checkpoint_hash == ex_b.checkpoint_hash and len(ex_a.checkpoint_hash) == 16
    feats = ex_a.features(demo_arrays.images[:5])
    assert feats.shape == (5, sum(TINY[:5]))
    assert np.array_equal(feats, ex_a.features(demo_arrays.images[:5]))
    assert np.array_equal(feats, ex_b.features(demo_arrays.images[:5]))
    with pytest.raises(OverwriteError):
        train_segmentation_encoder(train, a, features=TINY, steps=1)


def interrupted_seg_encoder(train, out, monkeypatch, **opts) -> None:
    """Train the seg-encoder into ``out`` and kill it on its 4th step, after the step-2 checkpoint."""
    import monai.losses

    real_loss = monai.losses.DiceCELoss

    class Crash(real_loss):
        calls = 0

        def forward(self, *args):
            Crash.calls += 1
            if Crash.calls == 4:
                raise KeyboardInterrupt
            return super().forward(*args)

    monkeypatch.setattr(monai.losses, "DiceCELoss", Crash)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation_encoder(train, out, **opts)
    monkeypatch.setattr(monai.losses, "DiceCELoss", real_loss)


def test_seg_encoder_resumes_to_the_same_weights(demo_arrays, tmp_path, monkeypatch):
    train = _pairs(demo_arrays, 12)
    opts = dict(features=TINY, steps=4, batch_size=4, checkpoint_every=2)
    whole = train_segmentation_encoder(train, tmp_path / "whole", **opts)
    interrupted_seg_encoder(train, tmp_path / "cut", monkeypatch, **opts)
    assert (tmp_path / "cut" / "train_state" / "step.json").is_file()
    with pytest.raises(OverwriteError):
        train_segmentation_encoder(train, tmp_path / "cut", features=TINY, steps=4, batch_size=4, checkpoint_every=2)
    cut = train_segmentation_encoder(train, tmp_path / "cut", features=TINY, steps=4, batch_size=4,
                                     checkpoint_every=2, resume=True)
    assert not (cut / "train_state").exists()
    assert load_extractor(cut).checkpoint_hash == load_extractor(whole).checkpoint_hash


def test_inception_loads_a_pytorch_fid_style_state_dict(demo_arrays, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    ex = load_extractor(weights)
    assert ex.name == "inception-v3-fid" and len(ex.checkpoint_hash) == 16
    feats = ex.features(demo_arrays.images[:1])
    assert feats.shape == (1, 2048) and np.isfinite(feats).all()
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CheckpointError, match="not an FID Inception-v3"):
        load_extractor(wrong)


def test_load_extractor_rejects_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="pixels:<size>"):
        load_extractor("pixels:big")
    with pytest.raises(CheckpointError, match="not found"):
        load_extractor(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a seg-encoder folder"):
        load_extractor(tmp_path / "empty")
