"""The ``lesionforge`` command: one Typer app; each stage adds its sub-commands from its own module.

The command modules hold no logic: they parse options and call the stage's Python API.
"""

from __future__ import annotations

import typer

from lesionforge.cli import conditioning, data, demo, experiment, generate, quality, review, segment, validate

app = typer.Typer(
    name="lesionforge",
    help="Synthetic labelled training data (image + mask) with diffusion models for medical segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data", help="Read, check, fingerprint and split a dataset.")
app.add_typer(
    conditioning.app, name="conditioning", help="Preview prompts, draw new lesion masks, write edge maps."
)
app.add_typer(segment.app, name="segment", help="Train and evaluate segmentation models.")
app.add_typer(experiment.app, name="experiment", help="Run benchmark sweeps (the protocol as code).")
generate.register(app)  # train-generator, synthesize
validate.register(app)  # train-autoencoder, train-validator, filter
quality.register(app)  # quality, memorization, train-extractor
review.register(app)  # review, export
demo.register(app)


def main() -> None:
    from lesionforge.errors import LesionforgeError

    try:
        app()
    except LesionforgeError as e:  # a user-facing problem: one clear line, no traceback
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise SystemExit(2) from None
