"""Write conditions to plain files a user can open: new lesion masks and edge maps (PNG + JSONL record)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lesionforge.conditioning.edges import edge_map
from lesionforge.conditioning.masks import MaskSource
from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.outputs import claim_output
from lesionforge.utils import code_version, write_text_atomic


def _steps(items: range | list, description: str, progress: bool):
    if not progress:
        return items
    from lesionforge.progress import track

    return track(items, description=description)


def write_masks(
    source: MaskSource, n: int, out_dir: str | Path, seed: int = 0, overwrite: bool = False, progress: bool = False
) -> Path:
    """Draw ``n`` masks from ``source`` and write ``out_dir/masks/mask_<k>.png`` (0/255) and
    ``out_dir/masks.jsonl`` (one row per mask: file, seed, code version and the source's info).

    Mask ``k`` is drawn with ``numpy.random.default_rng([seed, k])``, so any one mask can be remade alone.
    Refuses a non-empty ``out_dir`` unless ``overwrite``. Returns the JSONL path.
    """
    out = claim_output(out_dir, "mask export", overwrite=overwrite)
    version = code_version()
    rows = []
    for k in _steps(range(n), "Drawing masks", progress):
        ((mask, info),) = source(np.random.default_rng([seed, k]), 1)
        name = f"masks/mask_{k:05d}.png"
        write_mask(out / name, mask)
        rows.append({"file": name, "seed": [seed, k], "code_version": version, **info})
    record = out / "masks.jsonl"
    write_text_atomic(record, "".join(json.dumps(r) + "\n" for r in rows))
    return record


def write_edge_maps(
    arrays: PairArrays, out_dir: str | Path, overwrite: bool = False, progress: bool = False
) -> Path:
    """Write the edge map (:func:`edge_map`, image edges + mask boundary) of every sample as
    ``out_dir/edges/<id>.png`` (0/255) and ``out_dir/edges.jsonl`` (id, file, edge pixel share).
    Returns the JSONL path."""
    out = claim_output(out_dir, "edge-map export", overwrite=overwrite)
    rows = []
    for i in _steps(list(range(len(arrays))), "Edge maps", progress):
        mask = arrays.masks[i] if arrays.has_mask[i] else None
        edges = edge_map(arrays.images[i], mask)
        name = f"edges/{arrays.ids[i]}.png"
        write_image(out / name, (edges * 255).astype(np.uint8))
        rows.append({"id": arrays.ids[i], "file": name, "edge_frac": float(edges.mean())})
    record = out / "edges.jsonl"
    write_text_atomic(record, "".join(json.dumps(r) + "\n" for r in rows))
    return record
