"""`lesionforge data ...` commands: manifest, check, fingerprint, split (options in, API call, print out)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lesionforge.progress import StageProgress

app = typer.Typer(no_args_is_help=True)
console = Console()

LAYOUT = typer.Option("auto", help="auto, pairs, mixed, images or volumes.")
MULTICLASS = typer.Option(False, help="Masks are label maps 0..K, not binary.")
AXIS = typer.Option(2, help="Volumes: slicing axis (0, 1 or 2).")
MIN_AREA = typer.Option(1, help="Volumes: keep slices whose structure has at least this many pixels.")
WINDOW = typer.Option(None, help="Volumes: intensity window 'low,high' (default: 0.5-99.5 percentiles).")


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as e:
        raise typer.BadParameter(f"window must be 'low,high', got {text!r}") from e
    return lo, hi


def _warn(kind: str, message: str) -> None:
    """A named warning on stderr, one line: the command goes on."""
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[yellow]warning ({kind}):[/] {escape(message)}")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with StageProgress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command()
def manifest(
    path: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(..., "-o", "--out", "--output", help="Manifest to write (JSONL)."),
    layout: str = LAYOUT,
    multiclass: bool = MULTICLASS,
    allow_missing_masks: bool = typer.Option(False, help="Keep images without masks as image-only samples."),
    axis: int = AXIS,
    min_area: int = MIN_AREA,
    window: str | None = WINDOW,
    overwrite: bool = typer.Option(False, help="Replace an existing manifest."),
) -> None:
    """Read a dataset folder and write its manifest of samples."""
    from lesionforge.data.manifest import write_manifest
    from lesionforge.data.readers import read_dataset
    from lesionforge.errors import OverwriteError

    if out.exists() and not overwrite:
        raise OverwriteError(f"{out} exists; pass --overwrite")
    samples = read_dataset(path, layout, multiclass=multiclass, allow_missing_masks=allow_missing_masks,
                           axis=axis, min_area=min_area, window=_window(window))
    write_manifest(out, samples)
    console.print(f"{len(samples)} samples ({sum(s.has_mask for s in samples)} with masks) -> {out}")


@app.command()
def check(
    path: Path = typer.Argument(..., help="Dataset folder."),
    splits: str | None = typer.Option(None, help="Split file or benchmark name: report near-duplicate leakage."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    layout: str = LAYOUT,
    multiclass: bool = MULTICLASS,
    workers: int = typer.Option(2, help="Decoding threads."),
    axis: int = AXIS,
    min_area: int = MIN_AREA,
    window: str | None = WINDOW,
) -> None:
    """Report every problem of a dataset at once; exit code 1 when there are errors or split leakage."""
    from lesionforge.data.checks import check_dataset

    with _progress("Checking") as update:
        report = check_dataset(path, splits=splits, layout=layout, multiclass=multiclass, workers=workers,
                               progress=update, axis=axis, min_area=min_area, window=_window(window))
    if as_json:
        print(json.dumps({"counts": report.counts(), "ok": report.ok, **report.model_dump(mode="json")}))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report) -> None:
    table = Table(title=f"{report.root} ({report.layout}, {report.seconds:.1f} s)")
    table.add_column("category")
    table.add_column("count", justify="right")
    table.add_column("examples")
    groups = {"exact_duplicate_groups": report.exact_duplicates, "near_duplicate_groups": report.near_duplicates,
              "split_leakage_groups": report.split_leakage, "merged_multi_mask": report.merged_multi_mask,
              "lesion_free": report.lesion_free}
    issues = {**report.errors, **report.notices}
    for name, count in report.counts().items():
        if name in issues:
            examples = "; ".join(f"{i.file}: {i.message}" for i in issues[name][:3])
        else:
            examples = ", ".join(str(g) for g in groups.get(name, [])[:3])
        style = "red" if count and (name in report.errors or name == "split_leakage_groups") else ""
        style = "yellow" if count and name in report.notices else style
        table.add_row(name, f"[{style}]{count}[/]" if style else str(count), examples)
    console.print(table)


@app.command()
def fingerprint(
    path: Path = typer.Argument(..., help="Dataset folder or manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    layout: str = LAYOUT,
    multiclass: bool = MULTICLASS,
    workers: int = typer.Option(2, help="Decoding threads."),
    allow_missing_masks: bool = typer.Option(False, help="Keep images without masks as image-only samples."),
    axis: int = AXIS,
    min_area: int = MIN_AREA,
    window: str | None = WINDOW,
) -> None:
    """Measure sizes, channels, intensities and lesion statistics; recommend a profile and channel count."""
    from lesionforge.data.fingerprint import fingerprint as measure
    from lesionforge.data.readers import read_dataset
    from lesionforge.errors import DataError

    samples = read_dataset(path, layout, multiclass=multiclass, allow_missing_masks=allow_missing_masks,
                           axis=axis, min_area=min_area, window=_window(window))
    if not samples:
        raise DataError(path, "no images to fingerprint")
    with _progress("Fingerprinting") as update:
        fp = measure(samples, multiclass=multiclass, workers=workers, progress=update)
    if as_json:
        print(fp.model_dump_json())
        return
    table = Table(title=str(path))
    table.add_column("field")
    table.add_column("value")
    for key, value in fp.model_dump(mode="json").items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def split(
    path: Path = typer.Argument(..., help="Dataset folder or manifest."),
    out: Path = typer.Option(..., "-o", "--out", "--output", help="Split file to write (JSON)."),
    fractions: str = typer.Option("0.7,0.1,0.2", help="train,val,test fractions."),
    seed: int = typer.Option(0, help="Random seed."),
    layout: str = LAYOUT,
    allow_missing_masks: bool = typer.Option(True, help="Images without masks become normal_backgrounds."),
    overwrite: bool = typer.Option(False, help="Replace an existing split file."),
) -> None:
    """Split a dataset into train/val/test keeping near-duplicate groups together; write nested low-data
    subsets."""
    from lesionforge.data.splits import make_user_splits, save_split
    from lesionforge.errors import OverwriteError

    if out.exists() and not overwrite:
        raise OverwriteError(f"{out} exists; pass --overwrite")
    try:
        fr = tuple(float(v) for v in fractions.split(","))
    except ValueError:
        fr = ()
    if len(fr) != 3:
        raise typer.BadParameter(f"fractions must be 'train,val,test', got {fractions!r}", param_hint="--fractions")
    with _progress("Hashing") as update:
        result = make_user_splits(path, fr, seed, layout=layout, allow_missing_masks=allow_missing_masks,
                                  progress=update)
    save_split(result, out)
    console.print(f"train {len(result.train)} / val {len(result.val)} / test {len(result.test)}, "
                  f"{len(result.near_duplicate_groups)} near-duplicate groups kept together -> {out}")
    for name in ("val", "test"):
        if not getattr(result, name):
            _warn("empty_split", f"the {name} split is empty ({len(result.train)} train images, fractions "
                                 f"{fractions}): segment train needs a validation set, evaluation a test set")
