"""File-level entry points behind ``lesionforge segment train`` / ``evaluate``: paths in, files out."""

from __future__ import annotations

from pathlib import Path

from lesionforge.config import resolve_preset
from lesionforge.data.arrays import load_arrays
from lesionforge.data.manifest import read_set
from lesionforge.errors import ConfigError
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.data import load_pairs, read_id_spec, twins_of
from lesionforge.segment.metrics import EvalResult, evaluate_path
from lesionforge.segment.train import SegmentRun, train_segmenter
from lesionforge.utils import write_json_atomic


def train_from_files(
    config: str | Path, data: str | Path, out: str | Path, *, train_ids: str | None = None,
    val_data: str | Path | None = None, val_ids: str | None = None, synthetic: str | Path | None = None,
    kept_only: bool = False, overrides: dict | None = None, channels: int | None = 3, resume: bool = True,
    overwrite: bool = False, progress: bool = True,
) -> SegmentRun:
    """Train from a YAML config and dataset paths (folders or manifests).

    ``train_ids`` / ``val_ids`` are id specs (``FILE`` or ``FILE.json:KEY``); validation comes from ``val_data``
    (default: ``data``) and needs one of the two. ``synthetic`` is a manifest of synthetic pairs (or a set folder: its
    ``origin: synthetic`` rows); ``kept_only`` keeps the kept samples (:func:`~lesionforge.data.manifest.is_kept`)."""
    cfg = resolve_preset(config, overrides, SegmentConfig)
    train = load_pairs(data, cfg.resolution, channels, read_id_spec(train_ids) if train_ids else None)
    if val_data is None and val_ids is None:  # checked after the data, so that "no masks" is said first
        raise ConfigError("a validation set is needed: give val_ids (--val-ids) or val_data (--val-data)")
    val = load_pairs(val_data or data, cfg.resolution, channels, read_id_spec(val_ids) if val_ids else None)
    syn_arrays, twins = None, None
    if synthetic is not None:
        samples = read_set(synthetic, origin="synthetic", kept_only=kept_only)
        syn_arrays, twins = load_arrays(samples, cfg.resolution, channels), twins_of(samples)
    return train_segmenter(cfg, train, val, out, synthetic=syn_arrays, twins=twins, resume=resume,
                           overwrite=overwrite, progress=progress)


def evaluate_to_file(
    model: str | Path, data: str | Path, *, ids: str | None = None, subsets: dict[str, str] | None = None,
    miss_fraction: float = 0.1, out: str | Path | None = None,
) -> EvalResult:
    """Score a checkpoint on a dataset folder or manifest; ``subsets`` maps names to id specs; the result
    (``EvalResult.to_dict()``) is written to ``out`` when given."""
    named = {name: read_id_spec(spec) for name, spec in (subsets or {}).items()}
    result = evaluate_path(model, data, ids=read_id_spec(ids) if ids else None, subsets=named,
                           miss_fraction=miss_fraction)
    if out is not None:
        write_json_atomic(out, {"model": str(model), "data": str(data), **result.to_dict()})
    return result
