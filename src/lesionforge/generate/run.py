"""File-level entry points of the generate stage (what the CLI calls): read data and presets from disk,
then call :func:`~lesionforge.generate.trainer.train_generator` or
:func:`~lesionforge.generate.synthesize.synthesize`."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from lesionforge.data.manifest import Sample
from lesionforge.errors import ConfigError
from lesionforge.generate.config import load_generator_config
from lesionforge.generate.inputs import load_backgrounds, training_inputs
from lesionforge.generate.models import read_meta
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainbatch import make_mask_source
from lesionforge.generate.trainer import train_generator
from lesionforge.utils import write_json_atomic

console = Console()


def train_from_files(config: str | Path, data: str | Path, out: str | Path, *, split: str | None = None,
                     labelled: int | None = None, backgrounds: str | Path | None = None,
                     prompts: str | Path | None = None, steps: int | None = None,
                     autoencoder: str | Path | None = None, resume: bool = True, device: str | None = None) -> Path:
    """Train from a YAML preset and data folders; records wall time and the command inputs in
    ``out/train_info.json``."""
    overrides: dict = {}
    if steps is not None:
        overrides["steps"] = steps
    if autoencoder is not None:
        overrides.update(space="latent", autoencoder=str(autoencoder))
    if device is not None:
        overrides["device"] = device
    cfg = load_generator_config(config, overrides)
    # only inpainting learns from unlabelled images (self-supervised): others skip loading them
    train, unlabelled = training_inputs(data, cfg.resolution, cfg.image_channels, split, labelled,
                                        with_unlabelled=cfg.kind == "inpaint")
    bg = load_backgrounds(backgrounds, cfg.resolution, cfg.image_channels, split) if backgrounds else None
    start = time.perf_counter()
    out = train_generator(cfg, train, out, unlabelled=unlabelled, backgrounds=bg, prompts=prompts, resume=resume)
    info = {"config": str(config), "data": str(data), "split": split, "labelled": labelled,
            "backgrounds": None if backgrounds is None else str(backgrounds), "n_labelled": len(train),
            "n_unlabelled": 0 if unlabelled is None else len(unlabelled), "n_backgrounds": 0 if bg is None else len(bg),
            "train_seconds": round(time.perf_counter() - start, 1), "steps": cfg.steps}
    write_json_atomic(Path(out) / "train_info.json", info)
    console.print(f"[green]generator[/] saved to {out} ({info['train_seconds']} s)")
    return Path(out)


def synthesize_from_files(generator: str | Path, out: str | Path, n: int, *, data: str | Path | None = None,
                          split: str | None = None, labelled: int | None = None,
                          backgrounds: str | Path | None = None, mask_source: str = "jitter",
                          executor: str = "local", ray_options: dict | None = None, **options) -> list[Sample]:
    """Load the conditions ``synthesize`` needs for the generator's kind from disk, then run it (``executor``
    "ray": sharded over a Ray cluster, ``ray_options`` address/shards/gpus_per_task/max_retries);
    ``options`` are passed to :func:`~lesionforge.generate.synthesize.synthesize`."""
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: choose 'local' or 'ray'")
    meta = read_meta(generator)
    res, channels, kind = meta["resolution"], meta["image_channels"], meta["kind"]
    real = training_inputs(data, res, channels, split, labelled, with_unlabelled=False)[0] if data is not None else None
    if kind in ("mask2image", "inpaint") and real is None and mask_source == "jitter":
        raise ConfigError(f"kind {kind!r} with mask source 'jitter' needs --data (real masks to jitter)")
    masks_from = make_mask_source(mask_source, real, res) if kind in ("mask2image", "inpaint") else None
    bg = load_backgrounds(backgrounds, res, channels, split) if backgrounds is not None else None
    if executor == "ray":
        from lesionforge.generate.shards import synthesize_on_ray
        from lesionforge.raycluster import TaskResources

        ro = dict(ray_options or {})
        resources = TaskResources(num_gpus=ro.pop("gpus_per_task", None))
        samples = synthesize_on_ray(generator, out, n, masks_from=masks_from, backgrounds=bg, real=real,
                                    resources=resources, **ro, **options)
    else:
        samples = synthesize(generator, out, n, masks_from=masks_from, backgrounds=bg, real=real, **options)
    console.print(f"[green]{len(samples)}[/] synthetic samples in {out}")
    return samples
