"""Protocol metrics (PROTOCOL.md): per-image foreground Dice/IoU, precision, recall, HD95, lesion miss rate.

Definitions, exactly as computed here (binary masks, prediction = probability >= 0.5):

- Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN), foreground only. An image with empty ground truth
  *and* empty prediction scores Dice = IoU = 1 (nothing to find, nothing claimed); empty ground truth with any
  predicted pixel scores 0.
- precision = TP / (TP + FP), NaN when the prediction is empty; recall = TP / (TP + FN), NaN when the ground
  truth is empty. NaN values are left out of means.
- HD95: MONAI ``compute_hausdorff_distance(percentile=95)`` in pixels; NaN (left out) when the ground truth or the
  prediction is empty.
- Lesions: 8-connected components of the ground truth. A lesion is missed when the prediction covers less than
  ``miss_fraction`` of its pixels. Band by lesion area as a fraction of the image (:mod:`lesionforge.data.bands`):
  small < 1 %, medium 1-5 % (both ends included), large > 5 %. Miss rate = missed lesions / lesions, pooled over images.
- Volumes (every id a slice id ``<case>/<axis>_<index>``, :func:`lesionforge.data.volumes.case_of`): ``dice3d``
  per case = Dice of the case's slices stacked in slice order (voxel counts pooled over its slices, at the
  resolution the slices were scored at; 1 when the case has no foreground and none is predicted). It counts every
  slice given, so pass whole volumes (read with ``negatives=True``). The per-slice metrics above are then over the
  slices with foreground only, as for 2D sets where every image shows the structure.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage
from torch import nn

from lesionforge.data.arrays import PairArrays
from lesionforge.data.bands import BAND_EDGES, BANDS, band_of

_EIGHT = np.ones((3, 3), dtype=bool)


def _as_bool(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim == 4:  # (N, 1, H, W)
        m = m[:, 0]
    return m.astype(bool)


def overlap_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``dice``, ``iou``, ``precision``, ``recall`` (float64 (N,)) of binary masks (N, H, W)."""
    p, g = _as_bool(pred), _as_bool(gt)
    tp = (p & g).sum(axis=(1, 2)).astype(np.float64)
    fp = (p & ~g).sum(axis=(1, 2)).astype(np.float64)
    fn = (~p & g).sum(axis=(1, 2)).astype(np.float64)
    both_empty = (tp + fp + fn) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both_empty, 1.0, 2 * tp / (2 * tp + fp + fn))
        iou = np.where(both_empty, 1.0, tp / (tp + fp + fn))
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall}


def hd95(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image 95th-percentile Hausdorff distance in pixels, float64 (N,); NaN where either mask is empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    out = np.full(len(p), np.nan)
    ok = p.any(axis=(1, 2)) & g.any(axis=(1, 2))
    if ok.any():
        yp = torch.from_numpy(p[ok][:, None].astype(np.float32))
        yg = torch.from_numpy(g[ok][:, None].astype(np.float32))
        with warnings.catch_warnings():  # MONAI's own internal call trips its deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            d = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95)
        out[ok] = d[:, 0].numpy().astype(np.float64)
    return out


def lesion_table(pred: np.ndarray, gt: np.ndarray, miss_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """One row per ground-truth lesion (8-connected component).

    Returns arrays of equal length: ``image`` (int index into N), ``area`` (fraction of the image),
    ``coverage`` (fraction of the lesion's pixels predicted), ``missed`` (bool, coverage < ``miss_fraction``),
    ``band`` (str: small / medium / large).
    """
    p, g = _as_bool(pred), _as_bool(gt)
    rows: dict[str, list] = {"image": [], "area": [], "coverage": []}
    for i, (pi, gi) in enumerate(zip(p, g, strict=True)):
        labels, n = ndimage.label(gi, structure=_EIGHT)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        size = ndimage.sum_labels(np.ones_like(gi), labels, idx)
        hit = ndimage.sum_labels(pi, labels, idx)
        rows["image"] += [i] * n
        rows["area"] += list(size / gi.size)
        rows["coverage"] += list(hit / size)
    area = np.asarray(rows["area"], dtype=np.float64)
    coverage = np.asarray(rows["coverage"], dtype=np.float64)
    return {
        "image": np.asarray(rows["image"], dtype=np.int64),
        "area": area,
        "coverage": coverage,
        "missed": coverage < miss_fraction,
        "band": np.asarray([band_of(a) for a in area], dtype=object),
    }


def miss_rates(lesions: dict[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float | int]:
    """Pooled miss rate overall and per band (NaN where a band has no lesion) plus lesion counts.

    ``images``: restrict to lesions of these image indices (a named subset)."""
    keep = np.ones(len(lesions["missed"]), bool) if images is None else np.isin(lesions["image"], images)
    missed, band = lesions["missed"][keep], lesions["band"][keep]
    out: dict[str, float | int] = {
        "miss_rate": float(missed.mean()) if len(missed) else float("nan"), "n_lesions": int(len(missed)),
    }
    for b in BANDS:
        sel = band == b
        out[f"miss_rate_{b}"] = float(missed[sel].mean()) if sel.any() else float("nan")
        out[f"n_lesions_{b}"] = int(sel.sum())
    return out


THRESHOLD = 0.5  # probability at or above which a pixel is predicted lesion


def is_volumetric(ids: list[str]) -> bool:
    """True when every id names a volume slice (``<case>/<axis>_<index>``)."""
    from lesionforge.data.volumes import case_of

    return bool(ids) and all(case_of(i) is not None for i in ids)


def volume_dice(pred: np.ndarray, gt: np.ndarray, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """3D Dice per case: ``(cases, dice3d)``, cases sorted, dice float64. ``pred``/``gt`` are binary slices
    (N, H, W) aligned with slice ``ids``; each case's slices are stacked in slice order (a stack's Dice pools the
    voxel counts of its slices, so the order only matters for the record)."""
    from lesionforge.data.volumes import case_of, slice_order

    p, g = _as_bool(pred), _as_bool(gt)
    by_case: dict[str, list[int]] = {}
    for k, i in enumerate(ids):
        by_case.setdefault(case_of(i), []).append(k)
    cases = sorted(c for c in by_case if c is not None)
    out = np.empty(len(cases))
    for n, c in enumerate(cases):
        order = sorted(by_case[c], key=lambda k: slice_order(ids[k]))
        vp, vg = p[order], g[order]  # (slices, H, W): the volume reassembled
        tp = float((vp & vg).sum())
        denom = 2 * tp + float((vp & ~vg).sum()) + float((~vp & vg).sum())
        out[n] = 1.0 if denom == 0 else 2 * tp / denom
    return cases, out


@dataclass
class EvalResult:
    """Scores of one model on one set. Per-image arrays are float64 (N,) aligned with ``ids``; ``lesions`` is
    :func:`lesion_table`; ``subsets`` maps a subset name to its image indices."""

    ids: list[str]
    dice: np.ndarray
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    hd95: np.ndarray
    lesions: dict[str, np.ndarray]
    miss_fraction: float
    subsets: dict[str, np.ndarray] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)  # volumes only: case ids, aligned with ``dice3d``
    dice3d: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def mdice3d(self) -> float:
        return float(np.mean(self.dice3d)) if len(self.dice3d) else float("nan")

    @property
    def mdice(self) -> float:
        return float(np.mean(self.dice)) if len(self.dice) else float("nan")

    @property
    def miou(self) -> float:
        return float(np.mean(self.iou)) if len(self.iou) else float("nan")

    def summary(self, images: np.ndarray | None = None) -> dict[str, Any]:
        """Aggregates over all images or over ``images`` (indices): means, miss rates, counts."""
        sel = np.arange(len(self.ids)) if images is None else np.asarray(images, dtype=int)
        rates = miss_rates(self.lesions, sel)
        out: dict[str, Any] = {"n_images": int(len(sel))}
        for name in ("dice", "iou", "precision", "recall", "hd95"):
            vals = getattr(self, name)[sel]
            out[f"m{name}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        out["n_hd95"] = int(np.isfinite(self.hd95[sel]).sum())
        out["miss_rate"], out["n_lesions"] = rates["miss_rate"], rates["n_lesions"]
        out["miss_rate_by_band"] = {b: rates[f"miss_rate_{b}"] for b in BANDS}
        out["n_lesions_by_band"] = {b: rates[f"n_lesions_{b}"] for b in BANDS}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: overall aggregates at top level, ``subsets``, ``per_image``; NaN becomes ``None``."""
        out = {"threshold": THRESHOLD, "miss_fraction": self.miss_fraction, **self.summary()}
        out["band_edges"] = {"small_below": BAND_EDGES[0], "large_above": BAND_EDGES[1]}
        out["subsets"] = {name: self.summary(idx) for name, idx in self.subsets.items()}
        out["per_image"] = {
            "ids": list(self.ids),
            **{k: getattr(self, k).tolist() for k in ("dice", "iou", "precision", "recall", "hd95")},
        }
        if self.cases:
            out |= {"mdice3d": self.mdice3d, "n_cases": len(self.cases),
                    "per_case": {"cases": list(self.cases), "dice3d": self.dice3d.tolist()}}
        return _nan_to_none(out)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def score_masks(
    pred: np.ndarray, gt: np.ndarray, ids: list[str], *, subsets: dict[str, list[str]] | None = None,
    miss_fraction: float = 0.1,
) -> EvalResult:
    """All metrics of binary predictions ``pred`` against ``gt`` (both (N, H, W) or (N, 1, H, W)).

    ``subsets``: named id lists (e.g. ``{"flat": sessile_ids}``); ids not in ``ids`` are ignored. Volume slices
    also get their cases' 3D Dice, and their per-slice metrics cover the slices with foreground (module doc)."""
    cases, dice3d = [], np.zeros(0)
    if is_volumetric(list(ids)):
        cases, dice3d = volume_dice(pred, gt, list(ids))
        fg = np.flatnonzero(_as_bool(gt).any(axis=(1, 2)))
        pred, gt, ids = _as_bool(pred)[fg], _as_bool(gt)[fg], [ids[k] for k in fg]
    pos = {s: i for i, s in enumerate(ids)}
    sub = {name: np.array(sorted(pos[s] for s in set(members) if s in pos), dtype=int)
           for name, members in (subsets or {}).items()}
    return EvalResult(
        list(ids), **overlap_scores(pred, gt), hd95=hd95(pred, gt),
        lesions=lesion_table(pred, gt, miss_fraction), miss_fraction=miss_fraction, subsets=sub,
        cases=cases, dice3d=dice3d,
    )


def evaluate(
    model_or_path: nn.Module | str | Path, arrays: PairArrays, *, subsets: dict[str, list[str]] | None = None,
    miss_fraction: float = 0.1, batch_size: int = 32,
) -> EvalResult:
    """Predict ``arrays.images`` with a model (or a checkpoint folder) and score against ``arrays.masks``.

    Only samples with a mask (``has_mask``) are scored; prediction is probability >= 0.5."""
    from lesionforge.segment.model_io import load_segmenter, predict

    model = load_segmenter(model_or_path) if isinstance(model_or_path, str | Path) else model_or_path
    labelled = arrays.subset(np.flatnonzero(arrays.has_mask))
    prob = predict(model, labelled.images, batch_size)
    pred = (prob[:, 0] >= THRESHOLD).numpy()
    return score_masks(pred, labelled.masks > 0, labelled.ids, subsets=subsets, miss_fraction=miss_fraction)


def evaluate_path(
    model_path: str | Path, data_path: str | Path, *, ids: list[str] | None = None,
    subsets: dict[str, list[str]] | None = None, miss_fraction: float = 0.1, batch_size: int = 32,
) -> EvalResult:
    """Score a checkpoint on any dataset folder or manifest (transfer included), preprocessed at the model's
    resolution and channel count. Volumes are read whole (foreground-free slices too) for their 3D Dice; ``ids``
    may name cases."""
    from lesionforge.segment.data import load_pairs
    from lesionforge.segment.model_io import load_segmenter

    model = load_segmenter(model_path)
    arrays = load_pairs(data_path, model.segment_config.resolution, model.in_channels, ids, whole_volumes=True)
    return evaluate(model, arrays, subsets=subsets, miss_fraction=miss_fraction, batch_size=batch_size)
