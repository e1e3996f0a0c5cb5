"""Commands of the validate stage: train autoencoder, train validator, filter."""

from __future__ import annotations

from pathlib import Path

import typer

from lesionforge.devices import DEVICE_HELP

PRESET_HELP = "A file, or the name of a packaged preset (lesionforge/presets/)."
THRESHOLD_HELP = "'auto' (chosen on real val pairs by --auto-rule) or a Dice value in [0, 1]."


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add this stage's commands: ``train autoencoder``, ``train validator`` (old ``train-*`` spellings kept,
    hidden) and ``filter``."""
    for name, cmd in (("autoencoder", train_autoencoder_cmd), ("validator", train_validator_cmd)):
        train_app.command(name)(cmd)
        app.command(f"train-{name}", hidden=True)(cmd)
    app.command("filter")(filter_cmd)


def train_autoencoder_cmd(
    data: Path = typer.Option(..., help="Manifest of all training images (labelled, unlabelled, lesion-free)."),
    config: Path = typer.Option(Path("autoencoder-cpu.yaml"), help=f"Autoencoder config YAML. {PRESET_HELP}"),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (a diffusers AutoencoderKL folder)."),
    val: Path | None = typer.Option(None, help="Manifest of val images for PSNR/SSIM (default: --data's val split)."),
    split: str | None = typer.Option(None, help="Use only this split of --data."),
    resume: bool = typer.Option(True, help="Continue from out/train_state if present."),
    overwrite: bool = typer.Option(False, help="Start over: delete the earlier run in --out (only a run folder)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
) -> None:
    """Train the latent autoencoder and report reconstruction PSNR/SSIM."""
    from rich import print as rprint

    from lesionforge.validate.run import train_autoencoder_from_files

    path = train_autoencoder_from_files(config, data, out, val=val, split=split, resume=resume, overwrite=overwrite,
                                        progress=True, device=device)
    rprint(f"autoencoder written to {path} (metrics in {path / 'metrics.json'})")


def train_validator_cmd(
    data: Path = typer.Option(..., help="Manifest of real labelled training pairs."),
    config: Path = typer.Option(Path("validator-cpu.yaml"),
                                help=f"Validator config YAML (kind: latent|pixel). {PRESET_HELP}"),
    out: Path = typer.Option(..., "-o", "--out", help="Output validator folder."),
    codec: Path | None = typer.Option(None, help="Autoencoder folder (needed for kind latent)."),
    kind: str | None = typer.Option(None, help="Override the config's kind: latent or pixel."),
    val: Path | None = typer.Option(None, help="Manifest of real val pairs (sets the automatic threshold)."),
    split: str | None = typer.Option(None, help="Use only this split of --data."),
    resume: bool = typer.Option(True, help="Continue from out/train_state if present."),
    overwrite: bool = typer.Option(False, help="Start over: delete the earlier run in --out (only a run folder)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
) -> None:
    """Train the single-step latent segmenter (or the pixel-space one) used by `lesionforge filter`."""
    from rich import print as rprint

    from lesionforge.validate.run import train_validator_from_files

    kind, path = train_validator_from_files(config, data, out, codec=codec, kind=kind, val=val, split=split,
                                            resume=resume, overwrite=overwrite, progress=True, device=device)
    rprint(f"{kind} validator written to {path}")


def filter_cmd(
    manifest: Path = typer.Argument(..., help="Manifest with synthetic samples (from synthesize)."),
    validator: Path | None = typer.Option(None, help="Validator folder from `train validator` (latent or pixel)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output manifest (default <name>.filtered.jsonl)."),
    threshold: str = typer.Option("auto", help=THRESHOLD_HELP),
    val: Path | None = typer.Option(None, help="Real val manifest for the auto threshold (default: stored scores)."),
    in_place: bool = typer.Option(False, help="Rewrite the input manifest instead of writing a new one."),
    overwrite: bool = typer.Option(False, help="Replace an existing output manifest."),
    empty_fraction_max: float = typer.Option(0.01, help="Lesion-free samples: max predicted foreground share."),
    list_rejected: bool = typer.Option(False, "--list-rejected", help="Only list samples a filter run rejected."),
    auto_rule: str = typer.Option(
        "contrast", help="'contrast': the threshold best separating real val pairs from val images with wrong "
        "masks; 'percentile': 10th percentile of Dice on real val pairs."),
    keep_best: int | None = typer.Option(
        None, help="Of the samples that pass, keep at most this many per source pair (the best by Dice)."),
    keep_bands: bool = typer.Option(
        False, help="With --keep-best: keep the lesion size bands (small/medium/large) in the shares drawn."),
) -> None:
    """Score synthetic samples with the validator; mark kept/rejected in a new manifest (deletes nothing)."""
    from rich import print as rprint

    from lesionforge.errors import ConfigError
    from lesionforge.validate.filter import list_rejected as rejected_rows
    from lesionforge.validate.run import filter_from_files

    if list_rejected:
        for s in rejected_rows(manifest):
            v = s.provenance.validation
            rprint(f"{s.id}\t{s.image}\tdice={v.get('dice')}\tthreshold={v.get('threshold')}")
        return
    if validator is None:
        raise ConfigError("filter needs --validator (or --list-rejected)")
    thr: str | float = threshold if threshold == "auto" else _parse_threshold(threshold)
    report = filter_from_files(manifest, validator, out, thr, val, in_place, overwrite, empty_fraction_max, auto_rule,
                               progress=True, keep_best=keep_best, keep_bands=keep_bands)
    rprint(f"threshold {report.threshold:.3f} ({report.threshold_rule})")
    rprint(f"kept {report.n_kept}/{report.n_scored} ({report.acceptance_rate:.1%}); manifest: {report.manifest}")


def _parse_threshold(text: str) -> float:
    from lesionforge.errors import ConfigError

    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--threshold must be 'auto' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {value}")
    return value
