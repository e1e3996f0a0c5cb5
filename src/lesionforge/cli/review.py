"""Commands ``review`` (the local review web page and blinded test) and ``export`` (the curated set)."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("review")(review_cmd)
    app.command("export")(export_cmd)


def review_cmd(
    set_dir: Path = typer.Argument(..., help="Synthetic set folder (images/, masks/, manifest)."),
    manifest: Path | None = typer.Option(None, help="Manifest inside the set (default: manifest.filtered.jsonl, "
                                                    "else manifest.jsonl)."),
    real: Path | None = typer.Option(None, help="Real manifest: nearest-image previews and the blinded test."),
    real_split: str = typer.Option("", help="Use only real rows of this split ('' for all)."),
    audit: Path | None = typer.Option(None, help="memorization.json (default: found in the set folder)."),
    reviewer: str = typer.Option("", help="Default reviewer name (default: your user name)."),
    blind_n: int = typer.Option(20, help="Blinded test: images per origin (real, synthetic)."),
    seed: int = typer.Option(0, help="Blinded test: seed of the choice and order of images."),
    blind_size: int = typer.Option(256, help="Blinded test: every image is shown at this size (hides size cues)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Keep the default unless you know why."),
    port: int = typer.Option(8765, help="Port."),
) -> None:
    """Review a synthetic set in the browser (accept / reject, blinded real-or-synthetic test)."""
    from rich.console import Console

    from lesionforge.review.app import create_app
    from lesionforge.review.blinded import BlindedSession
    from lesionforge.review.server import serve
    from lesionforge.review.store import ReviewSet

    console = Console(stderr=True)
    rs = ReviewSet.open(set_dir, manifest, audit, real, real_split or None)
    blinded = BlindedSession.create(rs, blind_n, seed) if rs.real else None
    name = reviewer or getpass.getuser()
    if host not in LOOPBACK:
        console.print(f"[bold yellow]warning:[/] binding {host}: the page is reachable from other machines")
    app = create_app(rs, blinded, host=host, default_reviewer=name, blind_size=blind_size)
    console.print(f"reviewing {len(rs.synthetic)} synthetic samples of {rs.manifest}; decisions are written into it")
    console.print(f"open http://{host}:{port}/ (review grid)" + (f" and http://{host}:{port}/blinded" if blinded
                                                                    else " (no --real: no blinded test)"))
    serve(app, host, port)


def export_cmd(
    set_dir: Path = typer.Argument(..., help="Reviewed synthetic set folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (plain/, nnunet/, datasheet.md, export.json)."),
    real: Path | None = typer.Option(None, help="Real manifest whose pairs are exported beside the synthetic ones."),
    real_split: str = typer.Option("train", help="Use only real rows of this split ('' for all)."),
    manifest: Path | None = typer.Option(None, help="Manifest inside the set (default as for review)."),
    audit: Path | None = typer.Option(None, help="memorization.json (default: found in the set folder)."),
    reviewer: str | None = typer.Option(None, help="Use only this reviewer's decisions."),
    include_flagged: bool = typer.Option(False, help="Also export accepted samples flagged as near copies."),
    dataset_id: int = typer.Option(501, help="nnU-Net dataset id (1-999)."),
    name: str = typer.Option("Lesionforge", help="nnU-Net dataset name."),
    overwrite: bool = typer.Option(False, help="Write into a non-empty output folder."),
) -> None:
    """Export accepted, non-flagged synthetic pairs with the real ones (plain folder + nnU-Net v2 raw layout)."""
    from lesionforge.review.export import export_set
    from lesionforge.review.store import ReviewSet

    rs = ReviewSet.open(set_dir, manifest, audit, real, real_split or None)
    summary = export_set(rs, out, dataset_id, name, include_flagged, reviewer, overwrite, progress=True)
    n = summary["counts"]
    typer.echo(f"exported {n['exported_synthetic']} synthetic + {n['exported_real']} real pairs to {out} "
               f"({n.get('accepted_flagged_left_out', 0)} flagged near copies left out); see {out / 'datasheet.md'}")
