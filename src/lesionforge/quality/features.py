"""Image feature extractors for FID/KID and the memorization audit.

Three kinds, chosen by :func:`load_extractor`; every result names the one used and its checkpoint hash:

- ``inception-v3-fid``: the standard FID network, from a local pytorch-fid weights file
  (``pt_inception-2015-12-05-*.pth``, read with ``torch.load(weights_only=True)``, or a ``.safetensors`` copy).
  Numbers are comparable with published FIDs only with this extractor.
- ``seg-encoder``: the encoder of a MONAI BasicUNet trained to segment the *real training* pairs
  (:func:`train_segmentation_encoder`). Its features are global-average-pooled at the five encoder scales and
  concatenated. Chosen because it is in-domain (it has learnt what lesions and their surroundings look like,
  which ImageNet features may ignore), supervised by the very labels we have, and trains in about a minute on
  CPU at 64 px; a contrastive model would need far more steps and augmentation tuning for the same data.
- ``pixels-<s>``: images area-downscaled to s x s and flattened; a last resort that measures colour and layout.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from safetensors.torch import load_file
from torch import nn

from lesionforge.checkpoints import WEIGHTS, load_torch_state, load_weights, read_model_meta, save_model_folder
from lesionforge.data.arrays import PairArrays, image_to_tensor, mask_to_tensor
from lesionforge.devices import resolve_device
from lesionforge.errors import CheckpointError
from lesionforge.outputs import announce_resume, claim_output, dir_hash
from lesionforge.quality.inception import FIDInceptionV3
from lesionforge.train_state import TRAIN_STATE, load_train_state, save_train_state
from lesionforge.utils import file_sha256, seed_everything

SEG_ENCODER_CONFIG = "extractor_config.json"
LEGACY_SEG_ENCODER_STATE = "train_state.pt"  # older runs' resume state (weights inside a torch.save blob)


class FeatureExtractor:
    """A frozen network mapping images to fixed-size feature vectors.

    ``net`` maps float (B, C, H, W) in [-1, 1] to (B, D); ``channels`` is the channel count it expects
    (grey images are repeated to 3 channels, and RGB averaged to grey, as needed). ``to(device)`` moves it.
    """

    def __init__(self, net: nn.Module, name: str, checkpoint_hash: str | None, channels: int = 3,
                 batch_size: int = 32):
        self.net = net.eval()
        self.device = torch.device("cpu")
        self.name = name
        self.checkpoint_hash = checkpoint_hash
        self.channels = channels
        self.batch_size = batch_size

    def to(self, device: str | torch.device) -> FeatureExtractor:
        """Run on ``device`` (e.g. ``cuda``); features still come back as NumPy arrays."""
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def describe(self) -> dict:
        """What to record next to every number computed with these features."""
        return {"name": self.name, "checkpoint_hash": self.checkpoint_hash}

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) -> float64 features (N, D), same D for every input size."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        out = []
        for start in range(0, len(images), self.batch_size):
            x = _match_channels(image_to_tensor(images[start : start + self.batch_size]), self.channels)
            out.append(self.net(x.to(self.device)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, channels, 1, 1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {channels}-channel extractor")


def pixel_extractor(size: int = 8) -> FeatureExtractor:
    """Raw pixels area-downscaled to ``size`` x ``size`` (D = 3 * size**2). No weights, hash ``None``."""
    net = nn.Sequential(nn.AdaptiveAvgPool2d(size), nn.Flatten())
    return FeatureExtractor(net, f"pixels-{size}", None)


def inception_extractor(weights: str | Path) -> FeatureExtractor:
    """The FID Inception-v3 (D = 2048) from a local pytorch-fid weights file (``.pth`` or ``.safetensors``)."""
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: Inception weights file not found")
    if weights.suffix == ".safetensors":
        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    net = FIDInceptionV3()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        raise CheckpointError(f"{weights}: not an FID Inception-v3 state dict ({e})") from e
    # BatchNorm step counters are absent from the TensorFlow port; any other gap means a wrong file.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: not an FID Inception-v3 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return FeatureExtractor(net, "inception-v3-fid", file_sha256(weights)[:16], batch_size=16)


class SegEncoder(nn.Module):
    """BasicUNet encoder: GAP of each of its five encoder levels, concatenated -> (B, sum(features[:5]))."""

    def __init__(self, unet: BasicUNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.unet
        levels = [u.conv_0(x)]
        for down in (u.down_1, u.down_2, u.down_3, u.down_4):
            levels.append(down(levels[-1]))
        return torch.cat([f.mean(dim=(2, 3)) for f in levels], 1)


def _build_unet(cfg: dict) -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=cfg["in_channels"], out_channels=2,
                     features=tuple(cfg["features"]))


def seg_encoder_extractor(folder: str | Path) -> FeatureExtractor:
    """Load a folder written by :func:`train_segmentation_encoder` (the :mod:`lesionforge.checkpoints` format:
    ``model.safetensors`` + ``extractor_config.json``)."""
    folder = Path(folder)
    cfg = read_model_meta(folder, SEG_ENCODER_CONFIG, "seg-encoder")
    unet = _build_unet(cfg)
    load_weights(unet, folder / WEIGHTS)
    name = f"seg-encoder-basicunet-{cfg['resolution']}px"
    return FeatureExtractor(SegEncoder(unet), name, dir_hash(folder), channels=cfg["in_channels"])


def train_segmentation_encoder(
    train: PairArrays,
    out_dir: str | Path,
    features: tuple[int, ...] = (16, 32, 64, 128, 256, 16),
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint_every: int = 100,
    overwrite: bool = False,
    resume: bool = False,
    device: str | None = None,
) -> Path:
    """Train a BasicUNet on the real labelled pairs (Dice + CE, random flips) and save it as an extractor folder.

    ``train`` images uint8 (N, H, W, C); only samples with ``has_mask`` are used. The training state is saved
    every ``checkpoint_every`` steps; ``resume`` continues from it with the same result as an uninterrupted run.
    Trains on ``device`` (:func:`~lesionforge.devices.resolve_device`). Returns ``out_dir``.
    """
    labelled = train.subset(np.flatnonzero(train.has_mask))
    if len(labelled) < 2:
        raise ValueError("train_segmentation_encoder needs at least 2 labelled samples")
    out_dir = claim_output(out_dir, "extractor run", overwrite=overwrite, resume=resume)
    seed_everything(seed)
    cfg = {"kind": "seg-encoder", "features": list(features), "in_channels": int(train.images.shape[-1]),
           "resolution": int(train.images.shape[1]), "steps": steps, "batch_size": batch_size, "lr": lr,
           "seed": seed, "n_train": len(labelled), "train_ids_hash": _ids_hash(labelled.ids)}
    unet = _build_unet(cfg).to(resolve_device(device))
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    start = _load_train_state(out_dir, cfg, unet, opt, gen) if resume else 0
    loss = _train_steps(unet, opt, gen, labelled, cfg, start, checkpoint_every, out_dir)
    cfg["final_loss"] = loss
    save_model_folder(unet, out_dir, SEG_ENCODER_CONFIG, cfg)
    # finished: the folder holds only what the extractor needs (and hashes)
    shutil.rmtree(out_dir / TRAIN_STATE, ignore_errors=True)
    (out_dir / LEGACY_SEG_ENCODER_STATE).unlink(missing_ok=True)
    return out_dir


def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _train_steps(unet: BasicUNet, opt: torch.optim.Optimizer, gen: torch.Generator, labelled: PairArrays,
                 cfg: dict, start: int, checkpoint_every: int, out_dir: Path) -> float:
    from monai.losses import DiceCELoss

    device = next(unet.parameters()).device
    images, masks = image_to_tensor(labelled.images), mask_to_tensor(labelled.masks > 0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    unet.train()
    loss = torch.tensor(float("nan"))
    for step in range(start, cfg["steps"]):
        idx = torch.randint(len(labelled), (min(cfg["batch_size"], len(labelled)),), generator=gen)
        x, y = images[idx].to(device), masks[idx].to(device)
        # whole-batch flips on tensors: MONAI's per-item dict transforms would need a DataLoader for no gain
        if torch.rand(1, generator=gen).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand(1, generator=gen).item() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        loss = loss_fn(unet(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % checkpoint_every == 0 and step + 1 < cfg["steps"]:
            save_train_state(out_dir, "model", unet, {"cfg": cfg, "opt": opt.state_dict(), "rng": gen.get_state()},
                             step + 1)
    return float(loss.item())


def _load_train_state(out_dir: Path, cfg: dict, unet: BasicUNet, opt: torch.optim.Optimizer,
                      gen: torch.Generator) -> int:
    """Resume from ``train_state/`` (or an older run's ``train_state.pt``, weights inside a torch.save blob);
    0 when there is neither."""
    legacy = out_dir / LEGACY_SEG_ENCODER_STATE
    if (out_dir / TRAIN_STATE / "step.json").is_file():
        step, saved = load_train_state(out_dir, "model", unet)
        where = out_dir / TRAIN_STATE
    elif legacy.is_file():
        saved, where = load_torch_state(legacy), legacy
        step = int(saved["step"])
    else:
        return 0
    if saved["cfg"] != cfg:
        raise CheckpointError(f"{where}: saved with other settings or data; start again with --overwrite")
    if where == legacy:
        unet.load_state_dict(saved["model"])
        announce_resume(out_dir, f"step {step} of {cfg['steps']} ({legacy.name})")
    opt.load_state_dict(saved["opt"])
    gen.set_state(saved["rng"])
    return step


def load_extractor(spec: str | Path) -> FeatureExtractor:
    """``pixels`` / ``pixels:<size>``, a seg-encoder folder, or an Inception weights file (.pth/.pt/.safetensors)."""
    text = str(spec)
    if text == "pixels" or text.startswith("pixels:"):
        size = text.partition(":")[2]
        if size and not size.isdigit():
            raise ValueError(f"extractor {text!r}: expected pixels:<size>, e.g. pixels:8")
        return pixel_extractor(int(size) if size else 8)
    path = Path(text)
    if path.is_dir():
        return seg_encoder_extractor(path)
    if path.is_file():
        return inception_extractor(path)
    raise CheckpointError(f"{path}: extractor not found (give 'pixels', a seg-encoder folder or an Inception file)")
