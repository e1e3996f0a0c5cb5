"""How well a cheap screen ranks arms the way the full benchmark does: Spearman's rho with its noise.

The screen scores each arm on real ``val`` images; the benchmark gives each arm a test mDice. The noise of rho
comes from the screen's side (a paired bootstrap over val images: every replicate resamples the same images for
every arm) and, for the question "could this rho be chance?", from an exact permutation test over the headline
ranks (all orderings for up to 8 arms).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
from scipy.stats import rankdata

#: Above this many arms the permutation test samples orderings instead of listing all of them.
EXACT_PERMUTATION_MAX = 8


def rank_agreement(screen: Mapping[str, Mapping[str, float]], headline: Mapping[str, float], n_boot: int = 2000,
                   n_perm: int = 20000, seed: int = 0,
                   unit: str = "val images, resampled jointly for every arm") -> dict:
    """Spearman rho between the screen's arm scores and the headline's.

    ``screen``: arm -> {val image id -> score (e.g. Dice, averaged over seeds)}, the same ids for every arm;
    ``headline``: arm -> headline mDice. Only arms in both count (at least 3). ``unit``: what the keys of
    ``screen`` are, as the bootstrap resamples them (e.g. each arm's seeds, jointly). Returns ``{"arms", "screen_mean",
    "headline", "spearman", "bootstrap": {"ci95", "mean", "p_rho_le_0"}, "permutation_p", "n_images"}``:
    ``permutation_p`` is P(rho >= observed) when the headline ranks are shuffled (one-sided).
    """
    arms = sorted(set(screen) & set(headline))
    if len(arms) < 3:
        raise ValueError(f"rank_agreement needs at least 3 arms scored by both, got {arms}")
    ids = sorted(screen[arms[0]])
    if any(set(screen[a]) != set(ids) for a in arms):
        raise ValueError("rank_agreement: the screen scored the arms on different images")
    scores = np.array([[screen[a][i] for i in ids] for a in arms], dtype=float)  # (arms, images)
    head = np.array([headline[a] for a in arms], dtype=float)
    means = np.nanmean(scores, axis=1)
    rho = float(_rho_rows(means[None], head)[0])
    rng = np.random.default_rng(seed)
    boots = _rho_rows(np.stack([np.nanmean(scores[:, idx], axis=1)
                                for idx in rng.integers(0, len(ids), size=(n_boot, len(ids)))]), head)
    boots = boots[np.isfinite(boots)]
    if len(arms) <= EXACT_PERMUTATION_MAX:
        perms = [np.array(p) for p in itertools.permutations(range(len(arms)))]
    else:
        perms = [rng.permutation(len(arms)) for _ in range(n_perm)]
    null = _rho_rows(head[np.stack(perms)], means)
    return {
        "arms": arms, "screen_mean": dict(zip(arms, means.tolist(), strict=True)),
        "headline": dict(zip(arms, head.tolist(), strict=True)), "spearman": rho, "n_images": len(ids),
        "bootstrap": {"mean": float(boots.mean()) if boots.size else float("nan"),
                      "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
                      if boots.size else [float("nan")] * 2,
                      "p_rho_le_0": float((boots <= 0).mean()) if boots.size else float("nan"),
                      "samples": int(boots.size), "unit": unit},
        "permutation_p": float((null >= rho - 1e-12).mean()),
        "permutations": len(perms),
    }


def _rho_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``a`` (rows, arms) with ``b`` (arms): the Pearson correlation of average ranks,
    as ``scipy.stats.spearmanr`` computes it, for every row at once. Written out because the bootstrap and the
    exact permutation test need tens of thousands of them (8 arms: 40320 orderings), which one ``spearmanr`` call
    each made take half a minute, at every save of a screen. NaN where a row or ``b`` is constant (a constant
    ranking has no rank correlation) or holds a NaN."""
    ra, rb = rankdata(a, axis=1), rankdata(b)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ra @ rb) / den
    out[~(den > 0)] = np.nan
    return out
