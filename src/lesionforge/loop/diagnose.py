"""What the segmenter gets wrong: failures on ``val`` by group, uncertainty on images without masks.

Every ground-truth lesion of ``val`` (8-connected component, as in :func:`lesionforge.segment.metrics.lesion_table`)
is *missed* when less than ``miss_fraction`` of it is predicted and *under-segmented* when less than
``under_fraction``; both count as a failure. Failure rates are reported per

- size band (the protocol's bands, :func:`~lesionforge.data.bands.band_of`),
- position: the cell of a ``grid`` x ``grid`` grid holding the lesion's centroid (``r<row>c<col>``),
- shape: elongation (eccentricity < 0.6 round, < 0.85 oval, else elongated) x solidity (>= 0.9 convex,
  else irregular), from scikit-image ``regionprops``,
- appearance: a k-means cluster (SciPy ``kmeans2``, seed 0) of the lesion's mean colour,
- named subsets of ``val`` (e.g. flat polyps), when the dataset has them.

Images without masks (the unlabelled pool, lesion-free backgrounds) get the mean binary entropy of the predicted
probability and, with a second checkpoint, the disagreement ``1 - Dice`` between the two predictions.

Each group's ``weight_rate`` is its failure rate shrunk towards the overall rate by ``prior_lesions`` pseudo-lesions
(``LoopSettings``), so a group seen once or twice does not swing the draw; a group without lesions gets the overall
rate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lesionforge.data.arrays import PairArrays
from lesionforge.data.bands import BANDS, band_of
from lesionforge.segment.metrics import THRESHOLD
from lesionforge.utils import save_figure_atomic, write_json_atomic

#: ``images uint8 (N, H, W, C) -> lesion probability float (N, H, W)``
Predictor = Callable[[np.ndarray], np.ndarray]

ELONGATION = ((0.6, "round"), (0.85, "oval"), (1.01, "elongated"))
SOLIDITY_CONVEX = 0.9
SHAPES = tuple(f"{e}-{s}" for _, e in ELONGATION for s in ("convex", "irregular"))
TOP_UNCERTAIN = 10

_EIGHT = np.ones((3, 3), dtype=bool)


def checkpoint_predictor(path: str | Path, batch_size: int = 32) -> Predictor:
    """A :data:`Predictor` from a segmenter checkpoint folder."""
    from lesionforge.segment.model_io import load_segmenter, predict

    model = load_segmenter(path)
    return lambda images: predict(model, images, batch_size)[:, 0].numpy()


def shape_class(region: np.ndarray) -> tuple[str, float, float]:
    """``(class, eccentricity, solidity)`` of one binary lesion (H, W)."""
    from skimage.measure import regionprops

    props = regionprops(region.astype(np.uint8))[0]
    ecc, sol = float(props.eccentricity), float(props.solidity)
    elong = next(name for edge, name in ELONGATION if ecc < edge)
    return f"{elong}-{'convex' if sol >= SOLIDITY_CONVEX else 'irregular'}", ecc, sol


def cell_of(cy: float, cx: float, side: int, grid: int) -> str:
    """Grid cell ``r<row>c<col>`` of a centroid on a ``side`` x ``side`` image."""
    r, c = (min(grid - 1, int(v * grid / side)) for v in (cy, cx))
    return f"r{r}c{c}"


def lesion_rows(images: np.ndarray, masks: np.ndarray, prob: np.ndarray, *, miss_fraction: float,
                under_fraction: float, grid: int) -> dict[str, np.ndarray]:
    """One row per ground-truth lesion: ``image``, ``area``, ``band``, ``coverage``, ``missed``, ``under``,
    ``failed``, ``cell``, ``shape``, ``eccentricity``, ``solidity``, ``colour`` (mean, (L, C))."""
    rows: dict[str, list] = {k: [] for k in ("image", "area", "band", "coverage", "cell", "shape", "eccentricity",
                                             "solidity", "colour")}
    pred = prob >= THRESHOLD
    for i, (img, gt) in enumerate(zip(images, masks > 0, strict=True)):
        labels, n = ndimage.label(gt, structure=_EIGHT)
        for k in range(1, n + 1):
            region = labels == k
            area = float(region.mean())
            cy, cx = ndimage.center_of_mass(region)
            shape, ecc, sol = shape_class(region)
            rows["image"].append(i)
            rows["area"].append(area)
            rows["band"].append(band_of(area))
            rows["coverage"].append(float(pred[i][region].mean()))
            rows["cell"].append(cell_of(cy, cx, gt.shape[0], grid))
            rows["shape"].append(shape)
            rows["eccentricity"].append(ecc)
            rows["solidity"].append(sol)
            rows["colour"].append(img[region].reshape(-1, img.shape[-1]).mean(0))
    out = {k: np.asarray(v) for k, v in rows.items() if k != "colour"}
    channels = images.shape[-1] if images.ndim == 4 else 1
    out["colour"] = np.asarray(rows["colour"], dtype=np.float64).reshape(-1, channels)
    out["image"] = out["image"].astype(int)
    out["missed"] = out["coverage"] < miss_fraction if len(out["coverage"]) else np.zeros(0, bool)
    out["under"] = (out["coverage"] < under_fraction) & ~out["missed"] if len(out["coverage"]) else np.zeros(0, bool)
    out["failed"] = out["missed"] | out["under"]
    return out


def appearance_clusters(colours: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (L,), centroids (k', C))``: k-means (SciPy, fixed seed) of lesion mean colours, k' <= k."""
    from scipy.cluster.vq import kmeans2

    k = min(k, len(np.unique(colours, axis=0))) if len(colours) else 0
    if k <= 1:
        return np.zeros(len(colours), int), colours.mean(0, keepdims=True) if len(colours) else colours
    centroids, labels = kmeans2(colours, k, seed=0, minit="++")
    used = np.unique(labels)  # an empty cluster is dropped and the labels renumbered
    return np.searchsorted(used, labels), centroids[used]


def describe_colour(colour: np.ndarray) -> str:
    """Words for a mean colour (uint8 scale): brightness, and a tint for colour images (for prompts)."""
    c = np.asarray(colour, dtype=np.float64)
    lum = float(c.mean()) if len(c) < 3 else float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])
    words = ["dark" if lum < 85 else "bright" if lum > 170 else "mid-toned"]
    if len(c) >= 3:
        red = c[0] - (c[1] + c[2]) / 2
        words.append("reddish" if red > 40 else "pale" if c.max() - c.min() < 25 else "pinkish")
    return " ".join(words)


def cluster_labels(centroids: np.ndarray) -> list[str]:
    """:func:`describe_colour` of each centroid; where two read the same, the darkest and lightest of the
    clusters are named so ("darker ...", "lighter ..."), so prompts can tell them apart."""
    words = [describe_colour(c) for c in centroids]
    if len(set(words)) == len(words) or len(words) < 2:
        return words
    order = np.argsort(centroids.mean(1), kind="stable")
    rank = {int(k): i for i, k in enumerate(order)}
    relative = {0: "darker ", len(words) - 1: "lighter "}
    return [f"{relative.get(rank[k], '')}{w}" for k, w in enumerate(words)]


def group_stats(keys: np.ndarray, rows: dict[str, np.ndarray], names: list[str] | tuple[str, ...],
                prior: float) -> dict:
    """Per group: lesion, miss, under-segmentation and failure counts, ``failure_rate`` and ``weight_rate``
    (shrunk towards the overall rate by ``prior`` pseudo-lesions)."""
    failed = rows["failed"]
    overall = float(failed.mean()) if len(failed) else 0.0
    out = {}
    for name in names:
        sel = keys == name
        n, f = int(sel.sum()), int(failed[sel].sum())
        out[name] = {"lesions": n, "missed": int(rows["missed"][sel].sum()), "under": int(rows["under"][sel].sum()),
                     "failed": f, "failure_rate": f / n if n else None,
                     "weight_rate": (f + prior * overall) / (n + prior) if n + prior > 0 else overall}
    return out


def entropy(prob: np.ndarray) -> np.ndarray:
    """Mean binary entropy (bits) per image of probabilities (N, H, W)."""
    p = np.clip(prob.astype(np.float64), 1e-6, 1 - 1e-6)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).reshape(len(p), -1).mean(1)


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - Dice`` per image between two thresholded predictions (0 when both are empty)."""
    pa, pb = (a >= THRESHOLD).reshape(len(a), -1), (b >= THRESHOLD).reshape(len(b), -1)
    inter, total = (pa & pb).sum(1), pa.sum(1) + pb.sum(1)
    return np.where(total == 0, 0.0, 1.0 - 2.0 * inter / np.maximum(total, 1))


def uncertainty(arrays: PairArrays | None, predictor: Predictor, second: Predictor | None = None) -> dict[str, Any]:
    """Entropy (and disagreement with ``second``) of every image of ``arrays``, plus the most uncertain ids."""
    if arrays is None or len(arrays) == 0:
        return {"n": 0, "ids": [], "entropy": [], "disagreement": None, "most_uncertain": []}
    prob = predictor(arrays.images)
    ent = entropy(prob)
    dis = disagreement(prob, second(arrays.images)) if second is not None else None
    score = ent if dis is None else ent + dis
    order = np.argsort(-score, kind="stable")[:TOP_UNCERTAIN]
    return {"n": len(arrays), "ids": list(arrays.ids), "entropy": ent.round(5).tolist(),
            "disagreement": None if dis is None else dis.round(5).tolist(),
            "entropy_mean": float(ent.mean()), "disagreement_mean": None if dis is None else float(dis.mean()),
            "predicted_lesion_share": float((prob >= THRESHOLD).mean()),
            "most_uncertain": [arrays.ids[i] for i in order]}


def diagnose(
    predictor: Predictor, val: PairArrays, *, settings, miss_fraction: float = 0.1,
    pool: PairArrays | None = None, backgrounds: PairArrays | None = None, second: Predictor | None = None,
    subsets: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The diagnosis of one segmenter (``settings``: :class:`~lesionforge.loop.settings.LoopSettings`)."""
    val = val.subset(np.flatnonzero(val.has_mask))
    prob = predictor(val.images)
    rows = lesion_rows(val.images, val.masks, prob, miss_fraction=miss_fraction,
                       under_fraction=settings.under_fraction, grid=settings.grid)
    prior = settings.prior_lesions
    labels, centroids = appearance_clusters(rows["colour"], settings.appearance_clusters)
    clusters = [f"c{k}" for k in range(len(centroids))]
    by_appearance = group_stats(np.asarray([f"c{k}" for k in labels]), rows, clusters, prior)
    words = cluster_labels(centroids)
    for k, name in enumerate(clusters):
        by_appearance[name] |= {"mean_colour": centroids[k].round(1).tolist(), "label": words[k]}
    cells = [f"r{r}c{c}" for r in range(settings.grid) for c in range(settings.grid)]
    image_of = np.asarray(val.ids, dtype=object)[rows["image"]] if len(rows["image"]) else np.zeros(0, object)
    by_subset = {}
    for name, ids in (subsets or {}).items():
        members = np.isin(image_of, list(ids))
        by_subset[name] = group_stats(np.where(members, name, ""), rows, [name], prior)[name]
    n = len(rows["failed"])
    return {
        "n_val_images": len(val), "n_val_lesions": n, "miss_fraction": miss_fraction,
        "under_fraction": settings.under_fraction, "grid": settings.grid, "prior_lesions": prior,
        "overall": {"lesions": n, "missed": int(rows["missed"].sum()), "under": int(rows["under"].sum()),
                    "failed": int(rows["failed"].sum()),
                    "failure_rate": float(rows["failed"].mean()) if n else None,
                    "miss_rate": float(rows["missed"].mean()) if n else None},
        "by_band": group_stats(rows["band"], rows, BANDS, prior),
        "by_cell": group_stats(rows["cell"], rows, cells, prior),
        "by_shape": group_stats(rows["shape"], rows, SHAPES, prior),
        "by_appearance": by_appearance,
        "by_subset": by_subset,
        "uncertainty": {"pool": uncertainty(pool, predictor, second),
                        "backgrounds": uncertainty(backgrounds, predictor, second)},
    }


def write_diagnosis(diagnosis: dict[str, Any], folder: Path, title: str = "") -> tuple[Path, Path]:
    """``diagnosis.json`` and ``diagnosis.png`` (failure rates per group, uncertainty) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, png = folder / "diagnosis.json", folder / "diagnosis.png"
    write_json_atomic(json_path, diagnosis)
    plot_diagnosis(diagnosis, png, title)
    return json_path, png


def _rates(groups: dict) -> tuple[list[str], list[float], list[int]]:
    names = list(groups)
    return names, [groups[k]["failure_rate"] or 0.0 for k in names], [groups[k]["lesions"] for k in names]


def plot_diagnosis(d: dict[str, Any], path: Path, title: str = "") -> Path:
    """A 2 x 3 figure: failure rate by band, position (heat map), shape, appearance, subset; uncertainty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, key, label in ((axes[0, 0], "by_band", "size band"), (axes[0, 2], "by_shape", "shape"),
                           (axes[1, 0], "by_subset", "named subset")):
        names, rates, counts = _rates(d[key])
        ax.bar(range(len(names)), rates, color="tab:red")
        ax.set_xticks(range(len(names)), [f"{n}\n({c})" for n, c in zip(names, counts, strict=True)],
                      fontsize=7, rotation=30 if key == "by_shape" else 0)
        ax.set_ylim(0, 1)
        ax.set_title(f"failure rate by {label}", fontsize=9)
        if not names:
            ax.text(0.5, 0.5, f"no {label}s in this dataset", ha="center", va="center", transform=ax.transAxes)
    g = d["grid"]
    heat = np.array([[d["by_cell"][f"r{r}c{c}"]["failure_rate"] for c in range(g)] for r in range(g)], dtype=float)
    im = axes[0, 1].imshow(heat, vmin=0, vmax=1, cmap="Reds")
    for r in range(g):
        for c in range(g):
            axes[0, 1].text(c, r, str(d["by_cell"][f"r{r}c{c}"]["lesions"]), ha="center", va="center", fontsize=7)
    axes[0, 1].set_xticks(range(g))
    axes[0, 1].set_yticks(range(g))
    axes[0, 1].set_title("failure rate by centroid cell (lesions)", fontsize=9)
    fig.colorbar(im, ax=axes[0, 1], fraction=0.046)
    app = d["by_appearance"]
    names, rates, counts = _rates(app)
    colours = [np.clip(np.resize(np.asarray(app[k]["mean_colour"]) / 255.0, 3), 0, 1) for k in names]
    axes[1, 1].bar(range(len(names)), rates, color=colours, edgecolor="black")
    # the labels are several words long ("darker mid-toned reddish"): turned, as the shape names, so they do
    # not run into each other
    axes[1, 1].set_xticks(range(len(names)), [f"{app[k]['label']}\n({c})" for k, c in zip(names, counts, strict=True)],
                          fontsize=7, rotation=20)
    axes[1, 1].set_ylim(0, 1)
    axes[1, 1].set_title("failure rate by appearance cluster", fontsize=9)
    ax = axes[1, 2]
    for key, colour in (("pool", "tab:blue"), ("backgrounds", "tab:gray")):
        ent = d["uncertainty"][key]["entropy"]
        if ent:
            ax.hist(ent, bins=12, alpha=0.6, color=colour, label=f"{key} ({len(ent)})")
    ax.set_title("prediction entropy, images without masks", fontsize=9)
    ax.set_xlabel("mean entropy (bits)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no images without masks", ha="center", va="center", transform=ax.transAxes)
    o = d["overall"]
    fig.suptitle(f"{title}  val lesions {o['lesions']}, failed {o['failed']} (missed {o['missed']}, "
                 f"under-segmented {o['under']})", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    return path
