"""A procedural demo dataset: tissue-like backgrounds with blob-shaped lesions, generated in seconds.

Used by ``lesionforge demo`` and by the tests, so neither needs files. Lesions are darker/redder,
textured blobs of varied size (small ones included); some images are lesion-free backgrounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Sample, write_manifest


@dataclass
class DemoArrays:
    """``images`` uint8 (N, H, W, 3); ``masks`` uint8 (N, H, W) in {0, 1}; ``ids``."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


def demo_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A pink mucosa-like texture with folds and a vignette, float (H, W, 3) in [0, 1]."""
    base = np.array([0.80, 0.45, 0.40]) + rng.uniform(-0.05, 0.05, 3)
    folds = _smooth_noise(rng, size, size / 8)
    fine = _smooth_noise(rng, size, 1.2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    vignette = 1.0 - 0.9 * (xx**2 + yy**2)
    shade = (1 + 0.12 * folds + 0.04 * fine) * vignette
    img = base[None, None, :] * shade[..., None]
    # specular highlights, a common colonoscopy artefact
    spec = _smooth_noise(rng, size, 1.5) > 2.6
    img[spec] = 0.97
    return np.clip(img, 0, 1)


def demo_lesion_mask(rng: np.random.Generator, size: int, area_frac: float | None = None) -> np.ndarray:
    """A random blob (deformed ellipse) covering about ``area_frac`` of the image, uint8 (H, W)."""
    if area_frac is None:
        area_frac = float(np.exp(rng.uniform(np.log(0.005), np.log(0.25))))
    r = np.sqrt(area_frac * size * size / np.pi)
    cy, cx = rng.uniform(r + 1, size - r - 1, 2) if r < size / 2 - 1 else (size / 2, size / 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    theta = rng.uniform(0, np.pi)
    ax = rng.uniform(0.7, 1.3)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / (r * ax)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) * ax / r
    wobble = 0.25 * _smooth_noise(rng, size, max(size / 10, 1.0))
    m = (u**2 + v**2) < (1 + wobble)
    m = ndimage.binary_opening(m, iterations=1) if m.sum() > 20 else m
    if not m.any():
        m[int(cy), int(cx)] = True
    return m.astype(np.uint8)


def paint_lesion(rng: np.random.Generator, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paint a textured, darker-red lesion into ``background`` (float (H, W, 3)) inside ``mask``."""
    size = mask.shape[0]
    soft = ndimage.gaussian_filter(mask.astype(float), 0.8)
    tex = _smooth_noise(rng, size, 1.0)
    colour = np.array([0.62, 0.22, 0.20]) + rng.uniform(-0.06, 0.06, 3)
    lesion = colour[None, None, :] * (1 + 0.15 * tex)[..., None]
    # a rim highlight makes boundaries visible, as on real polyps
    rim = np.clip(soft - ndimage.gaussian_filter(soft, 2.0), 0, 1)[..., None]
    out = background * (1 - soft[..., None]) + lesion * soft[..., None] + 0.4 * rim
    return np.clip(out, 0, 1)


def make_demo_arrays(n: int = 48, size: int = 64, normal_fraction: float = 0.2, seed: int = 0) -> DemoArrays:
    """Generate ``n`` demo pairs; about ``normal_fraction`` of them are lesion-free (empty mask)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    n_normal = int(round(n * normal_fraction))
    for i in range(n):
        bg = demo_background(rng, size)
        if i >= n - n_normal:
            img, m = bg, np.zeros((size, size), np.uint8)
        else:
            m = demo_lesion_mask(rng, size)
            if rng.random() < 0.2:  # some images have two lesions
                m = np.maximum(m, demo_lesion_mask(rng, size, area_frac=rng.uniform(0.005, 0.03)))
            img = paint_lesion(rng, bg, m)
        images[i] = (img * 255 + 0.5).astype(np.uint8)
        masks[i] = m
    return DemoArrays(images, masks, [f"demo_{i:04d}" for i in range(n)])


def write_demo_dataset(
    root: str | Path, n: int = 48, size: int = 64, normal_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Write the demo data as ``images/`` + ``masks/`` (lesion pairs) and ``normal/`` (lesion-free images).

    Also writes ``manifest.jsonl``. Returns ``root``.
    """
    root = Path(root)
    arrays = make_demo_arrays(n, size, normal_fraction, seed)
    samples = []
    for img, m, sid in zip(arrays.images, arrays.masks, arrays.ids, strict=True):
        if m.any():
            write_image(root / "images" / f"{sid}.png", img)
            write_mask(root / "masks" / f"{sid}.png", m)
            samples.append(Sample(id=sid, image=f"images/{sid}.png", masks=[f"masks/{sid}.png"]))
        else:
            write_image(root / "normal" / f"{sid}.png", img)
            samples.append(Sample(id=sid, image=f"normal/{sid}.png", has_mask=False, **{"class": "normal"}))
    write_manifest(root / "manifest.jsonl", samples)
    return root
