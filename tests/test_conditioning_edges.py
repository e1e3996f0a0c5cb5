"""Edge maps: image edges from Canny plus the lesion boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionforge.conditioning.edges import edge_map, edge_maps, mask_boundary
from lesionforge.data.arrays import image_to_tensor, mask_to_tensor


def _square_image(size: int = 32) -> np.ndarray:
    img = np.full((size, size, 3), 60, np.uint8)
    img[8:24, 8:24] = 200
    return img


def test_edges_follow_image_contrast():
    flat = edge_map(np.full((32, 32, 3), 120, np.uint8), None)
    square = edge_map(_square_image(), None)
    assert flat.dtype == np.float32 and flat.shape == (32, 32)
    assert flat.sum() == 0
    assert square.sum() > 20
    ys, xs = np.nonzero(square)
    # every edge pixel lies within a pixel or two of the square's outline
    assert ys.min() >= 6 and ys.max() <= 25 and xs.min() >= 6 and xs.max() <= 25
    assert square[14:18, 14:18].sum() == 0


def test_mask_boundary_is_added_on_a_flat_image():
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 12:22] = 1
    edges = edge_map(np.full((32, 32, 3), 120, np.uint8), mask)
    np.testing.assert_array_equal(edges > 0, mask_boundary(mask))
    assert edges[10, 12:22].all() and edges[19, 12:22].all()
    assert edges[12:18, 14:20].sum() == 0
    assert set(np.unique(edges)) <= {0.0, 1.0}


def test_edge_map_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask shape"):
        edge_map(_square_image(), np.zeros((16, 16), np.uint8))


def test_batched_edge_maps_match_single(demo_arrays):
    images, masks = demo_arrays.images[:2], demo_arrays.masks[:2]
    out = edge_maps(image_to_tensor(images), mask_to_tensor(masks))
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    for i in range(2):
        np.testing.assert_array_equal(out[i, 0].numpy(), edge_map(images[i], masks[i]))
    no_mask = edge_maps(image_to_tensor(images), None)
    assert (no_mask <= out).all() and out.sum() > no_mask.sum()
