"""Which pixels of a synthetic pair to trust: FreeMask's noisy-region filter (Yang et al., NeurIPS 2023).

A kept synthetic pair can still hold regions its mask does not describe: lesion tissue painted outside the mask,
or a mask corner left unpainted. FreeMask finds them with a segmenter trained on real pairs: a pixel whose loss
against the synthetic label is far above that segmenter's mean loss on real pixels of the same class is "noisy",
and the segmentation loss leaves it out (the image-level filter keeps or drops whole pairs; this keeps the pair
and drops its doubtful pixels). Here the segmenter is the set's own validator (the one its filter scored it with),
and the real reference is ``val``, which the validator did not train on (at N = 32 its training pairs are fitted
too closely to say what a typical real error is; the filter's automatic threshold reads ``val`` too). Written
here because no library offers it; the rule follows the paper's public description: per class, pixel loss above
``margin`` x the class mean loss on real pixels (the paper's default margin 1.25).

Used through ``mixing.synthetic_pixel_filter: margin`` (segment/config.py); the segmenter's loss leaves the
pixels out (segment/losses.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lesionforge.data.arrays import PairArrays
from lesionforge.data.manifest import Sample
from lesionforge.errors import ConfigError
from lesionforge.segment.config import PixelClass
from lesionforge.validate.validator import Validator, load_validator

_EPS = 1e-6


def pixel_losses(validator: Validator, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Binary cross-entropy (nats) of the validator's lesion probability against ``masks`` > 0, per pixel:
    float32 (N, H, W) for uint8 images (N, H, W, C) at the validator's resolution."""
    if images.shape[1] != validator.resolution:
        raise ConfigError(f"{validator.path}: the validator reads {validator.resolution} px images, these are "
                          f"{images.shape[1]} px; train the segmenter at the validator's resolution")
    p = np.clip(validator.predict_arrays(images), _EPS, 1 - _EPS)
    return np.where(masks > 0, -np.log(p), -np.log1p(-p)).astype(np.float32)


def class_mean_losses(validator: Validator, reference: PairArrays) -> dict[str, float]:
    """The validator's mean pixel loss on real pairs, per class: ``background`` and ``lesion``."""
    labelled = reference.subset(np.flatnonzero(reference.has_mask))
    losses = pixel_losses(validator, labelled.images, labelled.masks)
    lesion = labelled.masks > 0
    if not lesion.any() or lesion.all():
        raise ConfigError("the real reference pairs hold no lesion pixel (or no background pixel): the pixel "
                          "filter has no real loss to compare with")
    return {"background": float(losses[~lesion].mean()), "lesion": float(losses[lesion].mean())}


def untrusted_pixels(validator: Validator, images: np.ndarray, masks: np.ndarray, means: dict[str, float],
                     margin: float, only: PixelClass | None = None) -> np.ndarray:
    """bool (N, H, W): the pixels whose loss is above ``margin`` x the real mean loss of their label's class;
    ``only`` (``background`` or ``lesion``): of that label only."""
    losses = pixel_losses(validator, images, masks)
    lesion = masks > 0
    out = losses > margin * np.where(lesion, means["lesion"], means["background"])
    if only is not None:
        out &= lesion if only == "lesion" else ~lesion
    return out


def untrusted_in_set(samples: list[Sample], arrays: PairArrays, reference: PairArrays, margin: float,
                     only: PixelClass | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The pixels to leave out of each synthetic pair of ``arrays`` (rows ``samples``, in the same order), each
    judged by the validator its filter scored it with (``provenance.validation.validator``), against that
    validator's class means on ``reference`` (``only``: one label's pixels, see :func:`untrusted_pixels`). Rows no
    validator scored (e.g. real lesions pasted onto backgrounds, joined to the diffusion pairs) are trusted whole.
    Returns the bool (N, H, W) array and a summary for the run's record."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        validation = s.provenance.validation if s.provenance is not None else None
        if validation and validation.get("validator"):
            groups.setdefault(str(validation["validator"]), []).append(i)
    if not groups:
        raise ConfigError("mixing.synthetic_pixel_filter needs pairs scored by a validator: give the set's generator "
                          "entry a filter and the arm `filtered: true`")
    left_out = np.zeros(arrays.masks.shape, bool)
    per_validator = {}
    for path, idx in groups.items():
        validator = load_validator(Path(path))
        means = class_mean_losses(validator, reference)
        rows = np.asarray(idx)
        left_out[rows] = untrusted_pixels(validator, arrays.images[rows], arrays.masks[rows], means, margin, only)
        per_validator[path] = {"pairs": len(idx), "real_mean_loss": means}
    scored = np.zeros(len(samples), bool)
    scored[[i for idx in groups.values() for i in idx]] = True
    lesion = arrays.masks[scored] > 0
    out = left_out[scored]
    summary = {
        "margin": margin, **({"only": only} if only else {}), "validators": per_validator,
        "pairs_scored": int(scored.sum()),
        "pairs_trusted_whole": int((~scored).sum()),
        "left_out_share": float(out.mean()),
        "left_out_share_lesion": float(out[lesion].mean()) if lesion.any() else None,
        "left_out_share_background": float(out[~lesion].mean()) if (~lesion).any() else None,
    }
    return left_out, summary
