"""Statistics of the blinded test against published values."""

from __future__ import annotations

import pytest

from lesionforge.review.stats import cohen_kappa, fleiss_kappa, rater_summary, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)  # Wilson (1927) interval for 8/10 at 95 %
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_cohen_kappa_known_value_and_undefined_case():
    # Wikipedia's example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["real"] * 3, ["real"] * 3) is None


def test_fleiss_kappa_wikipedia_example():
    # Wikipedia's worked example: 10 items, 14 raters, 5 categories -> kappa 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    calls = [[str(c) for c, k in enumerate(row) for _ in range(k)] for row in counts]
    assert fleiss_kappa(calls) == pytest.approx(0.2099, abs=1e-4)


def test_summary_three_raters_gives_fleiss():
    truth = {f"i{k}": "real" if k % 2 else "synthetic" for k in range(6)}
    calls = {"a": dict(truth), "b": dict(truth), "c": {**truth, "i0": "real"}}
    s = rater_summary(truth, calls)
    assert s["raters"]["c"]["accuracy"] == pytest.approx(5 / 6) and s["n_common"] == 6
    assert len(s["pairs"]) == 3 and s["fleiss_kappa"] == pytest.approx(fleiss_kappa(
        [[calls[r][i] for r in "abc"] for i in sorted(truth)]))
    assert 0 < s["fleiss_kappa"] < 1
