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
