"""Memorization audit: is any synthetic image a near copy of a training image?

For each synthetic image we find the nearest training image in pixel space (RMS difference of [0, 1]
intensities at the working resolution) and in feature space (Euclidean distance between extractor
features). A sample is flagged in a space when its distance is at most that space's threshold: the 1st
percentile of the real-to-real nearest-neighbour distances, computed leave-one-out among the training images
(how close two *different* real images usually get). How to read the result: ``docs/quality.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, computed_field

from lesionforge.data.arrays import PairArrays
from lesionforge.quality.features import FeatureExtractor
from lesionforge.utils import code_version, save_figure_atomic, write_json_atomic


class NearestMatch(BaseModel):
    """One synthetic sample's nearest training images and whether it is flagged (in either space)."""

    id: str
    pixel_nearest_id: str
    pixel_distance: float
    feature_nearest_id: str
    feature_distance: float
    flagged_pixel: bool
    flagged_feature: bool


class SpaceSummary(BaseModel):
    """Threshold and flagged share in one space (pixel or feature)."""

    threshold: float
    real_nn_median: float
    flagged_share: float
    n_flagged: int


class MemorizationReport(BaseModel):
    """JSON-serialisable audit result (``model_dump(mode="json")``)."""

    extractor: dict
    percentile: float
    n_train: int
    n_synthetic: int
    pixel: SpaceSummary
    feature: SpaceSummary
    flagged_share: float  # flagged in pixel or feature space
    matches: list[NearestMatch]
    code_version: str

    @computed_field  # listed in the JSON too
    @property
    def flagged(self) -> list[NearestMatch]:
        """Samples flagged in either space, closest (by pixel distance) first."""
        hits = [m for m in self.matches if m.flagged_pixel or m.flagged_feature]
        return sorted(hits, key=lambda m: m.pixel_distance)


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
                       chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``query`` (N, D), the index and Euclidean distance of its nearest row of ``reference``
    (M, D). ``exclude_self`` (query is reference) skips the diagonal: leave-one-out distances."""
    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float64))
    idx, dist = [], []
    for start in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[start : start + chunk], np.float64))
        d = torch.cdist(q, ref, compute_mode="donot_use_mm_for_euclid_dist")  # exact: copies must give 0
        if exclude_self:
            rows = torch.arange(len(q))
            d[rows, rows + start] = torch.inf
        best = d.min(1)
        idx.append(best.indices.numpy())
        dist.append(best.values.numpy())
    return np.concatenate(idx), np.concatenate(dist)


def _pixels(images: np.ndarray) -> np.ndarray:
    # divided by sqrt(D) so the distance is the RMS intensity difference in [0, 1], whatever the resolution
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return flat / np.sqrt(flat.shape[1])


def _space(train_feats: np.ndarray, syn_feats: np.ndarray, percentile: float):
    _, real_nn = nearest_neighbours(train_feats, train_feats, exclude_self=True)
    threshold = float(np.percentile(real_nn, percentile))
    idx, dist = nearest_neighbours(syn_feats, train_feats)
    flagged = dist <= threshold
    summary = SpaceSummary(threshold=threshold, real_nn_median=float(np.median(real_nn)),
                           flagged_share=float(flagged.mean()), n_flagged=int(flagged.sum()))
    return summary, idx, dist, flagged


def memorization_audit(train: PairArrays, synthetic: PairArrays, extractor: FeatureExtractor,
                       percentile: float = 1.0) -> MemorizationReport:
    """Audit ``synthetic`` images against the ``train`` images they may have memorised.

    Both uint8 (N, H, W, C) at the same resolution; ``train`` needs at least 2 images. ``percentile`` (0-100)
    of the leave-one-out real nearest-neighbour distances sets each space's threshold.
    """
    if train.images.shape[1:] != synthetic.images.shape[1:]:
        raise ValueError(f"train {train.images.shape[1:]} and synthetic {synthetic.images.shape[1:]} images differ")
    if len(train) < 2 or len(synthetic) < 1:
        raise ValueError(f"need >= 2 training and >= 1 synthetic images, got {len(train)} and {len(synthetic)}")
    pix, p_idx, p_dist, p_flag = _space(_pixels(train.images), _pixels(synthetic.images), percentile)
    feat, f_idx, f_dist, f_flag = _space(extractor.features(train.images), extractor.features(synthetic.images),
                                         percentile)
    matches = [
        NearestMatch(id=sid, pixel_nearest_id=train.ids[p_idx[i]], pixel_distance=float(p_dist[i]),
                     feature_nearest_id=train.ids[f_idx[i]], feature_distance=float(f_dist[i]),
                     flagged_pixel=bool(p_flag[i]), flagged_feature=bool(f_flag[i]))
        for i, sid in enumerate(synthetic.ids)
    ]
    return MemorizationReport(
        extractor=extractor.describe(), percentile=percentile, n_train=len(train), n_synthetic=len(synthetic),
        pixel=pix, feature=feat, flagged_share=float((p_flag | f_flag).mean()), matches=matches,
        code_version=code_version(),
    )


def plot_flagged_pairs(report: MemorizationReport, train: PairArrays, synthetic: PairArrays, path: str | Path,
                       max_pairs: int = 12) -> Path | None:
    """Save a PNG with one row per flagged sample: synthetic image | nearest training image (pixel space).

    Returns the path, or ``None`` (no file written) when nothing is flagged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flagged = report.flagged[:max_pairs]
    if not flagged:
        return None
    syn_pos = {s: i for i, s in enumerate(synthetic.ids)}
    train_pos = {s: i for i, s in enumerate(train.ids)}
    fig, axes = plt.subplots(len(flagged), 2, figsize=(4, 2 * len(flagged)), squeeze=False)
    for row, m in zip(axes, flagged, strict=True):
        near = f"train {m.pixel_nearest_id}\nd={m.pixel_distance:.4f}"
        for ax, img, title in (
            (row[0], synthetic.images[syn_pos[m.id]], f"synthetic {m.id}"),
            (row[1], train.images[train_pos[m.pixel_nearest_id]], near),
        ):
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    return save_figure_atomic(fig, path, dpi=100, bbox_inches=None)


def write_memorization_report(report: MemorizationReport, train: PairArrays, synthetic: PairArrays,
                              out_dir: str | Path) -> Path:
    """Write ``memorization.json`` and, if anything is flagged, ``memorization_flagged.png``; returns the JSON."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "memorization.json", report.model_dump(mode="json"))
    plot_flagged_pairs(report, train, synthetic, out_dir / "memorization_flagged.png")
    return out_dir / "memorization.json"
