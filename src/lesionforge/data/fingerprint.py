"""Dataset fingerprint (in the spirit of nnU-Net): sizes, channels, intensities and lesion statistics, and
the working resolution and channel count that follow from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel

from lesionforge.config import PROFILE_RESOLUTION
from lesionforge.data.arrays import load_sample
from lesionforge.data.bands import BANDS, band_index
from lesionforge.data.io import is_grey
from lesionforge.data.manifest import Sample

#: Lesion area bands as shares of the image, as in the benchmark protocol's miss-rate bands.
#: A lesion needs about this many pixels at the working resolution to stay learnable (a 4x4 blob).
MIN_LESION_PIXELS = 16
#: Components under this many full-size pixels *and* under SPECK_FRACTION of the image are annotation specks
#: (e.g. JPEG-mask noise), not lesions; the fraction keeps real small lesions of tiny images.
MIN_COMPONENT_PIXELS = 10
SPECK_FRACTION = 1e-4
_PIXELS_PER_IMAGE = 2048  # intensity percentiles use a seeded subsample: exact enough, constant memory


class Fingerprint(BaseModel):
    """What :func:`fingerprint` measured. Areas are shares of the image area in [0, 1]."""

    n_images: int
    n_labelled: int
    height: dict[str, float]  # min / median / max, pixels
    width: dict[str, float]
    grey_images: int
    colour_images: int
    intensity_mean: list[float]  # per channel, [0, 255]
    intensity_std: list[float]
    intensity_percentiles: dict[str, float]  # of luminance: p0.5, p50, p99.5
    lesion_free_share: float  # of labelled images
    specks_ignored: int  # tiny mask components (see SPECK_FRACTION), left out of the lesion statistics
    lesions_per_image: dict[str, float]  # mean / median / max connected components per lesion image
    lesion_area_quantiles: dict[str, float]  # per lesion: q05, q25, q50, q75, q95
    lesion_area_bands: dict[str, float]  # share of lesions in < 1 %, 1-5 %, > 5 % of the image
    image_lesion_area_quantiles: dict[str, float]  # per image, all lesions together
    lesions_below_min_pixels: dict[str, float]  # per profile: share of lesions under MIN_LESION_PIXELS
    recommended_profile: str
    recommended_resolution: int
    recommended_channels: int


@dataclass
class _ImageStats:
    shape: tuple[int, int, int]
    grey: bool
    mean: np.ndarray
    std: np.ndarray
    pixels: np.ndarray  # luminance subsample
    lesion_areas: np.ndarray  # area share of each connected lesion
    specks: int  # components taken for specks
    labelled: bool


def image_stats(sample: Sample, multiclass: bool = False, seed: int = 0) -> _ImageStats:
    """Statistics of one sample at full size (lesions: 8-connected components of the merged mask)."""
    image, mask = load_sample(sample, channels=None, multiclass=multiclass)
    h, w, c = image.shape
    mean, std = cv2.meanStdDev(image)  # on uint8 directly: no float copy of a full-size image
    rng = np.random.default_rng(seed)
    picked = image.reshape(-1, c)[rng.integers(0, h * w, min(_PIXELS_PER_IMAGE, h * w))].astype(np.float64)
    pixels = picked.mean(1) if c == 1 else picked @ np.array([0.299, 0.587, 0.114])
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    sizes = stats[1:n, cv2.CC_STAT_AREA]
    speck = sizes < min(MIN_COMPONENT_PIXELS, SPECK_FRACTION * h * w)
    areas = sizes[~speck] / float(h * w)
    specks = int(speck.sum())
    return _ImageStats((h, w, c), is_grey(image), mean.ravel(), std.ravel(), pixels, areas, specks, sample.has_mask)


def fingerprint(
    samples: Sequence[Sample],
    multiclass: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Fingerprint:
    """Measure a dataset (decodes every sample once, ``workers`` threads). Raises the loader's errors
    (run :func:`lesionforge.data.checks.check_dataset` first to see them all)."""
    if not samples:
        raise ValueError("fingerprint: no samples given")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        stats = []
        for k, st in enumerate(pool.map(lambda s: image_stats(s, multiclass), samples), 1):
            stats.append(st)
            if progress:
                progress(k, len(samples))
    return _summarise(stats)


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"q{int(q * 100):02d}": round(float(np.quantile(values, q)), 6) for q in qs}


def _min_max_median(values: list[int]) -> dict[str, float]:
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def _summarise(stats: list[_ImageStats]) -> Fingerprint:
    labelled = [s for s in stats if s.labelled]
    lesion_images = [s for s in labelled if len(s.lesion_areas)]
    areas = np.concatenate([s.lesion_areas for s in labelled]) if labelled else np.zeros(0)
    channels = max(s.shape[2] for s in stats)
    means = np.array([np.resize(s.mean, channels) for s in stats])  # grey images count for every channel
    stds = np.array([np.resize(s.std, channels) for s in stats])
    pixels = np.concatenate([s.pixels for s in stats])
    counts = [len(s.lesion_areas) for s in lesion_images] or [0]
    below = {name: round(float(np.mean(areas * res * res < MIN_LESION_PIXELS)), 4) if len(areas) else 0.0
             for name, res in PROFILE_RESOLUTION.items()}
    profile = recommend_profile(areas, min(s.shape[0] for s in stats), min(s.shape[1] for s in stats))
    grey = sum(s.grey for s in stats)
    return Fingerprint(
        n_images=len(stats), n_labelled=len(labelled),
        height=_min_max_median([s.shape[0] for s in stats]), width=_min_max_median([s.shape[1] for s in stats]),
        grey_images=grey, colour_images=len(stats) - grey,
        intensity_mean=[round(float(v), 3) for v in means.mean(0)],
        intensity_std=[round(float(v), 3) for v in np.sqrt((stds**2).mean(0))],
        intensity_percentiles={k: round(float(v), 2) for k, v in
                               zip(("p00.5", "p50", "p99.5"), np.percentile(pixels, [0.5, 50, 99.5]), strict=True)},
        lesion_free_share=round(1 - len(lesion_images) / len(labelled), 4) if labelled else 0.0,
        specks_ignored=sum(s.specks for s in stats),
        lesions_per_image={"mean": round(float(np.mean(counts)), 3), "median": float(np.median(counts)),
                           "max": float(np.max(counts))},
        lesion_area_quantiles=_quantiles(areas, (0.05, 0.25, 0.5, 0.75, 0.95)),
        lesion_area_bands={b: round(float(np.mean(band_index(areas) == i)), 4) if len(areas) else 0.0
                           for i, b in enumerate(BANDS)},
        image_lesion_area_quantiles=_quantiles(np.array([s.lesion_areas.sum() for s in lesion_images]),
                                               (0.05, 0.5, 0.95)),
        lesions_below_min_pixels=below, recommended_profile=profile,
        recommended_resolution=PROFILE_RESOLUTION[profile],
        recommended_channels=1 if grey >= 0.9 * len(stats) else 3,
    )


def recommend_profile(lesion_areas: np.ndarray, min_height: int, min_width: int) -> str:
    """The smallest non-test profile at which 95 % of lesions keep ``MIN_LESION_PIXELS`` pixels, but never
    above the smallest image side (upsampling adds no detail)."""
    small = float(np.quantile(lesion_areas, 0.05)) if len(lesion_areas) else 1.0
    candidates = sorted((r, n) for n, r in PROFILE_RESOLUTION.items() if n != "tiny")
    for res, name in candidates:
        if small * res * res >= MIN_LESION_PIXELS or res >= min(min_height, min_width):
            return name
    return candidates[-1][1]
