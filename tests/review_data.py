"""A tiny reviewed-set fixture for the review tests: a real demo dataset, a synthetic set beside it (its
filtered manifest with validator scores) and its memorization audit, all made with the project's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionforge.data.arrays import PairArrays
from lesionforge.data.demo import make_demo_arrays, write_demo_dataset
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, read_manifest, write_manifest
from lesionforge.quality.features import pixel_extractor
from lesionforge.quality.memorization import memorization_audit, write_memorization_report

N_SYN = 6
COPY_ID = "syn5"  # an exact copy of a real image: the audit flags it
FILTER_REJECTED_ID = "syn4"


def make_review_set(root: Path) -> tuple[Path, Path]:
    """Write ``root/real`` (12 demo pairs, 32 px) and ``root/set`` (6 synthetic pairs with a filtered manifest
    and ``memorization/memorization.json``). Returns (set folder, real manifest)."""
    real_dir = write_demo_dataset(root / "real", n=12, size=32, normal_fraction=0.0, seed=0)
    real_rows = read_manifest(real_dir / "manifest.jsonl")
    real = make_demo_arrays(n=12, size=32, normal_fraction=0.0, seed=0)
    syn = make_demo_arrays(n=N_SYN, size=32, normal_fraction=0.0, seed=11)  # a seed whose fresh samples are not flagged
    images, masks = syn.images.copy(), syn.masks.copy()
    images[5], masks[5] = real.images[3], real.masks[3]  # syn5 copies real sample 3
    set_dir = root / "set"
    rows = []
    for i in range(N_SYN):
        sid = f"syn{i}"
        write_image(set_dir / "images" / f"{sid}.png", images[i])
        write_mask(set_dir / "masks" / f"{sid}.png", masks[i])
        validation = {"dice": round(0.9 - 0.1 * i, 2), "confidence": 0.8, "kept": sid != FILTER_REJECTED_ID,
                      "threshold": 0.5}
        rows.append(Sample(id=sid, image=f"images/{sid}.png", masks=[f"masks/{sid}.png"], origin="synthetic",
                           provenance=Provenance(generator="mask2image", checkpoint_hash="abc123", seed=i,
                                                 validation=validation)))
    write_manifest(set_dir / "manifest.filtered.jsonl", rows)
    train = PairArrays(real.images, real.masks, np.ones(12, bool), [s.id for s in real_rows], [None] * 12)
    synthetic = PairArrays(images, masks, np.ones(N_SYN, bool), [r.id for r in rows], [None] * N_SYN)
    report = memorization_audit(train, synthetic, pixel_extractor(8))
    write_memorization_report(report, train, synthetic, set_dir / "memorization")
    return set_dir, real_dir / "manifest.jsonl"
