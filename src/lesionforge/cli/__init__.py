"""The ``lesionforge`` command: one Typer app; each stage adds its sub-commands from its own module.

The command modules hold no logic: they parse options and call the stage's Python API.
"""

from __future__ import annotations

import typer

from lesionforge.cli import conditioning, data, demo, experiment, generate, loop, quality, review, segment, validate

app = typer.Typer(
    name="lesionforge",
    help="Synthetic labelled training data (image + mask) with diffusion models for medical segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
train_app = typer.Typer(no_args_is_help=True)
app.add_typer(data.app, name="data", help="Read, check, fingerprint and split a dataset.")
app.add_typer(
    conditioning.app, name="conditioning", help="Preview prompts, draw new lesion masks, write edge maps."
)
app.add_typer(train_app, name="train", help="Train a generator, autoencoder, validator or feature extractor.")
app.add_typer(segment.app, name="segment", help="Train and evaluate segmentation models.")
app.add_typer(experiment.app, name="experiment", help="Run benchmark sweeps (the protocol as code).")
generate.register(app, train_app)  # train generator, synthesize
validate.register(app, train_app)  # train autoencoder, train validator, filter
quality.register(app, train_app)  # quality, memorization, train extractor
review.register(app)  # review, export
demo.register(app)
loop.register(app)  # closed-loop synthesis


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from lesionforge import __version__

        try:
            typer.echo(f"lesionforge {version('lesionforge')}")
        except PackageNotFoundError:  # run from a source tree without an install
            typer.echo(f"lesionforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Read manifests whose rows name files outside the manifest's folder."
    ),
) -> None:
    """Synthetic labelled training data (image + mask) with diffusion models for medical segmentation."""
    from lesionforge.data.manifest import allow_outside_paths as allow

    allow(allow_outside_paths)


def error_line(e: BaseException) -> str:
    """The one line the CLI prints for an expected failure: our own errors as they are, an ``OSError``
    (read-only folder, disk full, missing permission) as ``PATH: what went wrong``."""
    if isinstance(e, OSError) and e.filename is not None:
        paths = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        text = f"{paths}: {e.strerror or e}"
    elif isinstance(e, OSError):  # e.g. ENOSPC raised by write() carries no file name
        text = f"{e.strerror or e}"
    else:
        text = str(e)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main() -> None:
    from lesionforge.errors import LesionforgeError

    try:
        app()
    except (LesionforgeError, OSError) as e:  # a user-facing problem: one clear line, no traceback
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(error_line(e))}")
        raise SystemExit(2 if isinstance(e, LesionforgeError) else 1) from None
