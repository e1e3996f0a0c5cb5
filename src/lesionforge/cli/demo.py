"""``lesionforge demo``: the whole pipeline on the built-in procedural dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
        overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
        seed: int = typer.Option(0, help="Random seed."),
    ) -> None:
        """Generate demo data, then run the pipeline stages on it and print a summary."""
        from lesionforge.pipeline_demo import run_demo

        run_demo(out, overwrite=overwrite, seed=seed)
