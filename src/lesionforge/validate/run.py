"""File-level entry points of the validate stage (what the CLI calls): manifests and config files in, a trained
autoencoder or validator folder, or a filtered manifest, out."""

from __future__ import annotations

from pathlib import Path

import yaml

from lesionforge.config import load_config, resolve_preset
from lesionforge.data.arrays import manifest_arrays
from lesionforge.errors import ConfigError
from lesionforge.generate.autoencoder import AutoencoderConfig, LatentCodec, train_autoencoder
from lesionforge.presets import preset_path
from lesionforge.validate.filter import FilterReport, filter_manifest
from lesionforge.validate.latent_segmenter import LatentSegmenterConfig, train_latent_segmenter
from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig, train_pixel_segmenter
from lesionforge.validate.validator import load_validator

ValidatorConfig = LatentSegmenterConfig | PixelSegmenterConfig


def load_validator_config(path: str | Path, overrides: dict | None = None) -> ValidatorConfig:
    """Read a validator config (a YAML file or a packaged ``validator-*.yaml`` preset); its ``kind`` (latent /
    pixel) picks the settings model."""
    path = preset_path(path)
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        kind = (yaml.safe_load(text) or {}).get("kind", "latent") if text is not None else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    kind = (overrides or {}).get("kind", kind)
    if kind not in (None, "latent", "pixel"):
        raise ConfigError(f"{path}: kind must be 'latent' or 'pixel', got {kind!r}")
    model = PixelSegmenterConfig if kind == "pixel" else LatentSegmenterConfig
    return resolve_preset(path, overrides, model)


def train_autoencoder_from_files(config: str | Path, data: str | Path, out: str | Path, *,
                                 val: str | Path | None = None, split: str | None = None, resume: bool = True,
                                 overwrite: bool = False, progress: bool = False, device: str | None = None) -> Path:
    """Train the latent autoencoder of ``config`` on the images of manifest ``data`` (rows of ``split``);
    ``val``: a manifest for the reconstruction metrics; ``device`` overrides the config's."""
    cfg = load_config(config, AutoencoderConfig, {"device": device} if device else None)
    images = manifest_arrays(data, cfg.resolution, cfg.image_channels, split=split, progress=progress)
    val_arrays = manifest_arrays(val, cfg.resolution, cfg.image_channels, progress=progress) if val else None
    return train_autoencoder(cfg, images, out, val=val_arrays, resume=resume, overwrite=overwrite, progress=progress)


def train_validator_from_files(config: str | Path, data: str | Path, out: str | Path, *,
                               codec: str | Path | None = None, kind: str | None = None,
                               val: str | Path | None = None, split: str | None = None, resume: bool = True,
                               overwrite: bool = False, progress: bool = False,
                               device: str | None = None) -> tuple[str, Path]:
    """Train the validator of ``config`` (``kind`` / ``device`` override its own) on the labelled pairs of
    manifest ``data``; the latent kind reads latents of the autoencoder folder ``codec``. Returns (kind, folder)."""
    over = {k: v for k, v in {"kind": kind, "device": device}.items() if v}
    cfg = load_validator_config(config, over or None)
    train = manifest_arrays(data, cfg.resolution, cfg.image_channels, split=split, progress=progress)
    val_arrays = manifest_arrays(val, cfg.resolution, cfg.image_channels, progress=progress) if val else None
    opts = {"val": val_arrays, "resume": resume, "overwrite": overwrite, "progress": progress}
    if cfg.kind == "latent":
        if codec is None:
            raise ConfigError("kind latent needs --codec (an autoencoder folder from `lesionforge train autoencoder`)")
        return cfg.kind, train_latent_segmenter(cfg, train, LatentCodec.from_pretrained(codec), out, **opts)
    return cfg.kind, train_pixel_segmenter(cfg, train, out, **opts)


def filter_from_files(manifest: str | Path, validator: str | Path, out: str | Path | None = None,
                      threshold: str | float = "auto", val: str | Path | None = None, in_place: bool = False,
                      overwrite: bool = False, empty_fraction_max: float = 0.01, auto_rule: str = "contrast",
                      progress: bool = False, keep_best: int | None = None,
                      keep_bands: bool = False) -> FilterReport:
    """Score the synthetic rows of ``manifest`` with the validator folder ``validator`` and write the kept /
    rejected marks (see :func:`~lesionforge.validate.filter.filter_manifest`); ``val``: a manifest of real
    pairs for the automatic threshold (default: the scores stored with the validator)."""
    val_arrays = None
    if val is not None:
        v = load_validator(validator)
        val_arrays = manifest_arrays(val, v.resolution, v.image_channels, progress=progress)
    return filter_manifest(manifest, validator, out, threshold, val_arrays, in_place, overwrite, empty_fraction_max,
                           auto_rule, keep_best, keep_bands=keep_bands)
