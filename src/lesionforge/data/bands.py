"""The lesion size bands of the benchmark protocol (PROTOCOL.md): lesion area as a share of the image,
``small`` < 1 %, ``medium`` 1-5 % (both ends included), ``large`` > 5 %.

The one definition: segmentation metrics (miss rate by band), result files, dataset fingerprints, the mask
sampler's size draw and the prompt libraries' size words all band a lesion here, so a lesion covering exactly
5 % of the image is ``medium`` everywhere.
"""

from __future__ import annotations

import numpy as np

BANDS = ("small", "medium", "large")
#: ``small`` is below the first edge, ``large`` above the second; a share equal to either edge is ``medium``.
BAND_EDGES = (0.01, 0.05)


def band_index(area_fraction: float | np.ndarray) -> int | np.ndarray:
    """0 (small), 1 (medium) or 2 (large) for each area share; an array gives an int array of its shape."""
    a = np.asarray(area_fraction, dtype=np.float64)
    index = np.where(a < BAND_EDGES[0], 0, np.where(a <= BAND_EDGES[1], 1, 2))
    return int(index) if index.ndim == 0 else index


def band_of(area_fraction: float) -> str:
    """The band name of one area share (``small`` < 0.01 <= ``medium`` <= 0.05 < ``large``)."""
    return BANDS[band_index(area_fraction)]


#: The group of a mask without foreground (a negative, e.g. an MRI slice without the structure): no lesion, so
#: in no band; counts of synthetic pairs by band keep such masks apart from small lesions.
EMPTY = "empty"


def mask_group(mask: np.ndarray) -> str:
    """The band of a mask's foreground share, or :data:`EMPTY` for a mask without foreground."""
    fg = np.asarray(mask) > 0
    return EMPTY if not fg.any() else band_of(float(fg.mean()))
