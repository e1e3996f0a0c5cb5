"""`lesionforge segment ...` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from lesionforge.devices import DEVICE_HELP

app = typer.Typer(no_args_is_help=True)


@app.command()
def train(
    config: Path = typer.Argument(..., help="SegmentConfig YAML, or a packaged preset name, e.g. segment-cpu.yaml."),
    data: Path = typer.Argument(..., help="Training dataset folder or JSONL manifest."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder (checkpoints, history)."),
    train_ids: str = typer.Option(None, help="Training ids: FILE (one a line) or FILE.json:KEY."),
    val_data: Path = typer.Option(None, help="Validation folder or manifest (default: DATA)."),
    val_ids: str = typer.Option(None, help="Validation ids: FILE or FILE.json:KEY (e.g. splits.json:val)."),
    synthetic: Path = typer.Option(None, help="Manifest of synthetic pairs to mix in (see mixing.mode)."),
    kept_only: bool = typer.Option(False, help="Use only kept synthetic samples (filter-kept, not reviewer-rejected)."),
    steps: int = typer.Option(None, help="Override the config's optimizer steps."),
    seed: int = typer.Option(None, help="Override the config's seed."),
    channels: int = typer.Option(3, help="Image channels to read (1 or 3)."),
    resume: bool = typer.Option(True, help="Continue a run found in --out."),
    overwrite: bool = typer.Option(False, help="Start over: delete the earlier run in --out (only a run folder)."),
    device: str = typer.Option(None, help=DEVICE_HELP),
) -> None:
    """Train a segmentation network for a fixed number of steps; keep the best-validation checkpoint."""
    from rich import print as rprint

    from lesionforge.segment.run import train_from_files

    overrides = {k: v for k, v in {"steps": steps, "seed": seed, "device": device}.items() if v is not None}
    run = train_from_files(
        config, data, out, train_ids=train_ids, val_data=val_data, val_ids=val_ids, synthetic=synthetic,
        kept_only=kept_only, overrides=overrides, channels=channels, resume=resume and not overwrite,
        overwrite=overwrite,
    )
    rprint(f"best val mDice {run.best_val_mdice:.4f} -> {run.best_checkpoint} ({run.images_per_s:.1f} images/s)")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Segmenter checkpoint folder (e.g. RUN/best)."),
    data: Path = typer.Argument(..., help="Dataset folder or JSONL manifest to score on (any dataset)."),
    ids: str = typer.Option(None, help="Score only these ids: FILE or FILE.json:KEY (e.g. splits.json:test)."),
    subset: list[str] = typer.Option(None, help="Named id subset NAME=FILE[.json:KEY], repeatable."),
    miss_fraction: float = typer.Option(0.1, help="A lesion is missed below this predicted coverage."),
    out: Path = typer.Option(None, "-o", "--out", help="Write the full result JSON here."),
) -> None:
    """Score a model: mDice, mIoU, precision, recall, HD95, lesion miss rate by size band and subset."""
    from rich.console import Console
    from rich.table import Table

    from lesionforge.errors import ConfigError
    from lesionforge.segment.run import evaluate_to_file

    bad = [s for s in subset or [] if "=" not in s]
    if bad:
        raise ConfigError(f"--subset needs NAME=FILE, got {bad[0]!r}")
    subsets = dict(s.split("=", 1) for s in subset or [])
    d = evaluate_to_file(model, data, ids=ids, subsets=subsets, miss_fraction=miss_fraction, out=out).to_dict()
    table = Table("set", "images", "mDice", "mIoU", "HD95", "miss", "small", "medium", "large")
    for name, s in [("all", d), *d["subsets"].items()]:
        values = [s["mdice"], s["miou"], s["mhd95"], s["miss_rate"], *s["miss_rate_by_band"].values()]
        table.add_row(name, str(s["n_images"]), *(_fmt(v) for v in values))
    Console().print(table)
    if d.get("per_case"):
        Console().print(f"3D Dice over {d['n_cases']} volumes (slices reassembled per case): {_fmt(d['mdice3d'])}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
