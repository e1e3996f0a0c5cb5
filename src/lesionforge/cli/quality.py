"""Commands ``quality``, ``memorization`` and ``train extractor``: generation quality and the memorization audit."""

from __future__ import annotations

from pathlib import Path

import typer

EXTRACTOR_HELP = ("Feature extractor: 'pixels' / 'pixels:<size>', a seg-encoder folder (train extractor), "
                  "or a local pytorch-fid Inception weights file (.pth or .safetensors).")


def _resolution(profile: str) -> int:
    from lesionforge.config import PROFILE_RESOLUTION

    if profile not in PROFILE_RESOLUTION:
        raise typer.BadParameter(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_RESOLUTION)}")
    return PROFILE_RESOLUTION[profile]


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add this module's commands: ``quality``, ``memorization`` and ``train extractor`` (old spelling
    ``train-extractor`` kept, hidden)."""

    @app.command()
    def quality(
        real: Path = typer.Option(..., help="Manifest of the real images (JSONL)."),
        synthetic: Path = typer.Option(..., help="Manifest of the synthetic samples (JSONL)."),
        extractor: str = typer.Option(..., help=EXTRACTOR_HELP),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for quality.json and quality.md."),
        profile: str = typer.Option("cpu", help="Resolution profile: tiny, cpu, cpu128, gpu."),
        real_split: str = typer.Option("test", help="Use only real rows of this split ('' for all)."),
        kid_subsets: int = typer.Option(100, help="KID: number of random subsets."),
        kid_subset_size: int = typer.Option(1000, help="KID: subset size (capped by the set sizes)."),
        msssim_pairs: int = typer.Option(200, help="MS-SSIM: random image pairs per set."),
        seed: int = typer.Option(0, help="Random seed for subsets and pairs."),
        kept_only: bool = typer.Option(True, help="Score only kept synthetic samples (see docs/validation.md)."),
        device: str = typer.Option("cpu", help="torch device for the feature extractor, e.g. cuda."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    ) -> None:
        """FID, KID, MS-SSIM diversity and mask fidelity of synthetic samples against real images."""
        from rich.console import Console

        from lesionforge.quality.run import run_quality

        with Console(stderr=True).status("Computing features and metrics"):
            path = run_quality(real, synthetic, extractor, out, _resolution(profile), real_split or None,
                               kept_only=kept_only, device=device, overwrite=overwrite, progress=True,
                               kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, msssim_pairs=msssim_pairs,
                               seed=seed)
        typer.echo(path.with_suffix(".md").read_text(encoding="utf-8"))

    @app.command()
    def memorization(
        train: Path = typer.Option(..., help="Manifest of the real training images (JSONL)."),
        synthetic: Path = typer.Option(..., help="Manifest of the synthetic samples (JSONL)."),
        extractor: str = typer.Option(..., help=EXTRACTOR_HELP),
        out: Path = typer.Option(..., "-o", "--out",
                                 help="Output folder for memorization.json and the flagged-pairs figure."),
        profile: str = typer.Option("cpu", help="Resolution profile: tiny, cpu, cpu128, gpu."),
        train_split: str = typer.Option("train", help="Use only training rows of this split ('' for all)."),
        percentile: float = typer.Option(1.0, help="Percentile of real-to-real NN distances that flags a sample."),
        device: str = typer.Option("cpu", help="torch device for the feature extractor, e.g. cuda."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    ) -> None:
        """Nearest training image of every synthetic sample; flags near copies."""
        from rich.console import Console

        from lesionforge.quality.run import run_memorization_audit

        with Console(stderr=True).status("Searching nearest training images"):
            path = run_memorization_audit(train, synthetic, extractor, out, _resolution(profile),
                                          train_split or None, percentile, device=device, overwrite=overwrite,
                                          progress=True)
        typer.echo(f"wrote {path}")

    def train_extractor(
        train: Path = typer.Option(..., help="Manifest of the real labelled training pairs (JSONL)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder of the seg-encoder extractor."),
        profile: str = typer.Option("cpu", help="Resolution profile: tiny, cpu, cpu128, gpu."),
        split: str = typer.Option("train", help="Use only rows of this split ('' for all)."),
        steps: int = typer.Option(300, help="Optimizer steps."),
        seed: int = typer.Option(0, help="Random seed."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
        resume: bool = typer.Option(False, help="Continue an interrupted run in the same folder."),
    ) -> None:
        """Train the in-domain feature extractor (a BasicUNet segmenter whose encoder gives the features)."""
        from rich.console import Console

        from lesionforge.quality.run import train_extractor_from_files

        with Console(stderr=True).status(f"Training the seg-encoder extractor ({steps} steps)"):
            path = train_extractor_from_files(train, out, _resolution(profile), split or None, steps, seed,
                                              overwrite=overwrite, resume=resume, progress=True)
        typer.echo(f"wrote {path}")

    train_app.command("extractor")(train_extractor)
    app.command("train-extractor", hidden=True)(train_extractor)
