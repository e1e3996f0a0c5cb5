"""Segmenter checkpoints (a folder: ``model.safetensors`` + ``segmenter.json``) and batched prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from lesionforge.data.arrays import image_to_tensor
from lesionforge.errors import CheckpointError
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.networks import build_network
from lesionforge.utils import atomic_path, code_version, write_json_atomic

WEIGHTS, META = "model.safetensors", "segmenter.json"


def save_segmenter(model: nn.Module, cfg: SegmentConfig, in_channels: int, path: str | Path, **info) -> Path:
    """Write weights and the settings needed to rebuild ``model``; ``info`` (step, val mDice ...) is recorded."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS) as tmp:
        save_model(model, str(tmp))
    meta = {"in_channels": in_channels, "config": cfg.model_dump(mode="json"), "code_version": code_version(), **info}
    write_json_atomic(path / META, meta)  # written last: a folder with this file is complete
    return path


def read_segmenter_meta(path: str | Path) -> dict:
    """The ``segmenter.json`` of a checkpoint folder (raises :class:`CheckpointError` if absent)."""
    meta_path = Path(path) / META
    if not meta_path.is_file() or not (Path(path) / WEIGHTS).is_file():
        raise CheckpointError(f"{path}: not a segmenter checkpoint (needs {WEIGHTS} and {META})")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def load_segmenter(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the network of a checkpoint folder and load its weights; returned in eval mode.

    The model carries ``.segment_config`` (:class:`SegmentConfig`) and ``.in_channels``."""
    meta = read_segmenter_meta(path)
    cfg = SegmentConfig.model_validate(meta["config"])
    model = build_network(cfg.network, meta["in_channels"], cfg.features, cfg.resolution, **cfg.network_kwargs)
    missing, unexpected = load_model(model, str(Path(path) / WEIGHTS), strict=False, device=device)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {cfg.network} (missing {sorted(missing)[:3]}, extra {sorted(unexpected)[:3]})"
        )
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
