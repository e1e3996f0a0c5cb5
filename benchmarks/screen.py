"""Usefulness screen (issue 13): rank a generator variant by what its pairs do for a segmenter, in minutes.

    python benchmarks/screen.py prepare --dataset kvasir-seg --n 32 --variant today --threads 1
    python benchmarks/screen.py run --dataset kvasir-seg --n 32 --variant today --variant vpred-minsnr --threads 1

A variant is the headline generator (``benchmarks/configs/<dataset>-cpu.yaml``) with some generator-config
fields changed (``VARIANTS``). ``prepare`` trains it (into the headline's own generator cache, through the
runner's stages, so the headline reuses it) and draws its synthetic set. ``run`` then trains the protocol
segmenter (the headline's network and augmentation) at a reduced budget, on (a) the synthetic pairs alone and
(b) the N real pairs plus the synthetic ones, selects and scores on real ``val`` (``test`` is never read), and
sets beside them the label fidelity (``label_fidelity.own_vs_shuffled``) and the in-domain KID of the synthetic
images. Real-only and copy-paste rows at the same budget make the scores comparable; they are trained once.
Writes ``benchmarks/results/screen-<dataset>-n<N>-cpu.json`` and ``.md``; every stage resumes from its files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from lesionforge.experiment.config import ExperimentConfig, load_experiment_config  # noqa: E402
from lesionforge.experiment.real_stages import LesionforgeStages  # noqa: E402
from lesionforge.experiment.runner import _SyntheticCache  # noqa: E402
from lesionforge.experiment.stages import ExperimentData, SyntheticSet  # noqa: E402

#: Generator variants: fields changed in the headline generator's config. Equal wall time: every variant keeps
#: today's steps x batch (the options below cost the same per step).
VARIANTS: dict[str, dict[str, Any]] = {
    "today": {},
    "vpred-minsnr": {"prediction_type": "v_prediction", "min_snr_gamma": 5.0},
    "augment": {"augment": {"p": 0.5}},
}
GENERATOR = "inpaint"  # the headline configs' generator entry the variants change


def screen_config(dataset: str, n: int, variant: str, samples_per_real: int = 2) -> ExperimentConfig:
    """The headline experiment config restricted to N, with the variant's generator and no filter (the
    screen scores the unfiltered pairs; the synthetic set's cache key does not include the filter)."""
    if variant not in VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    cfg = load_experiment_config(ROOT / "benchmarks" / "configs" / f"{dataset}-cpu.yaml", {"n_labelled": [n]})
    spec = cfg.generators[GENERATOR]
    spec = spec.model_copy(update={"overrides": {**spec.overrides, **VARIANTS[variant]}, "filter": None,
                                   "n_per_real": samples_per_real})
    return cfg.model_copy(update={"generators": {GENERATOR: spec}})


def prepare(cfg: ExperimentConfig, data: ExperimentData, n: int) -> SyntheticSet:
    """Train (or reuse) the variant's generator and draw its synthetic set, in the headline's cache."""
    return _SyntheticCache(cfg, LesionforgeStages(), data, n).get(GENERATOR)


app = typer.Typer(add_completion=False, help=__doc__)


@app.callback()
def _group() -> None:
    """Usefulness screen of generator variants (see the module docstring)."""


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Option("kvasir-seg", help="kvasir-seg or busi."),
    n: int = typer.Option(32, help="Labelled pairs."),
    variant: list[str] = typer.Option(["today"], help="Variants to train, in order."),
    threads: int | None = typer.Option(None, help="torch threads."),
) -> None:
    """Train the variants' generators and draw their synthetic sets (resumable)."""
    if threads:
        torch.set_num_threads(threads)
    data = None
    for v in variant:
        cfg = screen_config(dataset, n, v)
        data = data or LesionforgeStages().load_data(cfg)
        t0 = time.perf_counter()
        s = prepare(cfg, data, n)
        typer.echo(f"{v}: {s.manifest} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    app()
