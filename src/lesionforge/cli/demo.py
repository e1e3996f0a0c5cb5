"""``lesionforge demo``: the whole pipeline on the built-in procedural dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "-o", "--out", help="Output folder."),
        overwrite: bool = typer.Option(False, help="Delete an existing output folder first."),
        resume: bool = typer.Option(False, help="Continue an interrupted demo in OUT."),
        seed: int = typer.Option(0, help="Seed of the procedural data."),
    ) -> None:
        """Make demo data, check and fingerprint it, train a generator, synthesize, filter, train segmenters
        (baseline / copy-paste / synthetic) and report the paired difference."""
        from lesionforge.pipeline_demo import run_demo

        run_demo(out, overwrite=overwrite, seed=seed, resume=resume)
