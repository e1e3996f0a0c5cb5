"""Preprocessing to the profile resolution, an on-disk cache, and array <-> tensor conversion.

Aspect handling: images are resized to a square ``resolution`` by stretching (the common practice for
polyp and ultrasound benchmarks; lesion shapes deform slightly but no pixels are lost to padding or crop).
``aspect="pad"`` instead letterboxes with zeros (the padded area gets mask 0).
Masks are resized with area interpolation then thresholded at 0.5, which keeps small lesions better than
nearest-neighbour sampling.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from lesionforge.data.io import read_image, union_masks
from lesionforge.data.manifest import Sample, read_set
from lesionforge.utils import atomic_path


def default_cache_dir() -> Path:
    """``$LESIONFORGE_CACHE`` or ``~/.cache/lesionforge`` (read at call time, so tests can redirect it)."""
    return Path(os.environ.get("LESIONFORGE_CACHE", Path.home() / ".cache" / "lesionforge"))


@dataclass
class PairArrays:
    """Preprocessed samples in memory.

    ``images`` uint8 (N, H, W, C); ``masks`` uint8 (N, H, W) ({0, 1} or labels; zeros for image-only
    samples); ``has_mask`` bool (N,); ``ids`` and ``classes`` lists of length N.
    """

    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    ids: list[str]
    classes: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: list[int] | np.ndarray) -> PairArrays:
        idx = np.asarray(index, dtype=int)
        return PairArrays(
            self.images[idx], self.masks[idx], self.has_mask[idx],
            [self.ids[i] for i in idx], [self.classes[i] for i in idx],
        )

    def select_ids(self, ids: list[str]) -> PairArrays:
        pos = {s: i for i, s in enumerate(self.ids)}
        missing = [s for s in ids if s not in pos]
        if missing:
            raise KeyError(f"ids not in data: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return self.subset([pos[s] for s in ids])

    @classmethod
    def concat(cls, parts: list[PairArrays | None]) -> PairArrays:
        """The parts one after another; ``None`` and empty parts are skipped, and nothing left gives an empty
        set (0 samples of 1 x 1 px, which :meth:`subset` and ``len`` handle like any other)."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return cls(np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0, 1, 1), np.uint8), np.zeros(0, bool), [], [])
        return cls(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                   np.concatenate([p.has_mask for p in parts]), [i for p in parts for i in p.ids],
                   [c for p in parts for c in p.classes])


def resize_pair(
    image: np.ndarray, mask: np.ndarray, resolution: int, aspect: Literal["stretch", "pad"] = "stretch"
) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image`` (H, W, C) uint8 and ``mask`` (H, W) to ``resolution`` square."""
    if aspect == "pad":
        h, w = mask.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        img_p = np.zeros((side, side, image.shape[-1]), image.dtype)
        img_p[top : top + h, left : left + w] = image
        m_p = np.zeros((side, side), mask.dtype)
        m_p[top : top + h, left : left + w] = mask
        image, mask = img_p, m_p
    shrink = resolution < max(mask.shape)
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    img = cv2.resize(image, (resolution, resolution), interpolation=interp)
    if img.ndim == 2:
        img = img[..., None]
    if mask.max() <= 1:
        m = cv2.resize(mask.astype(np.float32), (resolution, resolution), interpolation=interp) >= 0.5
        m = m.astype(np.uint8)
    else:  # label map: nearest keeps labels valid
        m = cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_NEAREST)
    return img, m


def load_sample(sample: Sample, channels: int | None = None, multiclass: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample at full size: image uint8 (H, W, C) and merged mask uint8 (H, W).

    Volume slices (``sample.slice``) are read through :mod:`lesionforge.data.volumes`.
    """
    if sample.slice is not None:
        from lesionforge.data.volumes import read_slice

        return read_slice(sample, channels=channels, multiclass=multiclass)
    image = read_image(sample.image, channels=channels)
    shape = image.shape[:2]
    if not sample.has_mask:
        return image, np.zeros(shape, np.uint8)
    return image, union_masks(sample.masks, shape, multiclass=multiclass)


def _cache_key(samples: list[Sample], resolution: int, channels: int | None, aspect: str, multiclass: bool) -> str:
    h = hashlib.sha256(json.dumps([resolution, channels, aspect, multiclass, 2]).encode())
    for s in samples:
        h.update(json.dumps(s.to_row(), sort_keys=True).encode())
        for p in [s.image, *s.masks]:
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_arrays(
    samples: list[Sample],
    resolution: int,
    channels: int | None = 3,
    aspect: Literal["stretch", "pad"] = "stretch",
    multiclass: bool = False,
    cache_dir: str | Path | None | Literal["default"] = "default",
    progress: bool = False,
) -> PairArrays:
    """Decode, merge and resize ``samples`` into a :class:`PairArrays`; cached as ``.npz`` keyed by the
    sample list, file sizes/mtimes and settings, so repeated runs do not decode JPEGs again.
    ``channels=None`` keeps each file's own channel count (only valid if they all agree)."""
    if not samples:
        raise ValueError("load_arrays: no samples given")
    cache_file = None
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"arrays-{_cache_key(samples, resolution, channels, aspect, multiclass)}.npz"
        if cache_file.is_file():
            z = np.load(cache_file, allow_pickle=False)
            return PairArrays(
                z["images"], z["masks"], z["has_mask"], [str(s) for s in z["ids"]],
                [None if c == "" else str(c) for c in z["classes"]],
            )
    imgs, msks = [], []
    it = samples
    if progress:
        from lesionforge.progress import track

        it = track(samples, description=f"Preprocessing to {resolution}px")
    for s in it:
        img, m = load_sample(s, channels=channels, multiclass=multiclass)
        img, m = resize_pair(img, m, resolution, aspect)
        imgs.append(img)
        msks.append(m)
    if len({i.shape[-1] for i in imgs}) > 1:
        raise ValueError("images have different channel counts; pass channels=1 or channels=3")
    out = PairArrays(
        np.stack(imgs), np.stack(msks), np.array([s.has_mask for s in samples]),
        [s.id for s in samples], [s.label_class for s in samples],
    )
    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.savez(
                f, images=out.images, masks=out.masks, has_mask=out.has_mask, ids=np.array(out.ids),
                classes=np.array([c or "" for c in out.classes]),
            )
    return out


def manifest_arrays(
    path: str | Path, resolution: int, channels: int | None = 3, *, origin: str | None = None,
    split: str | None = None, kept_only: bool = False, labelled_only: bool = False, progress: bool = False,
) -> PairArrays:
    """The rows :func:`~lesionforge.data.manifest.read_set` selects from a manifest (or a synthetic set folder),
    preprocessed to ``resolution`` by :func:`load_arrays` (cached)."""
    samples = read_set(path, origin=origin, split=split, kept_only=kept_only, labelled_only=labelled_only)
    return load_arrays(samples, resolution, channels, progress=progress)


def image_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) or (H, W, C) -> float32 (N, C, H, W) / (C, H, W) in [-1, 1] (a tensor stays on its
    device)."""
    t = _as_tensor(images).float() / 127.5 - 1.0
    return t.movedim(-1, -3)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) or (C, H, W) in [-1, 1] -> uint8 (N, H, W, C) / (H, W, C)."""
    a = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a.movedim(-3, -1).cpu().numpy()


def mask_to_tensor(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (H, W) -> float32 (N, 1, H, W) / (1, H, W) in {0, 1} (a tensor stays on its device)."""
    return _as_tensor(masks).float().unsqueeze(-3)


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
