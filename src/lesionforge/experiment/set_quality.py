"""Quality and memorization of each synthetic set a benchmark arm trains on, for the result file.

Computed once per (set, kept-or-all) after the set is made and cached as JSON in the set's work folder, so a
resumed sweep reads it back instead of recomputing. The numbers come from the existing validate modules
(FID/KID/MS-SSIM from :mod:`~lesionforge.quality.metrics`, the nearest-neighbour audit from
:mod:`~lesionforge.quality.memorization`); how to read them: ``docs/quality.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionforge.data.arrays import PairArrays, manifest_arrays
from lesionforge.errors import DataError
from lesionforge.experiment.stages import ExperimentData, SyntheticSet
from lesionforge.quality.features import pixel_extractor
from lesionforge.quality.memorization import memorization_audit
from lesionforge.quality.metrics import fid, kid, mask_stats, ms_ssim_diversity
from lesionforge.utils import write_json_atomic

#: Bump when the numbers below change meaning, so caches made by older code are recomputed.
QUALITY_VERSION = 2  # 2: mask_stats' components_mean over non-empty masks (1: over all, negatives counted as 0)
#: Cheapest honest in-domain extractor: area-downscaled pixels need no network trained on other data (the
#: Inception FID network is out-of-domain, and a seg-encoder would have to be trained per set).
EXTRACTOR_SIZE = 8
MSSSIM_PAIRS = 100
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000
PERCENTILE = 1.0


def cache_path(work_dir: Path, s: SyntheticSet, kept_only: bool) -> Path:
    """``quality-kept-<filter key>.json`` (a re-filtered set keeps its folder, so the key names the file) or
    ``quality-all.json``."""
    if kept_only:
        return work_dir / f"quality-kept-{s.info.get('filter_key') or 'none'}.json"
    return work_dir / "quality-all.json"


def set_quality(s: SyntheticSet, work_dir: Path, data: ExperimentData, train: PairArrays, resolution: int,
                kept_only: bool, seed: int = 0) -> dict[str, Any]:
    """The cached quality dict of ``s`` (its kept samples when ``kept_only``), computing it the first time.

    ``train`` are the real images the generator saw (memorization reference); ``data.test`` the FID reference.
    """
    path = cache_path(work_dir, s, kept_only)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("version") == QUALITY_VERSION:
            return cached
    manifest = s.filtered_manifest if kept_only and s.filtered_manifest is not None else s.manifest
    try:
        # read with the real images' channels (a grey data set's synthetic PNGs are grey too)
        syn = manifest_arrays(manifest, resolution, train.images.shape[-1], origin="synthetic", kept_only=kept_only)
    except DataError:  # the filter kept nothing: nothing to measure, said so in the result
        syn = None
    if syn is None or len(syn) < 2 or len(data.test) < 2 or len(train) < 2:
        out = {"n_synthetic": 0 if syn is None else len(syn), "skipped": "fewer than 2 images in a set compared"}
    else:
        out = quality_of(syn, data.test, train, seed)
    out.update(version=QUALITY_VERSION, kept_only=kept_only, manifest=Path(manifest).name)
    write_json_atomic(path, out)
    return out


def quality_of(syn: PairArrays, test: PairArrays, train: PairArrays, seed: int = 0) -> dict[str, Any]:
    """FID/KID against ``test``, MS-SSIM diversity (synthetic and real ``test``), mask statistics and the
    memorization flagged share against ``train``; needs >= 2 synthetic, test and train images."""
    extractor = pixel_extractor(EXTRACTOR_SIZE)
    f_syn, f_test = extractor.features(syn.images), extractor.features(test.images)
    k = kid(f_syn, f_test, KID_SUBSETS, KID_SUBSET_SIZE, seed=seed)
    audit = memorization_audit(train, syn, extractor, PERCENTILE)
    return {
        "extractor": extractor.describe()["name"], "n_synthetic": len(syn), "n_real_test": len(test),
        "fid": fid(f_syn, f_test), "kid": k["mean"], "kid_std": k["std"],
        "ms_ssim": ms_ssim_diversity(syn.images, MSSSIM_PAIRS, seed)["mean"],
        "ms_ssim_real": ms_ssim_diversity(test.images, MSSSIM_PAIRS, seed)["mean"],
        "mask_stats": {"real": mask_stats(test.masks[test.has_mask]), "synthetic": mask_stats(syn.masks)},
        "memorization": {"flagged_share": audit.flagged_share, "n": len(syn), "n_train": len(train),
                         "percentile": PERCENTILE, "extractor": extractor.describe()["name"],
                         "space": "pixel or feature"},
    }
