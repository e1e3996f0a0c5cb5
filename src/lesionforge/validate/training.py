"""The small training loop shared by the validator networks: AdamW, Dice + BCE, checkpoint and resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from lesionforge.devices import resolve_device
from lesionforge.train_state import load_train_state, save_train_state

Batch = tuple[torch.Tensor, ...]


def train_loop(
    model: torch.nn.Module,
    forward: Callable[[torch.nn.Module, Batch], torch.Tensor],
    sample_batch: Callable[[np.random.Generator], Batch],
    steps: int,
    lr: float,
    out_dir: Path,
    seed: int,
    checkpoint_every: int = 250,
    resume: bool = True,
    description: str = "Training",
    progress: bool = False,
    device: str | None = None,
) -> float:
    """Train ``model`` for ``steps`` AdamW steps on Dice + BCE; return the last loss.

    ``sample_batch(rng)`` returns a batch whose last item is the target mask (B, 1, H, W) in {0, 1};
    ``forward(model, batch)`` returns logits of the same shape. State goes to ``out_dir/train_state``.
    The model is trained on ``device`` (:func:`~lesionforge.devices.resolve_device`), batches moved there.
    """
    dev = resolve_device(device)
    model.to(dev)
    loss_fn = DiceCELoss(sigmoid=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
    start, optim = load_train_state(out_dir, "model", model) if resume else (0, None)
    if optim is not None:
        opt.load_state_dict(optim)
    rng = np.random.default_rng([seed, start])  # a resumed run continues with fresh, reproducible batches
    model.train()
    loss = torch.zeros(())
    steps_iter = range(start, steps)
    if progress:
        from lesionforge.progress import track

        steps_iter = track(steps_iter, description=description)
    for step in steps_iter:
        batch = tuple(t.to(dev) for t in sample_batch(rng))
        loss = loss_fn(forward(model, batch), batch[-1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_train_state(out_dir, "model", model, opt.state_dict(), step + 1)
    model.eval()
    return float(loss.detach())


def flip_batch(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips applied identically to images (B, C, H, W) and masks (B, 1, H, W)."""
    for dim in (-1, -2):
        flip = torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None]
        x = torch.where(flip, x.flip(dim), x)
        m = torch.where(flip, m.flip(dim), m)
    return x, m
