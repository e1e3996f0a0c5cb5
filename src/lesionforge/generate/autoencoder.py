"""Latent autoencoder: a diffusers ``AutoencoderKL`` behind a small codec API, and its trainer.

:class:`LatentCodec` is what latent-space generators and the latent validator use: ``encode`` maps images
in [-1, 1] to unit-variance latents (posterior mean times the stored scale factor), ``decode`` maps back.
A checkpoint is a plain diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors) whose config
holds ``scaling_factor``, so a pretrained Stable Diffusion ``vae/`` folder loads the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from pydantic import Field
from pytorch_msssim import ssim

from lesionforge.data.arrays import PairArrays, image_to_tensor
from lesionforge.devices import TrainedHere, resolve_device
from lesionforge.errors import CheckpointError
from lesionforge.outputs import claim_output
from lesionforge.train_state import load_train_state, save_train_state
from lesionforge.utils import code_version, seed_everything, write_json_atomic

AE_CONFIG = "config.json"


class LatentCodec:
    """Deterministic image <-> latent codec around a diffusers ``AutoencoderKL``.

    Example::

        codec = LatentCodec.from_pretrained("runs/ae")
        z = codec.encode(x)          # x (B, C, H, W) in [-1, 1] -> z (B, c, H/f, W/f), ~unit variance
        x_rec = codec.decode(z)      # (B, C, H, W) in [-1, 1]
    """

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae.eval().requires_grad_(False)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        # Only some pretrained VAEs (SD3, Flux) shift latents before scaling.
        return float(self.vae.config.get("shift_factor") or 0.0)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: str | torch.device) -> LatentCodec:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> latents (B, c, H/f, W/f) scaled to about unit variance."""
        self._check_image(x)
        mean = self.vae.encode(x.to(self.device, torch.float32)).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, h, w) as returned by :meth:`encode` -> images (B, C, h*f, w*f) in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects (B, {self.latent_channels}, h, w) latents, got {tuple(z.shape)}")
        x = self.vae.decode(z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor).sample
        return x.clamp(-1.0, 1.0)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the autoencoder (config with ``scaling_factor`` + safetensors weights) to ``path``."""
        self.vae.save_pretrained(path, safe_serialization=True)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> LatentCodec:
        """Load a codec folder, a diffusers ``AutoencoderKL`` folder, or a pipeline folder with ``vae/``."""
        folder = _vae_folder(Path(path))
        try:
            vae = AutoencoderKL.from_pretrained(
                folder, use_safetensors=True, local_files_only=True, torch_dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: not a loadable AutoencoderKL checkpoint ({e})") from e
        return cls(vae.to(device))

    def _check_image(self, x: torch.Tensor) -> None:
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.image_channels or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"encode expects (B, {self.image_channels}, H, W) with H, W divisible by {f}, got {tuple(x.shape)}"
            )


def _vae_folder(path: Path) -> Path:
    if (path / AE_CONFIG).is_file():
        return path
    if (path / "vae" / AE_CONFIG).is_file():
        return path / "vae"
    raise CheckpointError(f"{path}: no {AE_CONFIG} (expected an AutoencoderKL folder or a pipeline with vae/)")


class AutoencoderConfig(TrainedHere):
    """Autoencoder architecture and training settings (the packaged ``autoencoder-*.yaml`` presets)."""

    resolution: int = 64
    image_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # f = 2 ** (len - 1)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    mid_block_attention: bool = True
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-4
    ssim_weight: float = 0.5
    kl_weight: float = 1e-6
    adversarial_weight: float = Field(0.0, ge=0.0)  # 0 disables the patch discriminator
    adversarial_start: int = 500  # discriminator joins after this many steps, once reconstructions are fair
    flip_augment: bool = True
    checkpoint_every: int = 250
    seed: int = 0


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A fresh ``AutoencoderKL`` for ``cfg`` (downsampling factor ``2 ** (len(block_out_channels) - 1)``)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.image_channels, out_channels=cfg.image_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=cfg.resolution,
        mid_block_add_attention=cfg.mid_block_attention, scaling_factor=1.0,
    )


def _batch(images: np.ndarray, rng: np.random.Generator, size: int, flip: bool) -> torch.Tensor:
    x = image_to_tensor(images[rng.integers(0, len(images), size)])
    if flip:
        hflip = torch.from_numpy(rng.random(size) < 0.5)
        x = torch.where(hflip[:, None, None, None], x.flip(-1), x)
    return x


def _reconstruction_loss(x: torch.Tensor, rec: torch.Tensor, cfg: AutoencoderConfig) -> torch.Tensor:
    win = 7 if x.shape[-1] < 64 else 11  # pytorch-msssim needs the window to fit the image
    s = ssim((rec + 1) / 2, (x + 1) / 2, data_range=1.0, win_size=win, size_average=True)
    return F.l1_loss(rec, x) + cfg.ssim_weight * (1 - s)


def _discriminator(cfg: AutoencoderConfig) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, channels=cfg.block_out_channels[0], in_channels=cfg.image_channels,
                              num_layers_d=2, norm="INSTANCE")


def _train_step(vae, disc, opt, opt_d, x: torch.Tensor, cfg: AutoencoderConfig, step: int) -> dict[str, float]:
    posterior = vae.encode(x).latent_dist
    rec = vae.decode(posterior.sample()).sample
    rec_loss = _reconstruction_loss(x, rec, cfg)
    kl = posterior.kl().mean() / x[0].numel()  # per pixel, so kl_weight does not depend on resolution
    loss = rec_loss + cfg.kl_weight * kl
    use_adv = disc is not None and step >= cfg.adversarial_start
    if use_adv:
        loss = loss + cfg.adversarial_weight * F.softplus(-disc(rec)[-1]).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if use_adv:  # non-saturating GAN loss on patch logits
        d_loss = F.softplus(-disc(x)[-1]).mean() + F.softplus(disc(rec.detach())[-1]).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    return {"loss": loss.item(), "rec": rec_loss.item(), "kl": kl.item()}


def _save_state(out_dir: Path, vae, disc, opt, opt_d, step: int) -> None:
    optim = {"opt": opt.state_dict(), "opt_d": opt_d.state_dict() if opt_d else None}
    save_train_state(out_dir, "vae", vae, optim, step, helpers={"disc": disc} if disc is not None else None)


def _load_state(out_dir: Path, vae, disc, opt, opt_d) -> int:
    step, optim = load_train_state(out_dir, "vae", vae, helpers={"disc": disc} if disc is not None else None)
    if optim is not None:
        opt.load_state_dict(optim["opt"])
        if disc is not None and optim.get("opt_d") is not None:
            if optim.get("disc") is not None:  # legacy: the discriminator's weights inside optim.pt
                disc.load_state_dict(optim["disc"])
            opt_d.load_state_dict(optim["opt_d"])
    return step


def _check_images(images: PairArrays, cfg: AutoencoderConfig, what: str) -> None:
    shape = images.images.shape
    if shape[1:] != (cfg.resolution, cfg.resolution, cfg.image_channels):
        raise ValueError(f"{what} images are {shape[1:]}; config wants "
                         f"{(cfg.resolution, cfg.resolution, cfg.image_channels)}")


def train_autoencoder(
    cfg: AutoencoderConfig, images: PairArrays, out_dir: str | Path, val: PairArrays | None = None,
    resume: bool = True, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Train an ``AutoencoderKL`` on ``images`` (all available images: labelled, unlabelled, lesion-free).

    Loss: L1 + ``ssim_weight`` * (1 - SSIM) + ``kl_weight`` * KL, plus an optional MONAI patch
    discriminator. Checkpoints to ``out_dir/train_state`` every ``checkpoint_every`` steps and resumes from
    it. Finally sets ``scaling_factor`` = 1 / std of the training latents, saves the model to ``out_dir``
    (loadable with :meth:`LatentCodec.from_pretrained`) and writes ``metrics.json`` (val PSNR/SSIM).
    Returns ``out_dir``.
    """
    from lesionforge.config import save_config

    _check_images(images, cfg, "training")
    out_dir = claim_output(out_dir, "autoencoder run", overwrite=overwrite, resume=resume)
    seed_everything(cfg.seed)
    save_config(cfg, out_dir / "autoencoder.yaml")
    device = resolve_device(cfg.device)
    vae = build_autoencoder(cfg).train().to(device)
    disc = _discriminator(cfg).to(device) if cfg.adversarial_weight > 0 else None
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) if disc is not None else None
    start = _load_state(out_dir, vae, disc, opt, opt_d) if resume else 0
    rng = np.random.default_rng([cfg.seed, start])  # a resumed run continues with fresh, reproducible batches
    log: dict[str, float] = {}
    for step in _progress(range(start, cfg.steps), progress, "Training autoencoder"):
        x = _batch(images.images, rng, cfg.batch_size, cfg.flip_augment).to(device)
        log = _train_step(vae, disc, opt, opt_d, x, cfg, step)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_state(out_dir, vae, disc, opt, opt_d, step + 1)
    codec = LatentCodec(vae)
    codec.vae.register_to_config(scaling_factor=latent_scale(codec, images.images))
    codec.save_pretrained(out_dir)
    side = cfg.resolution // codec.downsample_factor
    metrics = {"steps": cfg.steps, "final_train_loss": log, "scaling_factor": codec.scaling_factor,
               "latent_shape": [codec.latent_channels, side, side], "code_version": code_version(), "seed": cfg.seed}
    if val is not None:
        _check_images(val, cfg, "val")
        metrics["val"] = reconstruction_metrics(codec, val.images)
    write_json_atomic(out_dir / "metrics.json", metrics)
    return out_dir


def _progress(it, show: bool, description: str):
    if not show:
        return it
    from lesionforge.progress import track

    return track(it, description=description)


@torch.no_grad()
def latent_scale(codec: LatentCodec, images: np.ndarray, batch_size: int = 64) -> float:
    """1 / std of the unscaled posterior means of ``images`` uint8 (N, H, W, C): makes latents unit variance."""
    zs = [codec.encode(image_to_tensor(images[i : i + batch_size])) / codec.scaling_factor
          for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).std().clamp_min(1e-6))


@torch.no_grad()
def reconstruction_metrics(codec: LatentCodec, images: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of encode -> decode round trips of ``images`` uint8 (N, H, W, C)."""
    psnrs, ssims = [], []
    for i in range(0, len(images), batch_size):
        x = image_to_tensor(images[i : i + batch_size]).to(codec.device)
        rec = codec.decode(codec.encode(x))
        a, b = (x + 1) / 2, (rec + 1) / 2
        mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(1.0 / mse))
        win = 7 if x.shape[-1] < 64 else 11
        ssims.append(ssim(b, a, data_range=1.0, win_size=win, size_average=False))
    psnr, s = torch.cat(psnrs), torch.cat(ssims)
    return {"psnr": float(psnr.mean()), "ssim": float(s.mean()), "n": int(len(psnr)),
            "psnr_std": float(psnr.std()) if len(psnr) > 1 else 0.0}
