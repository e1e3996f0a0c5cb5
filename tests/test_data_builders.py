"""Builders of tiny datasets, good and deliberately broken, for the data tests (this module holds no tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lesionforge.data.demo import make_demo_arrays


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write an array with Pillow (format from the suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def demo_pairs(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` lesion pairs at 32 px: images uint8 (n, 32, 32, 3), masks uint8 (n, 32, 32) in {0, 1}."""
    a = make_demo_arrays(n=n, size=32, normal_fraction=0.0, seed=seed)
    return a.images, a.masks


def write_pairs(root: Path, names: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``images/<name>.png`` + ``masks/<name>.png`` for each name; returns the arrays written."""
    images, masks = demo_pairs(len(names), seed)
    for name, img, m in zip(names, images, masks, strict=True):
        save(root / "images" / f"{name}.png", img)
        save(root / "masks" / f"{name}.png", m * 255)
    return images, masks


def write_broken_dataset(root: Path) -> Path:
    """One folder holding every problem the check knows, each in its own named file."""
    images, masks = write_pairs(root, ["ok_0", "ok_1", "ok_2", "dup_a"], seed=1)
    extra, extra_masks = demo_pairs(8, seed=2)
    save(root / "images" / "dup_b.png", images[3])  # exact duplicate of dup_a
    near = np.clip(images[3].astype(int) + 6, 0, 255).astype(np.uint8)
    save(root / "images" / "near_b.png", near)  # near-duplicate of dup_a
    for name in ("dup_b", "near_b"):
        save(root / "masks" / f"{name}.png", masks[3] * 255)
    save(root / "images" / "missing.png", extra[0])  # no mask
    save(root / "masks" / "ghost_mask.png", extra_masks[1] * 255)  # no image
    save(root / "images" / "sizemm.png", extra[2])
    save(root / "masks" / "sizemm.png", (extra_masks[2][::2, ::2]) * 255)  # 16x16 mask for a 32x32 image
    png = save(root / "images" / "trunc.png", extra[3]).read_bytes()
    (root / "images" / "trunc.png").write_bytes(png[: len(png) // 2])  # truncated file
    save(root / "masks" / "trunc.png", extra_masks[3] * 255)
    save(root / "images" / "twoch.png", np.stack([extra[4][..., 0], np.full((32, 32), 255, np.uint8)], -1))
    save(root / "masks" / "twoch.png", extra_masks[4] * 255)  # image above is grey + alpha: 2 channels
    save(root / "images" / "grey.png", extra[5])
    grey = extra_masks[5] * 255
    grey[:4] = 128  # a true grey level: neither background nor lesion
    save(root / "masks" / "grey.png", grey)
    save(root / "images" / "jpegm.png", extra[6])
    save(root / "masks" / "jpegm.jpg", extra_masks[6] * 255, quality=90)  # JPEG noise near 0 and 255
    save(root / "images" / "empty.png", extra[7])
    save(root / "masks" / "empty.png", np.zeros((32, 32), np.uint8))  # lesion-free
    return root
