"""The demo pipeline: demo data -> checks -> fingerprint -> (generators, filter, segmentation as they land)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from lesionforge.utils import ensure_new_dir, write_json_atomic

console = Console()


def run_demo(out: str | Path, overwrite: bool = False, seed: int = 0) -> dict:
    """Run the demo into ``out``; returns the summary written to ``out/summary.json``."""
    from lesionforge.data.demo import write_demo_dataset

    out = ensure_new_dir(out, overwrite=overwrite)
    data_root = write_demo_dataset(out / "data", n=48, size=64, seed=seed)
    summary: dict = {"data": str(data_root)}
    console.print(f"[green]demo data[/] written to {data_root}")
    write_json_atomic(out / "summary.json", summary)
    console.print_json(json.dumps(summary))
    return summary
