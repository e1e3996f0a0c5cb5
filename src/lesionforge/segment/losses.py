"""The segmentation loss with an untrusted band: DiceCE where some pixels do not count.

A generated pair's label is the mask the generator was asked to fill, not a drawing of what it painted: a lesion
painted a little over or under its mask gives a noisy border, exactly where Dice is decided. With
``mixing.synthetic_border_ignore: k`` the loss leaves out the pixels of the synthetic samples of a batch within
``k`` pixels of their label's border (after augmentation), so borders are learned from the real pairs and the
rest of each lesion and its context from both. The Dice part is MONAI's ``MaskedDiceLoss``; the
cross-entropy part is written here because MONAI's ``DiceCELoss`` takes no pixel mask (a weighted
``binary_cross_entropy_with_logits`` averaged over the pixels that count). With every pixel counted it is
``DiceCELoss(sigmoid=True, batch=True)`` (tests/test_segment_losses.py).

With ``mixing.synthetic_pixel_filter`` the pixels to leave out are chosen before training, per synthetic pair
(:mod:`lesionforge.validate.pixel_trust`); each is carried in the pair's mask as ``label + LEFT_OUT``, so the flag
moves with its label through every augmentation (they warp masks with nearest-neighbour sampling).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss

#: a synthetic mask's value ``label + LEFT_OUT`` (2: background, 3: lesion) marks a pixel the loss leaves out
LEFT_OUT = 2


def mark_left_out(masks: np.ndarray, left_out: np.ndarray) -> np.ndarray:
    """uint8 masks (N, H, W) in {0, 1, 2, 3}: the binary lesion label, plus ``LEFT_OUT`` where ``left_out``."""
    return ((masks > 0) + LEFT_OUT * left_out.astype(bool)).astype(np.uint8)


def split_left_out(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marked labels (B, 1, H, W) -> (the {0, 1} labels, a 0/1 mask of the pixels the loss counts)."""
    return torch.remainder(y, LEFT_OUT), (y < LEFT_OUT).to(y.dtype)


def trusted_pixels(y: torch.Tensor, first_synthetic: int, border: int) -> torch.Tensor:
    """A (B, 1, H, W) 0/1 mask of the pixels whose label the loss uses: every pixel of samples
    ``[:first_synthetic]`` (real), and of the later (synthetic) samples those more than ``border`` pixels
    (Chebyshev distance) from their label's border, inside or outside the lesion."""
    w = torch.ones_like(y)
    syn = y[first_synthetic:]
    if len(syn) and border > 0:
        size = 2 * border + 1
        grown = F.max_pool2d(syn, size, stride=1, padding=border)
        shrunk = 1 - F.max_pool2d(1 - syn, size, stride=1, padding=border)
        w[first_synthetic:] = 1 - (grown - shrunk)
    return w


class MaskedDiceCELoss:
    """Dice (MONAI ``MaskedDiceLoss``, sigmoid, over the batch) + binary cross-entropy over the pixels that count."""

    def __init__(self) -> None:
        self.dice = MaskedDiceLoss(sigmoid=True, batch=True)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ce = F.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum") / w.sum().clamp_min(1.0)
        return self.dice(logits, y, mask=w) + ce
