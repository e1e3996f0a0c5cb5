"""Per-sample scores of a validator's prediction against the intended mask."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice


def dice_scores(prob: np.ndarray, intended: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """Dice of ``prob >= cutoff`` against ``intended`` masks, per sample.

    ``prob`` float (N, H, W) in [0, 1], ``intended`` (N, H, W) in {0, 1}. Returns float (N,) in [0, 1];
    a sample with both masks empty scores 1.
    """
    pred = torch.from_numpy(prob >= cutoff).float()[:, None]
    target = torch.from_numpy(intended > 0).float()[:, None]
    return compute_dice(pred, target, include_background=True, ignore_empty=False).numpy()[:, 0]


def confidence_scores(prob: np.ndarray) -> np.ndarray:
    """1 - mean binary entropy (bits) of ``prob`` (N, H, W): 1 = every pixel decided, 0 = all at 0.5."""
    p = np.clip(prob.astype(np.float64), 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return 1.0 - entropy.mean(axis=(1, 2))


def foreground_fractions(prob: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """Share of pixels predicted as lesion, per sample: float (N,) in [0, 1]."""
    return (prob >= cutoff).mean(axis=(1, 2))
