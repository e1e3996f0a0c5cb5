"""`lesionforge conditioning ...` commands: preview prompts, draw new lesion masks, write edge maps."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def prompts(
    domain: str = typer.Option(None, help="Built-in library: colon-polyp, breast-ultrasound, generic."),
    dataset: str = typer.Option(None, help="Pick the library from a dataset name (kvasir-seg, busi ...)."),
    file: Path = typer.Option(None, help="User prompt file (YAML or CSV keyed by id or class)."),
    label_class: str = typer.Option(None, "--class", help="Lesion class of the sample (e.g. benign)."),
    area: float = typer.Option(None, help="Lesion area share of the image in (0, 1); picks the size band."),
    sample_id: str = typer.Option(None, "--id", help="Sample id (for prompt files keyed by id)."),
    n: int = typer.Option(5, help="How many prompts to draw."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Print prompts drawn for a sample description."""
    import numpy as np

    from lesionforge.conditioning.prompts import load_prompt_library

    library = load_prompt_library(domain, dataset, file)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        typer.echo(library.prompt_for(sample_id, label_class, area, rng))


@app.command()
def masks(
    manifest: Path = typer.Option(..., help="JSONL manifest of the real training data."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (masks/*.png + masks.jsonl)."),
    source: str = typer.Option("jitter", help="jitter: deformed real masks; size: size-controlled lesions."),
    n: int = typer.Option(16, help="How many masks."),
    small_boost: float = typer.Option(2.0, help="Over-sampling factor of lesions < 5 % of the image (size)."),
    resolution: int = typer.Option(64, help="Mask size in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Draw new lesion masks from the real masks of a dataset."""
    from lesionforge.conditioning.masks import build_mask_source
    from lesionforge.conditioning.run import write_masks
    from lesionforge.data.arrays import manifest_arrays

    arrays = manifest_arrays(manifest, resolution, labelled_only=True, progress=True)
    mask_source = build_mask_source(source, arrays.masks, arrays.ids, small_boost=small_boost)
    record = write_masks(mask_source, n, out, seed=seed, overwrite=overwrite, progress=True)
    typer.echo(f"wrote {n} masks, record {record}")


@app.command()
def edges(
    manifest: Path = typer.Option(..., help="JSONL manifest of the data."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (edges/<id>.png + edges.jsonl)."),
    resolution: int = typer.Option(64, help="Edge map size in pixels."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Write EMIT-Diff edge maps (image edges + mask boundary) of every sample."""
    from lesionforge.conditioning.run import write_edge_maps
    from lesionforge.data.arrays import manifest_arrays

    arrays = manifest_arrays(manifest, resolution, progress=True)
    record = write_edge_maps(arrays, out, overwrite=overwrite, progress=True)
    typer.echo(f"wrote edge maps, record {record}")
