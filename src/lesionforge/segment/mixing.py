"""How real and synthetic pairs meet in a batch: ratio, alpha pool, EMIT-style patch merging, synthetic-only.

Every draw is a pure function of ``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lesionforge.errors import ConfigError
from lesionforge.segment.config import MixConfig

#: The streams of a training step's draws besides the batch (0): copy-paste, augmentation seed, merge mask.
STREAM_COPY_PASTE, STREAM_AUGMENT, STREAM_MERGE = 1, 2, 3


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """Independent generator for one (seed, step, stream): batches, copy-paste and merge masks each own a stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, stream]))


@dataclass
class BatchPlan:
    """Indices of one batch: ``real`` into the real set, ``synthetic`` into the synthetic set.

    For patch merging ``twin`` is aligned with ``real``: the synthetic twin of each real sample, or -1 where that
    sample has no twin (it is then merged with itself)."""

    real: np.ndarray
    synthetic: np.ndarray
    twin: np.ndarray | None = None


class BatchSampler:
    """Draws the sample indices of each step according to a :class:`MixConfig`.

    ``twins`` maps a real id to indices of its synthetic twins (patch merging only); ``real_ids`` names the real
    samples in order.
    """

    def __init__(
        self, cfg: MixConfig, real_ids: list[str], n_synthetic: int, batch_size: int, seed: int,
        twins: dict[str, list[int]] | None = None, total_steps: int | None = None,
    ):
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        if cfg.synthetic_until is not None and total_steps is None:
            raise ConfigError("mixing synthetic_until needs the run's total steps")
        # the first step that trains on real pairs alone
        self.real_from = None if cfg.synthetic_until is None else round(cfg.synthetic_until * total_steps)
        self.n_real, self.n_syn = len(real_ids), n_synthetic
        if cfg.mode != "none" and n_synthetic == 0:
            raise ConfigError(f"mixing mode {cfg.mode!r} needs synthetic samples; none were given")
        if cfg.mode != "synthetic-only" and self.n_real == 0:
            raise ConfigError(f"mixing mode {cfg.mode!r} needs real samples; none were given")
        # alpha: which synthetic samples enter the pool is drawn once per seed (stream 99 is reserved for it)
        admitted = step_rng(seed, 0, 99).random(n_synthetic) < cfg.alpha
        self.admitted = np.flatnonzero(admitted) if cfg.mode == "alpha" else np.arange(n_synthetic)
        self.twin_lists = [list((twins or {}).get(rid, [])) for rid in real_ids]
        if cfg.mode == "patch-merge":
            if not any(self.twin_lists):
                raise ConfigError("patch-merge needs synthetic twins (Provenance.source_id) of the real samples")
            bad = [i for lst in self.twin_lists for i in lst if not 0 <= i < n_synthetic]
            if bad:
                raise ConfigError(f"twin indices out of range of the synthetic set: {bad[:3]}")

    def plan(self, step: int) -> BatchPlan:
        """The batch of optimizer step ``step``."""
        rng, b, mode = step_rng(self.seed, step, 0), self.batch_size, self.cfg.mode
        empty = np.zeros(0, dtype=np.int64)
        if mode == "none" or (self.real_from is not None and step >= self.real_from):
            return BatchPlan(_draw(rng, self.n_real, b), empty)
        if mode == "synthetic-only":
            return BatchPlan(empty, _draw(rng, self.n_syn, b))
        if mode == "ratio":
            p = self.cfg.ratio / (1 + self.cfg.ratio)
            # stochastic rounding keeps the long-run share at exactly p for any batch size
            n_syn = min(b, int(np.floor(b * p)) + int(rng.random() < b * p - np.floor(b * p)))
            return BatchPlan(_draw(rng, self.n_real, b - n_syn), _draw(rng, self.n_syn, n_syn))
        if mode == "alpha":
            pool = self.n_real + len(self.admitted)
            pick = _draw(rng, pool, b)
            return BatchPlan(pick[pick < self.n_real], self.admitted[pick[pick >= self.n_real] - self.n_real])
        real = _draw(rng, self.n_real, b)
        twin = np.array([rng.choice(self.twin_lists[i]) if self.twin_lists[i] else -1 for i in real], dtype=np.int64)
        return BatchPlan(real, empty, twin)


def _draw(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` indices below ``n``: without repeats when ``n >= k``."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(n, size=k, replace=n < k).astype(np.int64)


def merge_mask(batch: int, size: int, patch: int, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """Random merging mask, float (B, 1, size, size) in {0, 1}: each ``patch`` x ``patch`` block is 1 (take the
    real pair) with probability ``alpha``, else 0 (take the synthetic twin)."""
    cells = -(-size // patch)
    blocks = torch.from_numpy((rng.random((batch, 1, cells, cells)) < alpha).astype(np.float32))
    full = blocks.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return full[..., :size, :size].contiguous()


def merge_pairs(
    logits_real: torch.Tensor, logits_syn: torch.Tensor, y_real: torch.Tensor, y_syn: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine predictions and labels of real and twin pairs per pixel: the real ones where ``mask`` is 1, the
    synthetic ones where 0. All tensors (B, 1, H, W). A loss on the result is, per pixel, the loss of the chosen
    pair (cross-entropy exactly; Dice over the merged map)."""
    return mask * logits_real + (1 - mask) * logits_syn, mask * y_real + (1 - mask) * y_syn
