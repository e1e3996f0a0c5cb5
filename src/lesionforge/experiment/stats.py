"""Statistics over seeds and test images: mean ± std, paired differences with 95 % confidence intervals.

Pairing is by test-image id: each image's metric is first averaged over seeds (per arm), then the per-image
differences (arm − baseline) are bootstrapped over images with a fixed RNG seed, so the interval is
reproducible. With >= 3 seeds a second interval over seeds (paired by seed, Student t) is also given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of per-seed values, NaNs ignored."""
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def per_image_means(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average each image's metric over seeds: ``[{id: value} per seed] -> {id: mean}``.

    Every seed must cover the same ids (the same ``test`` set); NaNs (undefined values) are ignored.
    """
    if not per_seed:
        raise ValueError("per_image_means: no seeds given")
    ids = set(per_seed[0])
    for d in per_seed[1:]:
        if set(d) != ids:
            raise ValueError("per_image_means: seeds were evaluated on different image ids")
    return {i: float(np.nanmean([d[i] for d in per_seed])) for i in sorted(ids)}


def bootstrap_paired(
    arm: Mapping[str, float], base: Mapping[str, float], n_boot: int = 2000, seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> dict:
    """Paired bootstrap over images of the mean difference ``arm − base``.

    ``arm`` and ``base`` map image id -> metric (already averaged over seeds); they must hold the same ids.
    Returns ``{"mean", "ci95": [lo, hi], "n_images", "relative_pct"}`` where ``relative_pct`` is
    100 · mean difference / base mean. Images whose value is NaN in either arm are left out.

    ``groups`` (image id -> group, e.g. the volume a slice was cut from): a cluster bootstrap that resamples whole
    groups, each with all its images, and takes the mean over the images drawn (the same per-image mean). The
    slices of one volume are not independent draws, so an interval over them alone is too narrow; the result
    then also holds ``n_groups``.
    """
    if set(arm) != set(base):
        raise ValueError("bootstrap_paired: the two arms were scored on different image ids")
    ids = sorted(arm)
    a = np.array([arm[i] for i in ids], dtype=float)
    b = np.array([base[i] for i in ids], dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    d, b = a[ok] - b[ok], b[ok]
    if d.size == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n_images": 0, "relative_pct": None}
    rng = np.random.default_rng(seed)
    out: dict = {}
    if groups is None:
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        boots = d[idx].mean(axis=1)
    else:
        missing = [i for i in ids if i not in groups]
        if missing:
            raise ValueError(f"bootstrap_paired: no group for image {missing[0]!r}")
        _, member = np.unique([groups[i] for i, keep in zip(ids, ok, strict=True) if keep], return_inverse=True)
        sums, counts = np.bincount(member, weights=d), np.bincount(member).astype(float)
        pick = rng.integers(0, sums.size, size=(n_boot, sums.size))
        boots = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
        out["n_groups"] = int(sums.size)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "mean": float(d.mean()), "ci95": [float(lo), float(hi)], "n_images": int(d.size),
        "relative_pct": relative_change(float(d.mean()), float(b.mean())), **out,
    }


def seed_paired_ci(arm: Sequence[float], base: Sequence[float]) -> dict | None:
    """95 % Student-t interval of the mean per-seed difference (paired by seed); None with < 3 seeds."""
    d = np.asarray(arm, dtype=float) - np.asarray(base, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < 3:
        return None
    half = float(sps.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    m = float(d.mean())
    return {"mean": m, "ci95": [m - half, m + half], "n_seeds": int(d.size)}


def relative_change(diff: float, base_mean: float) -> float | None:
    """``100 · diff / base_mean`` in %; None when the base mean is 0 or undefined."""
    if not np.isfinite(base_mean) or base_mean == 0:
        return None
    return 100.0 * diff / base_mean


def ratio_bootstrap_paired(
    arm: Mapping[str, tuple[float, float]], base: Mapping[str, tuple[float, float]], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Paired bootstrap of a ratio metric (e.g. miss rate = missed / lesions) over images.

    ``arm``/``base`` map image id -> (numerator, denominator) summed over seeds. Each resample recomputes
    ``sum(num) / sum(den)`` per arm on the same images, so images with many lesions weigh accordingly.
    """
    if set(arm) != set(base):
        raise ValueError("ratio_bootstrap_paired: the two arms were scored on different image ids")
    ids = [i for i in sorted(arm) if base[i][1] > 0]
    if not ids:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n_images": 0, "relative_pct": None}
    an, ad = (np.array([arm[i][k] for i in ids], dtype=float) for k in (0, 1))
    bn, bd = (np.array([base[i][k] for i in ids], dtype=float) for k in (0, 1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    boots = an[idx].sum(1) / ad[idx].sum(1) - bn[idx].sum(1) / bd[idx].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    base_rate = bn.sum() / bd.sum()
    diff = float(an.sum() / ad.sum() - base_rate)
    return {
        "mean": diff, "ci95": [float(lo), float(hi)], "n_images": len(ids),
        "relative_pct": relative_change(diff, float(base_rate)),
    }
