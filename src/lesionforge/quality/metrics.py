"""Generation quality: FID, KID, MS-SSIM diversity and the filter's mask-fidelity summary.

Definitions and settings are documented in ``docs/quality.md``. Every report names its feature extractor
and checkpoint hash, because FID/KID values are only comparable under the same extractor.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from scipy import linalg, ndimage

from lesionforge.conditioning.masks import area_fractions
from lesionforge.data.arrays import PairArrays
from lesionforge.data.manifest import Sample
from lesionforge.quality.features import FeatureExtractor
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic

#: MS-SSIM's five standard scale weights (Wang et al. 2003), used at every resolution.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Images smaller than this are upsampled for MS-SSIM: five scales need 4 halvings of a window >= 3 px.
MS_SSIM_MIN_SIDE = 64


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) for means (D,) and covariances (D, D), in float64.

    When ``sqrtm`` of the product is not finite (near-singular covariances, e.g. fewer samples than
    dimensions), ``eps`` is added to both diagonals, as pytorch-fid does. A small imaginary part from round-off
    is dropped; a large one means the covariances are not valid and raises ``ValueError``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean.real).max()))
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # tiny negatives are round-off of two equal distributions


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular products warn; finiteness is checked by the caller
        warnings.simplefilter("ignore")
        return linalg.sqrtm(a)


def fid(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features (N_a, D) and (N_b, D); needs N >= 2 each."""
    for name, f in (("feat_a", feat_a), ("feat_b", feat_b)):
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"fid: {name} must be (N>=2, D), got shape {f.shape}")
    return frechet_distance(feat_a.mean(0), np.cov(feat_a, rowvar=False), feat_b.mean(0), np.cov(feat_b, rowvar=False))


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> float:
    gamma = 1.0 / x.shape[1]
    kxx = (gamma * x @ x.T + coef0) ** degree
    kyy = (gamma * y @ y.T + coef0) ** degree
    kxy = (gamma * x @ y.T + coef0) ** degree
    m, n = len(x), len(y)
    # diagonal terms k(x_i, x_i) are left out: that is what makes the estimate unbiased
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(feat_a: np.ndarray, feat_b: np.ndarray, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        coef0: float = 1.0, seed: int = 0) -> dict:
    """Kernel Inception Distance: unbiased MMD^2 with kernel (x.y / D + coef0)^degree over random subsets.

    Features (N_a, D), (N_b, D). Each subset draws ``min(subset_size, N_a, N_b)`` rows of each set without
    replacement. Returns ``{"mean", "std", "subsets", "subset_size"}``; the mean can be slightly negative.
    """
    size = min(subset_size, len(feat_a), len(feat_b))
    if size < 2:
        raise ValueError(f"kid: need at least 2 samples per set, got {len(feat_a)} and {len(feat_b)}")
    rng = np.random.default_rng(seed)
    values = [
        _poly_mmd2_unbiased(feat_a[rng.choice(len(feat_a), size, replace=False)],
                            feat_b[rng.choice(len(feat_b), size, replace=False)], degree, coef0)
        for _ in range(subsets)
    ]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subsets": subsets, "subset_size": size}


def ms_ssim_settings(side: int) -> dict:
    """MS-SSIM settings valid for square images of ``side`` px (see ``docs/quality.md``).

    pytorch-msssim requires ``side > (win_size - 1) * 16``; we take the largest odd window <= 11 that fits
    after upsampling sides below 64 px to 64 (bilinear), keeping the five standard scale weights.
    """
    work = max(side, MS_SSIM_MIN_SIDE)
    win = 11
    while (win - 1) * 16 >= work:
        win -= 2
    return {"win_size": win, "win_sigma": 1.5, "weights": list(MS_SSIM_WEIGHTS), "side": work,
            "upsampled_from": side if work != side else None, "data_range": 1.0}


def _msssim_tensor(images: np.ndarray, side: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().movedim(-1, 1) / 255.0
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x


def paired_ms_ssim(a: np.ndarray, b: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) for uint8 images (N, H, W, C) -> (N,) in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"paired_ms_ssim: shapes differ {a.shape} vs {b.shape}")
    s = ms_ssim_settings(min(a.shape[1:3]))
    out = []
    for start in range(0, len(a), batch_size):
        xa, xb = (_msssim_tensor(v[start : start + batch_size], s["side"]) for v in (a, b))
        out.append(ms_ssim(xa, xb, data_range=1.0, size_average=False, win_size=s["win_size"],
                           win_sigma=s["win_sigma"], weights=s["weights"]))
    return torch.cat(out).numpy() if out else np.zeros(0)


def ms_ssim_diversity(images: np.ndarray, pairs: int = 200, seed: int = 0) -> dict:
    """Mean MS-SSIM over random pairs of *different* images (N, H, W, C) uint8: lower = more diverse."""
    n = len(images)
    if n < 2:
        raise ValueError(f"ms_ssim_diversity: need at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # a non-zero offset guarantees i != j
    values = paired_ms_ssim(images[i], images[j])
    return {"mean": float(values.mean()), "std": float(values.std()), "pairs": pairs}


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, np.float64)
    return {"n": len(v), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}


def mask_fidelity(samples: list[Sample]) -> dict:
    """Summary of the filter's scores stored in ``Provenance.validation`` (keys ``dice``, ``kept``, ``threshold``).

    Returns counts, the acceptance rate among scored samples, and Dice summaries of kept and rejected ones.
    """
    scored = [s.provenance.validation for s in samples if s.provenance is not None and s.provenance.validation]
    kept = [v for v in scored if v.get("kept")]
    rejected = [v for v in scored if not v.get("kept")]
    thresholds = sorted({float(v["threshold"]) for v in scored if v.get("threshold") is not None})
    return {
        "n_samples": len(samples),
        "n_scored": len(scored),
        "acceptance_rate": len(kept) / len(scored) if scored else None,
        "dice_kept": _summary([float(v["dice"]) for v in kept if v.get("dice") is not None]),
        "dice_rejected": _summary([float(v["dice"]) for v in rejected if v.get("dice") is not None]),
        "thresholds": thresholds,
    }


def mask_stats(masks: np.ndarray) -> dict:
    """Lesion statistics of masks (N, H, W): mean area share and mean connected components (8-connectivity) of
    the non-empty ones, and how many are empty. Both means skip empty masks, so a real set with negatives (an MRI
    volume's foreground-free slices) compares with a synthetic set without any."""
    if len(masks) == 0:
        return {"n": 0, "area_share_mean": None, "components_mean": None, "n_empty": 0}
    areas = area_fractions(masks)
    components = [ndimage.label(m > 0, structure=np.ones((3, 3)))[1] for m in masks]
    lesions = [c for c in components if c > 0]
    return {"n": len(masks), "area_share_mean": float(areas.mean()) if len(areas) else None,
            "components_mean": float(np.mean(lesions)) if lesions else None, "n_empty": len(components) - len(lesions)}


def quality_report(
    real: PairArrays,
    synthetic: PairArrays,
    extractor: FeatureExtractor,
    samples: list[Sample] | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    msssim_pairs: int = 200,
    seed: int = 0,
) -> dict:
    """FID, KID, MS-SSIM diversity (synthetic and real reference) and, given the synthetic manifest rows
    ``samples``, the mask-fidelity summary. ``real`` should be the real ``test`` images; both sets uint8
    (N, H, W, C) at the same resolution. Returns a JSON-serialisable dict."""
    if real.images.shape[1:] != synthetic.images.shape[1:]:
        raise ValueError(f"real {real.images.shape[1:]} and synthetic {synthetic.images.shape[1:]} images differ")
    f_real, f_syn = extractor.features(real.images), extractor.features(synthetic.images)
    half = len(real) // 2
    report = {
        "extractor": extractor.describe(),
        "feature_dim": int(f_real.shape[1]),
        "resolution": int(real.images.shape[1]),
        "n_real": len(real),
        "n_synthetic": len(synthetic),
        "fid": fid(f_syn, f_real),
        # fewer samples than features: singular covariances, FID is biased upward; prefer KID then
        "fid_rank_deficient": min(len(real), len(synthetic)) <= f_real.shape[1],
        # FID between two halves of the real set: the noise floor at this sample size
        "fid_real_split_half": fid(f_real[:half], f_real[half:]) if half >= 2 else None,
        "kid": kid(f_syn, f_real, kid_subsets, kid_subset_size, seed=seed),
        "ms_ssim": {
            "synthetic": ms_ssim_diversity(synthetic.images, msssim_pairs, seed),
            "real_reference": ms_ssim_diversity(real.images, msssim_pairs, seed),
            "settings": ms_ssim_settings(int(min(real.images.shape[1:3]))),
        },
        "seed": seed,
        "code_version": code_version(),
    }
    if samples is not None:
        report["mask_fidelity"] = mask_fidelity(samples)
    return report


def quality_markdown(report: dict) -> str:
    """A short human-readable summary of a :func:`quality_report` dict."""
    ex, k, m = report["extractor"], report["kid"], report["ms_ssim"]
    lines = [
        "# Generation quality", "",
        f"Extractor: `{ex['name']}` (checkpoint hash `{ex['checkpoint_hash']}`), {report['feature_dim']} features; "
        f"{report['n_synthetic']} synthetic vs {report['n_real']} real images at {report['resolution']} px.", "",
        "| metric | value |", "|---|---|",
        f"| FID (synthetic vs real) | {report['fid']:.3f} |",
        f"| FID real split-half (noise floor) | {_fmt(report['fid_real_split_half'])} |",
        f"| KID x 1000 | {1000 * k['mean']:.3f} ± {1000 * k['std']:.3f} "
        f"({k['subsets']} subsets of {k['subset_size']}) |",
        f"| MS-SSIM among synthetic (lower = more diverse) | {m['synthetic']['mean']:.4f} |",
        f"| MS-SSIM among real (reference) | {m['real_reference']['mean']:.4f} |",
    ]
    mf = report.get("mask_fidelity")
    if mf:
        kept, rej = mf["dice_kept"], mf["dice_rejected"]
        lines += [
            f"| filter acceptance rate | {_fmt(mf['acceptance_rate'])} ({mf['n_scored']} scored) |",
            f"| validator Dice, kept | {_fmt(kept and kept['mean'])} |",
            f"| validator Dice, rejected | {_fmt(rej and rej['mean'])} |",
        ]
    s = m["settings"]
    lines += ["", f"MS-SSIM: window {s['win_size']}, sigma {s['win_sigma']}, 5 scales at {s['side']} px.", ""]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_quality_report(report: dict, out_dir: str | Path) -> Path:
    """Write ``quality.json`` and ``quality.md`` atomically into ``out_dir``; returns the JSON path."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "quality.json", report)
    write_text_atomic(out_dir / "quality.md", quality_markdown(report))
    return out_dir / "quality.json"


def speckle(images: np.ndarray, masks: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image inside the masks (uint8 (N, H, W, C), (N, H, W)): high-frequency
    energy of the lesion region, on the 0-255 scale. Real lesions give the reference; a sampler that leaves
    pixel noise in the region scores far above it."""
    grey = images.astype(np.float64).mean(axis=-1)
    lap = np.abs(np.stack([ndimage.laplace(g) for g in grey]))
    inside = masks > 0
    return float(lap[inside].mean()) if inside.any() else float("nan")
