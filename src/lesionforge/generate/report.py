"""Training figures: sample grids (PNG) beside their real conditions, and the loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionforge.data.arrays import tensor_to_image
from lesionforge.data.io import write_image
from lesionforge.generate.batches import decode_samples
from lesionforge.generate.models import LesionGenerator
from lesionforge.generate.sampler import sample, sample_seed
from lesionforge.utils import save_figure_atomic


def save_sample_grid(path: Path, gen: LesionGenerator, maker) -> Path:
    """Rows: real image | its mask | generated image (| generated mask for ``joint``), one row per preview
    condition of ``maker`` (a :class:`~lesionforge.generate.trainbatch.BatchMaker`)."""
    p = maker.preview()
    x0 = sample(gen, p.cond, [sample_seed(0, i) for i in range(len(p.images))], sampler=gen.cfg.sampler,
                steps=gen.cfg.sample_steps, guidance_scale=gen.cfg.guidance_scale, uncond=p.uncond, inpaint=p.guide,
                grid=p.grid)
    images, mask = decode_samples(gen.cfg.kind, x0, maker.codec)
    fake = tensor_to_image(images)
    cols = [_rgb(p.images), _rgb(p.masks[..., None] * 255), _rgb(fake)]
    if mask is not None:
        cols.append(_rgb(tensor_to_image(mask * 2 - 1)))
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
    return write_image(path, grid)


def _rgb(images: np.ndarray) -> np.ndarray:
    return images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)


def save_loss_curve(path: Path, losses: list[float]) -> Path:
    """Loss per step and its moving average (log scale), as PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
    if len(losses) >= 10:
        k = max(5, len(losses) // 50)
        ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="MSE", yscale="log", title="generator training loss")
    ax.legend()
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi=100, bbox_inches=None)

