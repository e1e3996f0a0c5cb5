"""Statistics of the blinded real-or-synthetic test: each rater's accuracy with its Wilson 95 % interval,
Cohen's kappa between two raters, Fleiss' kappa among three or more."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``correct / n`` (scipy's); ``None`` when ``n == 0``."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' calls on the same items (scikit-learn's); ``None`` when undefined
    (no items, or both raters gave one and the same call to every item, so chance agreement is 1)."""
    if len(a) == 0:
        return None
    if len(set(a) | set(b)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(list(a), list(b)))


def fleiss_kappa(calls: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa of ``calls[item][rater]`` (every item rated by the same number >= 2 of raters).

    Written out here because the one library with it (statsmodels) is not a dependency and the formula is
    short: P_i = (sum_j n_ij^2 - n) / (n (n - 1)), p_j = sum_i n_ij / (N n), kappa = (mean P_i - sum p_j^2)
    / (1 - sum p_j^2). ``None`` when undefined (no items, or a single category used by everyone).
    """
    if not calls:
        return None
    n = len(calls[0])
    if n < 2 or any(len(c) != n for c in calls):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters for every item")
    cats = sorted({c for row in calls for c in row})
    counts = np.array([[row.count(c) for c in cats] for row in calls], dtype=float)  # (N, k)
    p_i = ((counts**2).sum(1) - n) / (n * (n - 1))
    p_j = counts.sum(0) / (len(calls) * n)
    p_e = float((p_j**2).sum())
    if math.isclose(p_e, 1.0):
        return None
    return float((p_i.mean() - p_e) / (1 - p_e))


def rater_summary(truth: dict[str, str], calls: dict[str, dict[str, str]],
                  mask_scores: dict[str, dict[str, int]] | None = None) -> dict:
    """Accuracy per rater and agreement between raters.

    ``truth``: item -> "real" / "synthetic"; ``calls``: rater -> {item: call}; ``mask_scores``: rater ->
    {item: 1-5}. Agreement is computed on the items every listed rater has called: Cohen's kappa for each pair
    of raters, Fleiss' kappa when there are three or more.
    """
    raters = sorted(r for r in calls if calls[r])
    out: dict = {"n_items": len(truth), "raters": {}, "pairs": [], "fleiss_kappa": None, "n_common": 0}
    for r in raters:
        items = [i for i in calls[r] if i in truth]
        correct = sum(calls[r][i] == truth[i] for i in items)
        row: dict = {"n": len(items), "correct": correct, "accuracy": correct / len(items) if items else None,
                     "ci95": wilson_interval(correct, len(items))}
        for origin in ("real", "synthetic"):
            sub = [i for i in items if truth[i] == origin]
            row[f"accuracy_{origin}"] = (sum(calls[r][i] == origin for i in sub) / len(sub)) if sub else None
            scores = [(mask_scores or {}).get(r, {}).get(i) for i in sub]
            scores = [s for s in scores if s is not None]
            row[f"mask_score_{origin}"] = float(np.mean(scores)) if scores else None
        out["raters"][r] = row
    for x in range(len(raters)):
        for y in range(x + 1, len(raters)):
            a, b = raters[x], raters[y]
            common = sorted(set(calls[a]) & set(calls[b]) & set(truth))
            out["pairs"].append({"raters": [a, b], "n": len(common), "cohen_kappa": cohen_kappa(
                [calls[a][i] for i in common], [calls[b][i] for i in common])})
    if raters:
        common = sorted(set(truth).intersection(*(calls[r] for r in raters)))
        out["n_common"] = len(common)
        if len(raters) >= 3:
            out["fleiss_kappa"] = fleiss_kappa([[calls[r][i] for r in raters] for i in common])
    return out
