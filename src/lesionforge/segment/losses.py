"""The segmentation loss with an untrusted band: DiceCE where some pixels do not count.

A generated pair's label is the mask the generator was asked to fill, not a drawing of what it painted: a lesion
painted a little over or under its mask gives a noisy border, exactly where Dice is decided. With
``mixing.synthetic_border_ignore: k`` the loss leaves out the pixels of the synthetic samples of a batch within
``k`` pixels of their label's border (after augmentation), so borders are learned from the real pairs and the
rest of each lesion and its context from both. The Dice part is MONAI's ``MaskedDiceLoss``; the
cross-entropy part is written here because MONAI's ``DiceCELoss`` takes no pixel mask (a weighted
``binary_cross_entropy_with_logits`` averaged over the pixels that count). With every pixel counted it is
``DiceCELoss(sigmoid=True, batch=True)`` (tests/test_segment_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss


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
