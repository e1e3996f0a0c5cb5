"""Segmentation with the data held on the training device (lesionforge.segment.resident), run on the CPU: it
trains and resumes exactly, its copy-paste and augmentation keep image and mask together, and its augmentation
draws from the same distributions as the host path's MONAI chain (not the same numbers: see augment_on_device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import ndimage, stats

from lesionforge.data.arrays import PairArrays
from lesionforge.devices import DATA_ON_DEVICE_ENV, data_on_device
from lesionforge.errors import ConfigError
from lesionforge.segment.augment import augment_batch, augment_on_device, build_augmentation
from lesionforge.segment.config import AugmentConfig, CopyPasteConfig, MixConfig, SegmentConfig
from lesionforge.segment.copypaste import DeviceCopyPaster
from lesionforge.segment.train import train_segmenter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split(demo_arrays):
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    val = [0, 5, 10, 15, 20, 25, 33, 38]
    return a.subset([i for i in range(len(a)) if i not in val]), a.subset(val)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_data_on_device_by_default_only_on_cuda(monkeypatch):
    monkeypatch.delenv(DATA_ON_DEVICE_ENV, raising=False)
    assert not data_on_device(CPU) and data_on_device(torch.device("cuda"))
    assert data_on_device(CPU, True) and not data_on_device(torch.device("cuda"), False)
    monkeypatch.setenv(DATA_ON_DEVICE_ENV, "1")  # a whole sweep (the device bundle's dry run)
    assert data_on_device(CPU) and not data_on_device(CPU, False)
    monkeypatch.setenv(DATA_ON_DEVICE_ENV, "yes")
    with pytest.raises(ConfigError, match="LESIONFORGE_DATA_ON_DEVICE is 'yes'"):
        data_on_device(CPU)


def test_resident_training_lowers_the_loss_and_resumes_exactly(split, tmp_path):
    train, val = split
    cfg = SegmentConfig(features=(8, 8, 16, 16, 32, 8), resolution=32, steps=16, batch_size=4, lr=1e-2,
                        warmup_steps=2, val_interval=4, copy_paste={"enabled": True, "prob": 0.5})
    run = train_segmenter(cfg, train, val, tmp_path / "straight", resident=True)
    losses = [h["loss"] for h in run.history]
    assert losses[-1] < 0.9 * losses[0]  # 1.46 -> 1.18 here
    train_segmenter(cfg, train, val, tmp_path / "resumed", resident=True, stop_after=6)
    again = train_segmenter(cfg, train, val, tmp_path / "resumed", resident=True)
    a, b = _weights(tmp_path / "straight" / "last-0000016"), _weights(tmp_path / "resumed" / "last-0000016")
    assert all(torch.equal(a[k], b[k]) for k in a)  # a seed fixes the run, across a resume too
    assert [h["val_mdice"] for h in again.history][-1] == run.history[-1]["val_mdice"]
    host = train_segmenter(cfg, train, val, tmp_path / "host", stop_after=4)  # the host path draws other batches
    assert host.history[0]["loss"] != run.history[0]["loss"]


@pytest.mark.parametrize("mode", ["patch-merge", "ratio"])
def test_resident_training_with_synthetic_sets(split, tmp_path, mode):
    train, val = split
    synthetic = PairArrays(255 - train.images, train.masks, train.has_mask, [f"s{i}" for i in train.ids],
                           train.classes)
    twins = {rid: [i] for i, rid in enumerate(train.ids[:20])}
    cfg = SegmentConfig(features=(8, 8, 16, 16, 32, 8), resolution=32, steps=3, batch_size=4, val_interval=3,
                        warmup_steps=0, mixing=MixConfig(mode=mode, patch_size=8))
    run = train_segmenter(cfg, train, val, tmp_path, synthetic=synthetic, twins=twins, resident=True)
    assert run.steps == 3 and np.isfinite(run.history[-1]["loss"])


def _blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size) {0, 1} masks of random off-centre discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = rng.uniform(0.25 * size, 0.6 * size, (n, 2))
    r = rng.uniform(0.1 * size, 0.25 * size, n)
    m = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 < r[:, None, None] ** 2
    return torch.from_numpy(m[:, None].astype(np.float32))


GEOMETRY = {"intensity_prob": 0.0, "noise_prob": 0.0}


@pytest.mark.parametrize("affine_prob", [0.0, 1.0])
def test_device_augmentation_moves_image_and_mask_together(affine_prob):
    masks = _blobs(64, 32, 0)
    images = (masks * 1.6 - 0.8).expand(-1, 3, -1, -1)  # the mask is painted in the image: image > 0
    cfg = AugmentConfig(affine_prob=affine_prob, **GEOMETRY)
    x, y = augment_on_device(cfg, images, masks, torch.Generator().manual_seed(3))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    painted = (x[:, 0] > 0).float()
    if affine_prob == 0:  # flips and turns only: exact
        assert torch.equal(painted, y[:, 0])
    else:  # bilinear image, nearest mask: they may part on the rim only
        assert (painted == y[:, 0]).float().mean() > 0.98
    assert (y != masks).flatten(1).any(1).float().mean() > 0.5  # most samples were moved
    x2, y2 = augment_on_device(cfg, images, masks, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def _both(cfg: AugmentConfig, images: torch.Tensor, masks: torch.Tensor):
    host = augment_batch(build_augmentation(cfg, images.shape[-1]), images, masks, seed=0)
    dev = augment_on_device(cfg, images, masks, torch.Generator().manual_seed(0))
    return host, dev


def _same_distribution(a: torch.Tensor, b: torch.Tensor) -> None:
    assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3


def test_device_augmentation_draws_from_the_monai_distributions():
    n, size = 400, 16
    # geometry: where a mark in one corner ends up (flips, 90 degree turns), and how zoom and shift move a square
    corner = torch.zeros(n, 1, size, size)
    corner[:, :, :4, :2] = 1
    cfg = AugmentConfig(affine_prob=0.0, **GEOMETRY)
    (_, hy), (_, dy) = _both(cfg, corner.expand(-1, 3, -1, -1) * 2 - 1, corner)
    counts = [[int(((y[:, 0, :4, :4].sum((1, 2)) > 0) if q == 0 else (y[:, 0, :4, -4:].sum((1, 2)) > 0) if q == 1
                    else (y[:, 0, -4:, :4].sum((1, 2)) > 0) if q == 2 else (y[:, 0, -4:, -4:].sum((1, 2)) > 0)).sum())
               for q in range(4)] for y in (hy, dy)]
    assert stats.chi2_contingency(counts).pvalue > 1e-3
    assert [int((y[:, 0, :4, :2].sum((1, 2)) == 8).sum()) for y in (hy, dy)] != [0, 0]  # left alone sometimes
    square = torch.zeros(n, 1, 2 * size, 2 * size)  # room around it: no reflected copy is read
    square[:, :, 12:20, 12:20] = 1
    cfg = AugmentConfig(flip_prob=0, rotate90_prob=0, affine_prob=1.0, scale_range=0.5, translate_fraction=0.1,
                        **GEOMETRY)
    (_, hy), (_, dy) = _both(cfg, square.expand(-1, 3, -1, -1) * 2 - 1, square)
    _same_distribution(hy.sum((1, 2, 3)), dy.sum((1, 2, 3)))  # area: the zoom (the inverse zoom fails, p 1e-5)
    rows = torch.arange(2 * size, dtype=torch.float32)[:, None]
    for y in (hy, dy):
        assert (y.sum((1, 2, 3)) > 0).all()
    _same_distribution(*((y[:, 0] * rows).sum((1, 2)) / y[:, 0].sum((1, 2)) for y in (hy, dy)))  # the shift
    # intensity: per-image mean and spread of a ramp after brightness, contrast, colour, gamma and noise
    ramp = torch.linspace(-0.9, 0.9, size)[None, None, None].expand(n, 3, size, size).contiguous()
    cfg = AugmentConfig(flip_prob=0, rotate90_prob=0, affine_prob=0, brightness=0.3, contrast=0.3, noise_prob=0.5,
                        noise_std=0.2)
    (hx, _), (dx, _) = _both(cfg, ramp, torch.zeros(n, 1, size, size))
    _same_distribution(hx.mean((1, 2, 3)), dx.mean((1, 2, 3)))
    _same_distribution(hx.std((1, 2, 3)), dx.std((1, 2, 3)))
    _same_distribution(hx[:, 0].mean((1, 2)) - hx[:, 1].mean((1, 2)), dx[:, 0].mean((1, 2)) - dx[:, 1].mean((1, 2)))


def _painted(demo_arrays) -> tuple[np.ndarray, np.ndarray]:
    """Demo masks with their images painted: lesion 250, the rest 100 (all inside the field of view)."""
    masks = demo_arrays.masks
    return np.where(masks[..., None] > 0, 250, 100).repeat(3, -1).astype(np.uint8), masks


def test_device_copy_paste_puts_the_donor_lesion_under_the_new_mask(demo_arrays):
    images, masks = _painted(demo_arrays)
    paster = DeviceCopyPaster(images, masks, CopyPasteConfig(enabled=True, prob=1.0, feather_sigma=0.0), CPU)
    idx = np.arange(len(images))
    out_img, out_mask = (t.numpy() for t in paster(torch.from_numpy(images), torch.from_numpy(masks), idx,
                                                   np.random.default_rng(0)))
    assert np.all(out_mask >= masks)  # union: no lesion pixel is lost
    new = (out_mask > 0) & (masks == 0)
    assert new.any((1, 2)).mean() > 0.8  # nearly every sample got a lesion
    changed = (out_img != images).any(-1)
    # without feathering only pixels under the new mask changed, and every new lesion pixel did ...
    assert not (changed & (out_mask == 0)).any() and not (new & ~changed).any()
    assert out_img[new].min() >= 175  # ... each mostly the donor's lesion (bilinear rim at least half lesion)
    again = paster(torch.from_numpy(images), torch.from_numpy(masks), idx, np.random.default_rng(0))
    assert np.array_equal(again[0].numpy(), out_img) and np.array_equal(again[1].numpy(), out_mask)
    none = DeviceCopyPaster(images, masks, CopyPasteConfig(enabled=True, prob=0.0), CPU)
    same = none(torch.from_numpy(images), torch.from_numpy(masks), idx, np.random.default_rng(0))
    assert np.array_equal(same[0].numpy(), images) and np.array_equal(same[1].numpy(), masks)


def test_device_copy_paste_feathers_near_the_lesion_and_stays_in_the_field_of_view(demo_arrays):
    images, masks = _painted(demo_arrays)
    dst = images.copy()
    dst[:, :, :12] = 0  # a black border: outside the field of view
    paster = DeviceCopyPaster(images, masks, CopyPasteConfig(enabled=True, prob=1.0, scale=(0.5, 0.7)), CPU)
    out_img, out_mask = (t.numpy() for t in paster(torch.from_numpy(dst), torch.from_numpy(masks),
                                                   np.arange(len(dst)), np.random.default_rng(1)))
    new = (out_mask > 0) & (masks == 0)
    assert new.any() and not new[:, :, :12].any()
    changed = (out_img != dst).any(-1)
    rim = np.stack([ndimage.binary_dilation(m > 0, iterations=4) for m in out_mask])
    assert changed.any() and not (changed & ~rim).any()


def test_device_copy_paste_takes_synthetic_donors_in_their_share(demo_arrays):
    real_img, masks = _painted(demo_arrays)  # real lesions 250
    syn_img = np.where(masks[..., None] > 0, 30, 100).repeat(3, -1).astype(np.uint8)  # generated lesions 30
    dst, dst_mask = torch.full(real_img.shape, 100, dtype=torch.uint8), torch.zeros(masks.shape, dtype=torch.uint8)
    idx = np.arange(len(masks))
    for share, lo, hi in ((None, 175, 255), (1.0, 0, 80)):
        cfg = CopyPasteConfig(enabled=True, prob=1.0, feather_sigma=0.0, synthetic_donors=share)
        paster = DeviceCopyPaster(real_img, masks, cfg, CPU, extra=(syn_img, masks))
        out_img, out_mask = (t.numpy() for t in paster(dst, dst_mask, idx, np.random.default_rng(0)))
        core = np.stack([ndimage.binary_erosion(m > 0, iterations=1) for m in out_mask])
        assert core.any() and lo <= out_img[core, 0].min() and out_img[core, 0].max() <= hi
