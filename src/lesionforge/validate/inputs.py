"""Inputs of the validate stage from files: manifests to arrays, validator configs by kind."""

from __future__ import annotations

from pathlib import Path

import yaml

from lesionforge.config import resolve_preset
from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.manifest import read_manifest
from lesionforge.errors import ConfigError, DataError
from lesionforge.validate.latent_segmenter import LatentSegmenterConfig
from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig

ValidatorConfig = LatentSegmenterConfig | PixelSegmenterConfig


def manifest_arrays(
    path: str | Path, resolution: int, channels: int = 3, split: str | None = None, progress: bool = False
) -> PairArrays:
    """Load the samples of a manifest (only those of ``split`` if given) as :class:`PairArrays`."""
    samples = read_manifest(path)
    if split is not None:
        samples = [s for s in samples if s.split == split]
    if not samples:
        raise DataError(path, f"no samples{f' in split {split!r}' if split else ''}")
    return load_arrays(samples, resolution, channels, progress=progress)


def load_validator_config(path: str | Path, overrides: dict | None = None) -> ValidatorConfig:
    """Read a ``configs/validator-*.yaml``; its ``kind`` (latent / pixel) picks the settings model."""
    path = Path(path)
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
