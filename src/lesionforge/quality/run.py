"""File-level entry points of the quality stage (what the CLI calls): manifests and extractor specs in,
report files out."""

from __future__ import annotations

from pathlib import Path

from lesionforge.data.arrays import manifest_arrays
from lesionforge.data.manifest import read_set
from lesionforge.outputs import claim_output
from lesionforge.quality.features import load_extractor, train_segmentation_encoder
from lesionforge.quality.memorization import memorization_audit, write_memorization_report
from lesionforge.quality.metrics import quality_report, write_quality_report


def run_quality(real_manifest: str | Path, synthetic_manifest: str | Path, extractor: str | Path, out_dir: str | Path,
                resolution: int, real_split: str | None = "test", kept_only: bool = True, device: str = "cpu",
                overwrite: bool = False, progress: bool = False, **options) -> Path:
    """Load both manifests at ``resolution``, run :func:`quality_report` with the extractor named by ``extractor``
    (see :func:`load_extractor`) and write ``quality.json``/``quality.md`` into ``out_dir``.

    Synthetic images are the ``origin: synthetic`` rows, only those the filter kept when ``kept_only`` (the
    set that would be used for training); mask fidelity covers every synthetic row. ``options`` go to
    :func:`quality_report` (``kid_subsets``, ``kid_subset_size``, ``msssim_pairs``, ``seed``).
    """
    out_dir = claim_output(out_dir, "quality report", overwrite=overwrite)
    real = manifest_arrays(real_manifest, resolution, split=real_split, progress=progress)
    synthetic = manifest_arrays(synthetic_manifest, resolution, origin="synthetic", kept_only=kept_only,
                                progress=progress)
    rows = read_set(synthetic_manifest, origin="synthetic")
    report = quality_report(real, synthetic, load_extractor(extractor).to(device), samples=rows, **options)
    report["inputs"] = {"real_manifest": str(real_manifest), "real_split": real_split,
                        "synthetic_manifest": str(synthetic_manifest), "synthetic_kept_only": kept_only}
    return write_quality_report(report, out_dir)


def run_memorization_audit(train_manifest: str | Path, synthetic_manifest: str | Path, extractor: str | Path,
                           out_dir: str | Path, resolution: int, train_split: str | None = "train",
                           percentile: float = 1.0, device: str = "cpu", overwrite: bool = False,
                           progress: bool = False) -> Path:
    """Audit every ``origin: synthetic`` row (kept or rejected) of ``synthetic_manifest`` against the real
    rows of ``train_split`` in ``train_manifest`` at ``resolution``; writes the JSON (and figure) into ``out_dir``."""
    out_dir = claim_output(out_dir, "memorization audit", overwrite=overwrite)
    train = manifest_arrays(train_manifest, resolution, split=train_split, origin="real", progress=progress)
    synthetic = manifest_arrays(synthetic_manifest, resolution, origin="synthetic", progress=progress)
    report = memorization_audit(train, synthetic, load_extractor(extractor).to(device), percentile)
    return write_memorization_report(report, train, synthetic, out_dir)


def train_extractor_from_files(train_manifest: str | Path, out_dir: str | Path, resolution: int,
                               split: str | None = "train", steps: int = 300, seed: int = 0,
                               overwrite: bool = False, resume: bool = False, progress: bool = False) -> Path:
    """Train the seg-encoder feature extractor on the real rows of ``split`` in ``train_manifest``."""
    arrays = manifest_arrays(train_manifest, resolution, split=split, origin="real", progress=progress)
    return train_segmentation_encoder(arrays, out_dir, steps=steps, seed=seed, overwrite=overwrite, resume=resume)
