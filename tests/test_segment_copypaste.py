"""Copy-paste baseline: a pasted lesion's mask matches the pixels that changed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesionforge.segment.config import CopyPasteConfig
from lesionforge.segment.copypaste import CopyPaster, paste_lesion, transformed_lesion


def test_pasted_lesion_mask_matches_pasted_pixels(demo_arrays):
    src, dst = 0, len(demo_arrays.ids) - 1  # the last demo images are lesion-free
    assert demo_arrays.masks[dst].sum() == 0
    rng = np.random.default_rng(0)
    patch, hard = transformed_lesion(demo_arrays.images[src], demo_arrays.masks[src], rng, (0.8, 1.2))
    img, mask, ok = paste_lesion(demo_arrays.images[dst], demo_arrays.masks[dst], patch, hard, rng, feather_sigma=1.0)
    assert ok
    assert mask.sum() == hard.sum()  # the whole lesion landed inside the image
    changed = np.abs(img.astype(int) - demo_arrays.images[dst].astype(int)).max(axis=-1) > 0
    # every changed pixel lies on the lesion or within the feathered rim (3 sigma) around it
    assert not (changed & ~ndimage.binary_dilation(mask, iterations=3)).any()
    # the lesion's interior (away from the soft edge) is the donor's colour, not the background's
    core = ndimage.binary_erosion(mask, iterations=2)
    assert core.any() and changed[core].all()


def test_paste_stays_inside_field_of_view(demo_arrays):
    img = demo_arrays.images[-1].copy()
    img[:, :16] = 0  # a black border: outside the field of view
    rng = np.random.default_rng(1)
    for _ in range(5):
        patch, hard = transformed_lesion(demo_arrays.images[1], demo_arrays.masks[1], rng, (0.5, 0.6))
        _, mask, ok = paste_lesion(img, np.zeros(img.shape[:2], np.uint8), patch, hard, rng, fov_threshold=12)
        assert not ok or mask[:, :16].sum() == 0


def test_batch_copy_paste_adds_lesions_by_union(demo_arrays):
    paster = CopyPaster(demo_arrays.images, demo_arrays.masks, CopyPasteConfig(enabled=True, prob=1.0))
    idx = np.arange(len(demo_arrays.ids))
    images, masks = paster(demo_arrays.images, demo_arrays.masks, idx, np.random.default_rng(0))
    assert np.all(masks >= demo_arrays.masks)  # union: no lesion pixel is ever lost
    assert masks.sum() > demo_arrays.masks.sum()
    assert (images != demo_arrays.images).any(axis=(1, 2, 3)).mean() > 0.8  # nearly every sample got a lesion
    none = CopyPaster(demo_arrays.images, demo_arrays.masks, CopyPasteConfig(enabled=True, prob=0.0))
    same_img, same_mask = none(demo_arrays.images, demo_arrays.masks, idx, np.random.default_rng(0))
    assert np.array_equal(same_img, demo_arrays.images) and np.array_equal(same_mask, demo_arrays.masks)


def _coloured(demo_arrays, lesion: int) -> tuple[np.ndarray, np.ndarray]:
    """Demo masks with their images painted: lesion ``lesion``, the rest 100 (all inside the field of view)."""
    masks = demo_arrays.masks
    return np.where(masks[..., None] > 0, lesion, 100).repeat(3, -1).astype(np.uint8), masks


def test_synthetic_donors_paste_generated_lesions_in_their_share(demo_arrays):
    # real lesions painted 250, the synthetic pairs' lesions 30: a pasted lesion's colour tells its donor
    real_img, masks = _coloured(demo_arrays, 250)
    syn_img, _ = _coloured(demo_arrays, 30)
    dst, dst_mask = np.full_like(real_img, 100), np.zeros_like(masks)  # lesion-free targets

    def pasted_means(share: float | None, seed: int) -> np.ndarray:
        """Mean colour of each pasted lesion's interior."""
        cfg = CopyPasteConfig(enabled=True, prob=1.0, feather_sigma=0.0, synthetic_donors=share)
        paster = CopyPaster(real_img, masks, cfg, extra=(syn_img, masks))
        out, out_mask = paster(dst, dst_mask, np.arange(len(masks)), np.random.default_rng(seed))
        cores = [ndimage.binary_erosion(m > 0, iterations=1) for m in out_mask]
        return np.array([o[c, 0].mean() for o, c in zip(out, cores, strict=True) if c.any()])

    assert (pasted_means(None, 0) > 200).all()  # None: real donors only, as before
    assert (pasted_means(1.0, 0) < 80).all()  # 1: every lesion a generated one
    half = np.concatenate([pasted_means(0.5, s) for s in range(10)])
    assert len(half) > 100 and 0.35 < (half < 140).mean() < 0.65  # about half the pastes took a generated lesion


def test_synthetic_donors_none_makes_the_classical_draws(demo_arrays):
    # the extra donors change nothing while their share is None or 0: the same bytes as the classical paster
    idx = np.arange(len(demo_arrays.ids))
    plain = CopyPaster(demo_arrays.images, demo_arrays.masks, CopyPasteConfig(enabled=True, prob=0.7))
    a = plain(demo_arrays.images, demo_arrays.masks, idx, np.random.default_rng(3))
    for share in (None, 0.0):
        cfg = CopyPasteConfig(enabled=True, prob=0.7, synthetic_donors=share)
        extra = CopyPaster(demo_arrays.images, demo_arrays.masks, cfg, extra=(demo_arrays.images[::-1],
                                                                               demo_arrays.masks[::-1]))
        b = extra(demo_arrays.images, demo_arrays.masks, idx, np.random.default_rng(3))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_synthetic_donors_left_out_of_dumps_while_unset():
    # older configs' hashes and cache keys stay as they were
    assert "synthetic_donors" not in CopyPasteConfig().model_dump()
    assert CopyPasteConfig(synthetic_donors=0.5).model_dump()["synthetic_donors"] == 0.5
