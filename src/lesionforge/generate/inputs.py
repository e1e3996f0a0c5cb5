"""Load the data a generator trains or samples from: labelled pairs (optionally the low-data subset of a
benchmark split), the unlabelled rest of ``train``, and lesion-free backgrounds, at the generator's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.errors import ConfigError


def load_pairs(path: str | Path, resolution: int, channels: int, ids: list[str] | None = None,
               image_only: bool = False) -> PairArrays:
    """A dataset folder or manifest as :class:`PairArrays` (uint8, ``resolution`` square).

    ``ids`` keeps those samples only; ``image_only`` drops the masks (images become unlabelled)."""
    from lesionforge.data.readers import read_dataset

    samples = read_dataset(path, allow_missing_masks=True)
    if ids is not None:
        wanted = set(ids)
        samples = [s for s in samples if s.id in wanted]
        if not samples:
            raise ConfigError(f"{path}: none of the {len(wanted)} requested ids are in this dataset")
    arrays = load_arrays(samples, resolution, channels=channels, progress=True)
    if image_only:
        arrays = PairArrays(arrays.images, np.zeros_like(arrays.masks), np.zeros(len(arrays), bool),
                            arrays.ids, arrays.classes)
    return arrays


def training_inputs(data: str | Path, resolution: int, channels: int, split: str | Path | None = None,
                    labelled: int | None = None, with_unlabelled: bool = True) -> tuple[PairArrays, PairArrays | None]:
    """``(labelled pairs, unlabelled images)``: with a ``split``, the labelled set is its ``labelled``-image
    low-data subset (all of ``train`` when None) and the rest of ``train`` comes back image-only (when
    ``with_unlabelled``; else None)."""
    if split is None:
        if labelled is not None:
            raise ConfigError("--labelled needs --split (the low-data subsets are defined by the split)")
        return load_pairs(data, resolution, channels), None
    from lesionforge.data.splits import load_benchmark_split

    sp = load_benchmark_split(split)
    ids = sp.low_data(labelled) if labelled is not None else list(sp.train)
    rest = sorted(set(sp.train) - set(ids))
    train = load_pairs(data, resolution, channels, ids)
    unlabelled = load_pairs(data, resolution, channels, rest, image_only=True) if rest and with_unlabelled else None
    return train, unlabelled


def load_backgrounds(path: str | Path, resolution: int, channels: int,
                     split: str | Path | None = None) -> PairArrays:
    """Lesion-free background images (a folder of images, or a dataset whose split lists
    ``normal_backgrounds``); masks are dropped."""
    ids = None
    if split is not None:
        from lesionforge.data.splits import load_benchmark_split

        ids = load_benchmark_split(split).normal_backgrounds or None
    return load_pairs(path, resolution, channels, ids, image_only=True)
