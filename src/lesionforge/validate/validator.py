"""Loading a trained validator folder and running it on images or latents.

A validator folder holds ``validator.json`` (kind, resolution, real-``val`` scores), ``segmenter/``
(diffusers-style config + safetensors) and, for the latent kind, the ``codec/`` it reads latents from.

Each kind registers how its folder is loaded (:func:`register_kind`, in :mod:`.latent_segmenter` and
:mod:`.pixel_segmenter`, which the ``lesionforge.validate`` package imports): this module needs neither, so
they can build on it without an import cycle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionforge.data.arrays import PairArrays, image_to_tensor
from lesionforge.errors import CheckpointError
from lesionforge.outputs import dir_hash
from lesionforge.utils import write_json_atomic
from lesionforge.validate.scores import dice_scores, foreground_fractions

SEGMENTER_DIR = "segmenter"
INFO_FILE = "validator.json"

#: Loads a validator folder's networks: (segmenter, codec or None).
KindLoader = Callable[[Path], tuple[torch.nn.Module, Any]]
_KINDS: dict[str, KindLoader] = {}


def register_kind(kind: str) -> Callable[[KindLoader], KindLoader]:
    """Decorator: ``loader`` reads the networks of validator folders of ``kind``."""

    def add(loader: KindLoader) -> KindLoader:
        _KINDS[kind] = loader
        return loader

    return add


@dataclass
class Validator:
    """A loaded validator. ``kind`` is ``latent`` (codec + :class:`LatentSegmenter`) or ``pixel``."""

    kind: str
    path: Path
    info: dict[str, Any]
    segmenter: torch.nn.Module
    codec: Any = None  # LatentCodec for the latent kind
    hash: str = field(default="")

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    @property
    def image_channels(self) -> int:
        return int(self.info["image_channels"])

    @torch.no_grad()
    def predict_images(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability (B, 1, H, W) in [0, 1] for images (B, C, H, W) in [-1, 1]."""
        if self.kind == "latent":
            return self.segmenter.predict(self.codec.encode(x), int(self.info["eval_timestep"]))
        return self.segmenter.predict(x)

    @torch.no_grad()
    def predict_arrays(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Lesion probability float32 (N, H, W) for uint8 images (N, H, W, C)."""
        out = [self.predict_images(image_to_tensor(images[i : i + batch_size]))[:, 0].cpu().numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32)


def save_validator_info(path: str | Path, info: dict[str, Any]) -> None:
    write_json_atomic(Path(path) / INFO_FILE, info)


def finished_validator(path: str | Path, config: dict[str, Any]) -> bool:
    """Whether ``path`` holds a validator already trained to the end with ``config`` (its ``validator.json`` is
    written last): a resumed call then reuses it as it is, instead of re-saving it with a blank final loss."""
    info_file = Path(path) / INFO_FILE
    if not info_file.is_file():
        return False
    try:
        return json.loads(info_file.read_text(encoding="utf-8")).get("config") == config
    except (OSError, ValueError):
        return False


def load_validator(path: str | Path) -> Validator:
    """Load a validator folder written by ``train_latent_segmenter`` or ``train_pixel_segmenter``."""
    path = Path(path)
    info_file = path / INFO_FILE
    if not info_file.is_file():
        raise CheckpointError(f"{path}: no {INFO_FILE}; not a validator folder (run `lesionforge train validator`)")
    info = json.loads(info_file.read_text(encoding="utf-8"))
    loader = _KINDS.get(info.get("kind"))
    if loader is None:
        raise CheckpointError(f"{info_file}: unknown validator kind {info.get('kind')!r} "
                              f"(known: {', '.join(sorted(_KINDS))})")
    seg, codec = loader(path)
    return Validator(info["kind"], path, info, seg.eval(), codec, dir_hash(path / SEGMENTER_DIR))


def mismatched_masks(masks: np.ndarray) -> np.ndarray:
    """Wrong labels for real images, the negatives of the automatic threshold: each lesion mask (K, H, W)
    replaced by the next image's mask, then by its own mask shifted a quarter image down and right (2K, H, W)."""
    side_h, side_w = masks.shape[1] // 4, masks.shape[2] // 4
    return np.concatenate([np.roll(masks, 1, axis=0), np.roll(masks, (side_h, side_w), axis=(1, 2))])


def val_scores(validator: Validator, val: PairArrays) -> dict[str, Any]:
    """The validator on real ``val`` pairs: Dice per lesion image with its own mask (``val_dice``) and with a
    mismatched mask (``val_dice_mismatched``, see :func:`mismatched_masks`), and predicted foreground per
    lesion-free image."""
    prob = validator.predict_arrays(val.images)
    lesion = (val.masks > 0).any(axis=(1, 2))
    masks = val.masks[lesion]
    wrong = dice_scores(np.concatenate([prob[lesion]] * 2), mismatched_masks(masks)) if len(masks) > 1 else []
    return {
        "val_ids": [val.ids[i] for i in np.flatnonzero(lesion)],
        "val_dice": dice_scores(prob[lesion], masks).tolist(),
        "val_dice_mismatched": np.asarray(wrong, dtype=float).tolist(),
        "val_foreground_fraction_lesion_free": foreground_fractions(prob[~lesion]).tolist(),
    }
