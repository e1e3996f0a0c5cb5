"""Where the masks of new synthetic samples come from, and where in an image a lesion may go.

All masks are uint8 (H, W) in {0, 1}; all randomness comes from a ``numpy.random.Generator`` passed in,
so a seed reproduces every mask. Size bands are lesion area shares of the image: < 1 %, 1-5 %, > 5 %
(:mod:`lesionforge.data.bands`), as in the benchmark protocol.

Mask sources (the :class:`MaskSource` protocol) return ``(mask, info)`` pairs whose ``info`` goes into the
provenance of the synthetic sample: :class:`RealJitterSource` (real masks, randomly deformed) and
:class:`SizeControlledSource` (lesions of a drawn target size, shaped like real ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from skimage.morphology import disk, remove_small_objects

from lesionforge.data.bands import BAND_EDGES, band_index, band_of
from lesionforge.errors import ConfigError


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return mask > 0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the non-zero pixels, end-exclusive."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _crop(mask: np.ndarray) -> np.ndarray:
    y0, y1, x0, x1 = _bbox(mask)
    return mask[y0:y1, x0:x1]


def _paste(crop: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return out


def _fit(crop: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``crop`` to at most ``shape`` (a lesion grown past the image loses its rim, not all)."""
    h, w = min(crop.shape[0], shape[0]), min(crop.shape[1], shape[1])
    top, left = (crop.shape[0] - h) // 2, (crop.shape[1] - w) // 2
    return crop[top : top + h, left : left + w]


def _tidy(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Fill holes and drop specks below ``min_pixels``; keep the largest part if all are specks."""
    filled = ndimage.binary_fill_holes(mask)
    kept = remove_small_objects(filled, max_size=min_pixels - 1) if min_pixels > 1 else filled
    return kept if kept.any() else _largest(filled)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _deform(crop: np.ndarray, rng: np.random.Generator, angle: float, scale: float, elastic: bool) -> np.ndarray:
    """Rotate/scale ``crop`` (bool (h, w)) about its centre on a canvas large enough, then deform elastically."""
    side = int(np.ceil(max(crop.shape) * 1.5 * max(scale, 1.0))) + 4
    canvas = np.zeros((side, side), np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, scale)
    warped = cv2.warpAffine(canvas, matrix, (side, side), flags=cv2.INTER_LINEAR)
    if elastic and max(crop.shape) >= 6:
        from monai.transforms import Rand2DElastic  # imported here: monai takes seconds to import

        extent = float(max(crop.shape))
        # control points a third of the lesion apart, displaced by a few % of its size: shape varies, area stays
        spacing = max(3.0, extent / 3)
        deform = Rand2DElastic(spacing=(spacing, spacing), magnitude_range=(0.0, 0.06 * extent), prob=1.0,
                               mode="bilinear", padding_mode="zeros")
        deform.set_random_state(seed=_seed(rng))
        warped = np.asarray(deform(warped[None]))[0]
    # keep the k most-covered pixels, k = scaled area: a 0.5 threshold would erode small lesions
    target = min(round(float(crop.sum()) * scale**2), int((warped > 0).sum()))
    return _top_k(warped, max(target, 1)) & (warped > 0)


def jitter_mask(
    mask: np.ndarray,
    rng: np.random.Generator,
    max_rotate: float = 30.0,
    scale: tuple[float, float] = (0.8, 1.2),
    max_shift: float = 0.1,
    elastic: bool = True,
) -> np.ndarray:
    """A randomly deformed copy of a lesion mask.

    ``mask`` (H, W) binary. The lesion (all its parts together) is rotated by up to ``max_rotate`` degrees,
    scaled by a factor in ``scale`` (linear; area changes by its square), elastically deformed (MONAI
    ``Rand2DElastic``) and shifted by up to ``max_shift`` of the image size, then holes are filled and
    specks dropped. The result stays inside the image and is never empty when the input is not; an empty
    input gives an empty mask. Returns uint8 (H, W) in {0, 1}.
    """
    m = _binary(mask)
    if not m.any():
        return np.zeros(m.shape, np.uint8)
    crop = _crop(m)
    angle = float(rng.uniform(-max_rotate, max_rotate))
    factor = float(rng.uniform(*scale))
    moved = _tidy(_deform(crop, rng, angle, factor, elastic), min_pixels=2)
    moved = _fit(_crop(moved), m.shape)
    y0, _, x0, _ = _bbox(m)
    h, w = m.shape
    # keep the lesion centre near the original one, shifted, but its box fully inside the image
    cy = (y0 + crop.shape[0] / 2) + rng.uniform(-max_shift, max_shift) * h
    cx = (x0 + crop.shape[1] / 2) + rng.uniform(-max_shift, max_shift) * w
    top = int(np.clip(round(cy - moved.shape[0] / 2), 0, h - moved.shape[0]))
    left = int(np.clip(round(cx - moved.shape[1] / 2), 0, w - moved.shape[1]))
    return _paste(moved.astype(np.uint8), m.shape, top, left)


def shape_bank_from_masks(masks: Sequence[np.ndarray] | np.ndarray, min_pixels: int = 9) -> list[np.ndarray]:
    """Lesion shapes from real masks: every connected lesion of >= ``min_pixels`` cropped to its box.

    ``masks`` (N, H, W) or a list of (H, W). Returns a list of uint8 (h, w) crops in {0, 1}.
    """
    bank = []
    for mask in masks:
        labels, n = ndimage.label(_binary(mask))
        for sl, index in zip(ndimage.find_objects(labels), range(1, n + 1), strict=True):
            part = labels[sl] == index
            if part.sum() >= min_pixels:
                bank.append(part.astype(np.uint8))
    return bank


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest-scoring pixels (bool mask): hits a target area exactly, ties aside.
    Pixels scored ``-inf`` are never chosen, so ``k`` is capped at the number of finite scores."""
    k = int(np.clip(k, 1, max(1, np.isfinite(score).sum())))
    return (score >= np.partition(score.ravel(), score.size - k)[score.size - k]) & np.isfinite(score)


def _blob_score(rng: np.random.Generator, side: int) -> np.ndarray:
    """Radial falloff plus smooth noise: thresholding it gives a rounded, irregular lesion."""
    yy, xx = (np.mgrid[0:side, 0:side] - (side - 1) / 2) / (side / 2)
    ratio, theta = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / ratio
    noise = ndimage.gaussian_filter(rng.standard_normal((side, side)), side / 6, mode="wrap")
    return -(u**2 + v**2) + 0.25 * noise / (noise.std() + 1e-8)


def _shape_score(shape: np.ndarray, target: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """A bank shape randomly flipped/rotated by 90 degrees and resized so its area is near ``target`` px."""
    if not shape.any():
        raise ValueError("shape bank entry is empty; build the bank with shape_bank_from_masks")
    shape = np.rot90(_crop(shape), int(rng.integers(4)))
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    factor = np.sqrt(target / max(float(shape.sum()), 1.0))
    # never larger than the image: a too-big lesion is shrunk to fit and loses area instead of its outline
    factor = min(factor, (size - 2) / max(shape.shape))
    h, w = (max(1, round(d * factor)) for d in shape.shape)
    padded = np.pad(shape.astype(np.float32), 1)
    resized = cv2.resize(padded, (w + 2, h + 2), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    smooth = ndimage.gaussian_filter(resized.astype(np.float64), 0.5)
    # flat interiors tie; a tiny pull towards the centre (and noise, for symmetric ties) breaks them, so
    # top-k picks exactly k pixels and keeps the lesion compact
    yy, xx = np.mgrid[0 : smooth.shape[0], 0 : smooth.shape[1]]
    smooth -= 1e-4 * np.hypot(yy - (smooth.shape[0] - 1) / 2, xx - (smooth.shape[1] - 1) / 2) / max(smooth.shape)
    smooth += 1e-6 * rng.random(smooth.shape)
    return np.where(smooth > 1e-3, smooth, -np.inf)  # only the shape and its blurred rim may be chosen


def size_controlled_mask(
    rng: np.random.Generator, size: int, area_frac: float, shape_bank: list[np.ndarray] | None = None
) -> np.ndarray:
    """One lesion covering about ``area_frac`` (in (0, 1)) of a ``size`` x ``size`` image, at a random place.

    With a ``shape_bank`` (crops from :func:`shape_bank_from_masks`) a random real shape is flipped/rotated
    and rescaled to the target area; without one a smooth random blob is drawn. The lesion is the ``k``
    highest pixels of a smoothed score map, ``k = area_frac * size**2``, so the area is hit to within a few
    pixels (less when a bank shape must shrink to fit the image). Returns uint8 (size, size) in {0, 1}.
    """
    return _size_controlled(rng, size, area_frac, shape_bank)[0]


def _size_controlled(
    rng: np.random.Generator, size: int, area_frac: float, shape_bank: list[np.ndarray] | None
) -> tuple[np.ndarray, int | None]:
    if not 0.0 < area_frac < 1.0:
        raise ValueError(f"area_frac must be in (0, 1), got {area_frac}")
    target = max(1, round(area_frac * size * size))
    index = None
    if shape_bank:
        index = int(rng.integers(len(shape_bank)))
        score = _shape_score(_binary(shape_bank[index]), target, rng, size)
    else:
        side = min(size, int(np.ceil(np.sqrt(target / np.pi) * 2.6)) + 3)
        score = _blob_score(rng, side)
    canvas = np.full((size, size), -np.inf)  # float64: the tie-breaking noise is below float32 precision
    h, w = min(score.shape[0], size), min(score.shape[1], size)
    top, left = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
    canvas[top : top + h, left : left + w] = score[:h, :w]
    lesion = _tidy(_top_k(canvas, target), min_pixels=max(1, target // 10))
    return lesion.astype(np.uint8), index


def area_fractions(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Lesion area share of the image of every non-empty mask, float (M,) in (0, 1]."""
    fracs = [float(_binary(m).mean()) for m in masks]
    return np.array([f for f in fracs if f > 0], dtype=np.float64)


class SizeSampler:
    """Draws target lesion areas (share of the image) with small lesions over-sampled.

    The draw picks a size band (< 1 %, 1-5 %, > 5 %) with probability proportional to
    ``(real lesions in the band + 1) * boost``, ``boost = small_boost`` for the two small bands and 1 for
    the large one (or with the given ``band_shares``), then takes a real area from that band with +-15 %
    log-normal jitter (kept in the band), or a log-uniform area in the band when no real lesion falls in
    it. The +1 pseudo-count lets a dataset without tiny lesions still get some. Without real areas every
    band counts as empty.

    Example::

        sampler = SizeSampler(area_fractions(train_masks), small_boost=3.0)
        targets = sampler.sample(np.random.default_rng(0), 16)
    """

    def __init__(
        self,
        real_area_fracs: np.ndarray | Sequence[float] | None = None,
        small_boost: float = 1.0,
        min_frac: float = 0.002,
        max_frac: float = 0.4,
        band_shares: Sequence[float] | None = None,
    ):
        if small_boost <= 0:
            raise ValueError(f"small_boost must be > 0, got {small_boost}")
        if not (0 < min_frac < BAND_EDGES[0] and BAND_EDGES[1] < max_frac < 1):
            raise ValueError(f"need 0 < min_frac < {BAND_EDGES[0]} and {BAND_EDGES[1]} < max_frac < 1")
        areas = np.asarray(real_area_fracs if real_area_fracs is not None else [], dtype=np.float64)
        self.edges = (min_frac, *BAND_EDGES, max_frac)
        band = band_index(np.clip(areas, min_frac, max_frac * 0.999))
        self.band_areas = [areas[band == b] for b in range(3)]
        boost = np.array([small_boost, small_boost, 1.0])
        counts = np.array([len(a) + 1 for a in self.band_areas], dtype=np.float64)
        weights = counts * boost if band_shares is None else np.asarray(band_shares, dtype=np.float64)
        if weights.shape != (3,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"band_shares must be 3 non-negative numbers, not all 0; got {band_shares}")
        self.band_probs = weights / weights.sum()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` target area shares, float (n,) in [min_frac, max_frac]."""
        out = np.empty(n)
        for i in range(n):
            b = int(rng.choice(3, p=self.band_probs))
            lo, hi = self.edges[b], self.edges[b + 1]
            real = self.band_areas[b]
            if len(real):
                value = real[int(rng.integers(len(real)))] * np.exp(rng.normal(0.0, 0.15))
            else:
                value = np.exp(rng.uniform(np.log(lo), np.log(hi)))
            out[i] = np.clip(value, lo, hi * 0.999)
        return out


def field_of_view(
    image: np.ndarray, dark_threshold: int = 8, margin: int | None = None, min_overlay_frac: float = 0.002
) -> np.ndarray:
    """The visible region of an endoscopy or ultrasound frame, where a lesion may be placed.

    ``image`` uint8 (H, W, C) or (H, W). Excluded: uniformly dark regions (< ``dark_threshold``, surviving
    a 5x5 opening, so speckled dark tissue stays) that touch the image border (black borders, corners,
    black overlay boxes; a dark lumen joined to them goes too), bright marks and text inside those borders
    (only the largest visible region is kept), and the bounding box of every saturated green/teal region
    of >= ``min_overlay_frac`` of the image (Kvasir's scope-position box in the lower left). Dark regions
    enclosed by tissue stay visible. The result is eroded by ``margin`` px (default 2 % of the shorter
    side, >= 1); an all-dark image keeps the whole frame. Returns bool (H, W).
    """
    img = image[..., None] if image.ndim == 2 else image[..., :3]
    h, w = img.shape[:2]
    grey = img.max(axis=-1)
    labels, _ = ndimage.label(_uniform_dark(grey, dark_threshold))
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    visible = ndimage.binary_fill_holes(~np.isin(labels, edge_labels[edge_labels > 0]))
    if img.shape[-1] >= 3:
        visible &= ~_overlay_boxes(img, min_overlay_frac)  # after hole filling, which would refill a box
    visible = _largest(visible)
    if not visible.any():
        visible = np.ones((h, w), bool)
    margin = max(1, round(0.02 * min(h, w))) if margin is None else margin
    return ndimage.binary_erosion(visible, disk(margin), border_value=0) if margin > 0 else visible


def _uniform_dark(grey: np.ndarray, threshold: int) -> np.ndarray:
    """Dark pixels in uniform patches: an opening drops speckled dark tissue (deep or shadowed ultrasound),
    then a closing swallows small bright marks (text) written on black padding."""
    pad = 3  # edge padding: morphology must not shrink regions away from the image border
    dark = np.pad(grey < threshold, pad, mode="edge")
    square = np.ones((5, 5), bool)
    dark = ndimage.binary_closing(ndimage.binary_opening(dark, square), square)
    return dark[pad:-pad, pad:-pad]


def _overlay_boxes(rgb: np.ndarray, min_frac: float) -> np.ndarray:
    """Bounding boxes of saturated green-to-teal regions (mucosa is red to yellow, ultrasound grey)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    # OpenCV hue is degrees / 2: 40-100 spans green (80 deg) to teal (200 deg), not yellow-green bile
    green = (hsv[..., 0] >= 40) & (hsv[..., 0] <= 100) & (hsv[..., 1] > 90) & (hsv[..., 2] > 60)
    boxes = np.zeros(green.shape, bool)
    labels, _ = ndimage.label(ndimage.binary_closing(green, iterations=2))
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if (labels[sl] == index).sum() >= min_frac * green.size:
            boxes[sl] = True
    return boxes


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def place_mask(mask: np.ndarray, fov: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Move a lesion mask to a random position where it lies entirely inside ``fov``.

    ``mask`` (H, W) binary, ``fov`` bool (H, W) of the same shape. Every position is tested at once (a
    correlation of the lesion with the outside of the FOV), so the answer is exact: None only when the
    lesion fits nowhere. Returns uint8 (H, W) in {0, 1}.
    """
    m = _binary(mask)
    if m.shape != fov.shape:
        raise ValueError(f"place_mask: mask shape {m.shape} differs from fov shape {fov.shape}")
    if not m.any():
        return None
    crop = _crop(m)
    if crop.shape[0] > m.shape[0] or crop.shape[1] > m.shape[1]:
        return None
    outside = (~fov.astype(bool)).astype(np.float64)
    # overlap[t, l] = lesion pixels outside the FOV when the crop's top-left corner is at (t, l)
    overlap = fftconvolve(outside, crop[::-1, ::-1].astype(np.float64), mode="valid")
    free = np.argwhere(overlap < 0.5)
    if len(free) == 0:
        return None
    top, left = free[int(rng.integers(len(free)))]
    return _paste(crop.astype(np.uint8), m.shape, int(top), int(left))


def clean_generated_mask(
    prob: np.ndarray,
    threshold: float = 0.5,
    opening_radius: int = 1,
    min_area_frac: float = 0.001,
    fill_holes: bool = True,
) -> tuple[np.ndarray, dict]:
    """Turn a generated mask channel into a clean binary lesion mask, and record what was done.

    ``prob`` float (H, W) in [0, 1]. Steps: threshold (``>= threshold``), morphological opening with a disk
    of ``opening_radius`` (removes specks and thin spurs; 0 skips it), removal of connected components below
    ``min_area_frac`` of the image, and hole filling. Returns ``(mask uint8 (H, W) in {0, 1}, info)`` with
    info ``{"threshold", "opening", "removed_components", "removed_pixels", "filled_pixels", "area_frac"}``
    for provenance.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"clean_generated_mask: expected (H, W), got shape {prob.shape}")
    raw = prob >= threshold
    opened = ndimage.binary_opening(raw, disk(opening_radius)) if opening_radius > 0 else raw
    min_pixels = max(1, int(np.ceil(min_area_frac * prob.size)))
    kept = remove_small_objects(opened, max_size=min_pixels - 1) if min_pixels > 1 else opened
    removed = ndimage.label(opened)[1] - ndimage.label(kept)[1]
    final = ndimage.binary_fill_holes(kept) if fill_holes else kept
    info = {
        "threshold": float(threshold),
        "opening": int(opening_radius),
        "removed_components": int(removed),
        "removed_pixels": int(raw.sum() - kept.sum()),
        "filled_pixels": int(final.sum() - kept.sum()),
        "area_frac": float(final.mean()),
    }
    return final.astype(np.uint8), info


class MaskSource(Protocol):
    """Anything that makes ``n`` new lesion masks: ``source(rng, n) -> [(mask uint8 (H, W), info), ...]``.

    ``info`` holds at least ``"mask_source"`` (e.g. ``"jitter"``) and ``"source_id"`` (the real sample the
    mask came from, or None) and is stored in the synthetic sample's provenance.
    """

    def __call__(self, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, dict]]: ...


class RealJitterSource:
    """Real lesion masks, each randomly deformed with :func:`jitter_mask`.

    ``masks`` (N, H, W) or a list of (H, W); ``ids`` the sample ids (length N). Empty masks are skipped;
    ``jitter`` passes options to :func:`jitter_mask`.

    Called as ``source(rng, n)`` each draw picks a mask at random. With ``even``, a synthesis that numbers its
    samples asks :meth:`draw_at` instead: sample ``index`` of a set takes the mask at that place of a pass over all
    masks in a shuffled order (one pass per ``len(masks)`` samples, each pass its own order), so every mask is drawn
    equally often (within one) whatever the set's size, and a sample's mask depends on its index alone (a sharded
    synthesis draws the same set).

    ``weights`` (one whole number >= 1 per mask, default all 1): a mask of weight k is drawn k times as often as
    one of weight 1, at random, or k times in each pass (``even``).
    """

    def __init__(self, masks: Sequence[np.ndarray] | np.ndarray, ids: Sequence[str], even: bool = False,
                 weights: Sequence[int] | None = None, **jitter: object):
        if len(masks) != len(ids) or (weights is not None and len(weights) != len(ids)):
            raise ValueError(f"RealJitterSource: {len(masks)} masks, {len(ids)} ids"
                             + ("" if weights is None else f", {len(weights)} weights"))
        if weights is not None and any(int(w) != w or w < 1 for w in weights):
            raise ValueError(f"RealJitterSource: weights must be whole numbers >= 1, got {sorted(set(weights))}")
        w_all = [1] * len(ids) if weights is None else [int(w) for w in weights]
        kept = [(np.asarray(m), i, w) for m, i, w in zip(masks, ids, w_all, strict=True) if _binary(m).any()]
        if not kept:
            raise ValueError("RealJitterSource: every mask is empty; no lesion to jitter")
        self.masks, self.ids = [k[0] for k in kept], [k[1] for k in kept]
        self.jitter, self.even = jitter, even
        # None keeps the unweighted draws (and so every set drawn before weights existed) exactly as they were
        self.weights = None if weights is None else np.array([k[2] for k in kept])

    def __call__(self, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, dict]]:
        m = len(self.masks)
        p = None if self.weights is None else self.weights / self.weights.sum()
        return [self._jittered(int(rng.integers(m) if p is None else rng.choice(m, p=p)), rng) for _ in range(n)]

    def draw_at(self, rng: np.random.Generator, seed: int, index: int) -> tuple[np.ndarray, dict]:
        """Sample ``index`` of a set drawn with ``seed``: its mask from the shuffled pass it falls in (``even``;
        a pass holds each mask as many times as its weight), jittered with ``rng``."""
        slots = np.arange(len(self.masks)) if self.weights is None else np.repeat(np.arange(len(self.masks)),
                                                                                  self.weights)
        m = len(slots)
        order = np.random.default_rng([seed, index // m, m]).permutation(m)
        return self._jittered(int(slots[order[index % m]]), rng)

    def _jittered(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        mask = jitter_mask(self.masks[i], rng, **self.jitter)
        return mask, {"mask_source": "jitter", "source_id": self.ids[i], "area_frac": float(mask.mean())}


class SizeControlledSource:
    """Lesions of a drawn target size (:class:`SizeSampler`), shaped like real ones from ``shape_bank``
    (or random blobs when it is None or empty), on ``size`` x ``size`` images."""

    def __init__(self, shape_bank: list[np.ndarray] | None, sampler: SizeSampler, size: int):
        self.shape_bank = shape_bank
        self.sampler = sampler
        self.size = size

    def __call__(self, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, dict]]:
        out = []
        for target in self.sampler.sample(rng, n):
            mask, index = _size_controlled(rng, self.size, float(target), self.shape_bank)
            # the band of its target area: a size-controlled mask has no source pair, so a filter keeping a share
            # of each group's draws ranks it among its band's (validate/filter.py _draw_group)
            info = {"mask_source": "size_controlled", "source_id": None, "shape_index": index,
                    "target_area_frac": float(target), "area_frac": float(mask.mean()),
                    "band_drawn": band_of(float(target))}
            out.append((mask, info))
        return out


def build_mask_source(
    kind: str,
    masks: Sequence[np.ndarray] | np.ndarray,
    ids: Sequence[str],
    size: int | None = None,
    small_boost: float = 1.0,
    use_shapes: bool = True,
    jitter: dict | None = None,
    even: bool = False,
    ends_weight: int | None = None,
) -> MaskSource:
    """A mask source by name from real training masks (N, H, W), N may be 0.

    ``"jitter"``: :class:`RealJitterSource` (needs at least one lesion; ``jitter``: :func:`jitter_mask`'s options,
    which no other source takes; ``ends_weight``: the masks of volume slices at a structure's ends, as
    :func:`lesionforge.data.volumes.position_subsets` groups ``ids``, drawn this many times as often). ``"size"``:
    :class:`SizeControlledSource` with the real area distribution boosted by ``small_boost`` and, if
    ``use_shapes``, the real lesion shapes; with no real lesions, random blobs and log-uniform sizes on
    ``size`` x ``size`` images (``size`` defaults to the masks' size). Raises :class:`ConfigError`.
    """
    lesions = [i for i, m in enumerate(masks) if _binary(m).any()]
    if kind == "jitter":
        if not lesions:
            raise ConfigError("mask source 'jitter' needs real lesion masks; none of the masks has a lesion")
        lesion_ids = [ids[i] for i in lesions]
        weights = None if ends_weight is None else _ends_weights(lesion_ids, ends_weight)
        return RealJitterSource([masks[i] for i in lesions], lesion_ids, even=even, weights=weights,
                                **(jitter or {}))
    if jitter or even or ends_weight is not None:
        raise ConfigError(f"mask source {kind!r} takes no jitter options (they deform real masks: source 'jitter')")
    if kind == "size":
        if size is None and len(masks) == 0:
            raise ConfigError("mask source 'size' needs an image size when no real masks are given")
        size = int(np.asarray(masks[0]).shape[0]) if size is None else size
        bank = shape_bank_from_masks(masks) if use_shapes and lesions else None
        sampler = SizeSampler(area_fractions(masks) if lesions else None, small_boost=small_boost)
        return SizeControlledSource(bank, sampler, size)
    raise ConfigError(f"unknown mask source {kind!r}; use 'jitter' or 'size'")


def _ends_weights(ids: list[str], weight: int) -> list[int]:
    """``weight`` for each id among a volume structure's end slices, 1 for the others; a ConfigError where no id
    is a volume slice (the weights would silently do nothing)."""
    from lesionforge.data.volumes import position_subsets  # data.volumes reads files: imported where needed

    groups = position_subsets(ids)
    if not groups["structure-ends"] and not groups["structure-middle"]:
        raise ConfigError("ends_weight weighs the end slices of volume structures, but no labelled mask is a "
                          "volume slice")
    ends = set(groups["structure-ends"])
    return [weight if i in ends else 1 for i in ids]
