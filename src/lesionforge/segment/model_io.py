"""Segmenter checkpoints (a folder: ``model.safetensors`` + ``segmenter.json``, the :mod:`lesionforge.checkpoints`
format) and batched prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesionforge.checkpoints import WEIGHTS, load_weights, read_model_meta, save_model_folder
from lesionforge.data.arrays import image_to_tensor
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.networks import build_network
from lesionforge.utils import code_version

META = "segmenter.json"


def save_segmenter(model: nn.Module, cfg: SegmentConfig, in_channels: int, path: str | Path, **info) -> Path:
    """Write weights and the settings needed to rebuild ``model``; ``info`` (step, val mDice ...) is recorded."""
    meta = {"in_channels": in_channels, "config": cfg.model_dump(mode="json"), "code_version": code_version(), **info}
    return save_model_folder(model, path, META, meta)


def read_segmenter_meta(path: str | Path) -> dict:
    """The ``segmenter.json`` of a checkpoint folder (raises :class:`CheckpointError` if absent)."""
    return read_model_meta(path, META, "segmenter checkpoint")


def load_segmenter(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the network of a checkpoint folder and load its weights; returned in eval mode.

    The model carries ``.segment_config`` (:class:`SegmentConfig`) and ``.in_channels``."""
    meta = read_segmenter_meta(path)
    cfg = SegmentConfig.model_validate(meta["config"])
    model = build_network(cfg.network, meta["in_channels"], cfg.features, cfg.resolution, **cfg.network_kwargs)
    load_weights(model, Path(path) / WEIGHTS, device=device)
    model.segment_config = cfg
    model.in_channels = meta["in_channels"]
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Lesion probability, float (N, 1, H, W) in [0, 1], on the CPU.

    ``images``: uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]. The model is put in eval mode and left
    there."""
    model.eval()
    device = next(model.parameters()).device
    x = image_to_tensor(images) if isinstance(images, np.ndarray) else images.float()
    out = [torch.sigmoid(model(x[i : i + batch_size].to(device))).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 1, *x.shape[-2:]))
