"""Protocol metrics on hand-made masks with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lesionforge.segment.metrics import band_of, hd95, lesion_table, miss_rates, overlap_scores, score_masks


def _blank(n: int = 1, size: int = 20) -> np.ndarray:
    return np.zeros((n, size, size), np.uint8)


def test_dice_iou_precision_recall_known_values():
    gt, pred = _blank(), _blank()
    gt[0, 2:6, 2:6] = 1  # 16 px
    pred[0, 2:6, 2:4] = 1  # 8 px, all inside
    s = overlap_scores(pred, gt)
    assert s["dice"][0] == pytest.approx(2 * 8 / (8 + 16))
    assert s["iou"][0] == pytest.approx(8 / 16)
    assert s["precision"][0] == pytest.approx(1.0)
    assert s["recall"][0] == pytest.approx(0.5)


def test_empty_cases():
    gt, pred = _blank(3), _blank(3)
    pred[1, 0, 0] = 1  # empty truth, a false positive
    gt[2, 5:8, 5:8] = 1  # lesion, nothing predicted
    s = overlap_scores(pred, gt)
    assert s["dice"].tolist() == [1.0, 0.0, 0.0]  # empty-vs-empty scores 1, defined in the docs
    assert s["iou"].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(s["precision"][0]) and s["precision"][1] == 0.0 and math.isnan(s["precision"][2])
    assert math.isnan(s["recall"][0]) and math.isnan(s["recall"][1]) and s["recall"][2] == 0.0


def test_hd95_known_distance_and_nan_when_empty():
    gt, pred = _blank(2, 32), _blank(2, 32)
    gt[0, 10:20, 10:20] = 1
    pred[0, 10:20, 13:23] = 1  # the same square shifted 3 px: every boundary point is at most 3 px away
    gt[1, 4:8, 4:8] = 1  # empty prediction: undefined
    d = hd95(pred, gt)
    assert d[0] == pytest.approx(3.0)
    assert math.isnan(d[1])



def test_hd95_ignores_the_farthest_five_percent_where_hd100_does_not():
    from scipy.spatial.distance import directed_hausdorff

    gt, pred = _blank(1, 40), _blank(1, 40)
    gt[0, 10:20, 10:20] = 1
    pred[0, 11:21, 10:20] = 1  # the square 1 px lower ...
    pred[0, 35, 35] = 1  # ... and one stray pixel far away: a single boundary point of ~40
    p, g = np.argwhere(pred[0]), np.argwhere(gt[0])
    hd100 = max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])
    assert hd100 == pytest.approx(math.hypot(16, 16))  # the stray pixel to the square's corner (19, 19)
    assert hd95(pred, gt)[0] == pytest.approx(1.0)


def test_a_lesion_covered_exactly_at_the_threshold_counts_as_found():
    gt, pred = _blank(1, 40), _blank(1, 40)
    gt[0, 0:10, 0:10] = 1  # 100 px, 10 px predicted: coverage exactly 0.1
    pred[0, 0, 0:10] = 1
    gt[0, 20:30, 20:30] = 1  # 100 px, 9 px predicted: just under
    pred[0, 20, 20:29] = 1
    les = lesion_table(pred, gt, miss_fraction=0.1)
    assert les["coverage"].tolist() == [0.1, 0.09]
    assert les["missed"].tolist() == [False, True]

def test_lesion_miss_rate_by_band():
    size = 100  # image area 10_000 px: bands at 100 px (1 %) and 500 px (5 %)
    gt, pred = _blank(1, size), _blank(1, size)
    gt[0, 0:5, 0:5] = 1  # 25 px small, missed (nothing predicted)
    gt[0, 20:30, 20:30] = 1  # 100 px = 1 %: medium (edge included), covered 20 % -> found
    pred[0, 20:22, 20:30] = 1
    gt[0, 50:80, 50:80] = 1  # 900 px large, covered 5 % (< 10 %) -> missed
    pred[0, 50:53, 50:65] = 1
    gt[0, 90, 90] = gt[0, 91, 91] = 1  # diagonal neighbours: one lesion under 8-connectivity, found
    pred[0, 90, 90] = 1
    les = lesion_table(pred, gt, miss_fraction=0.1)
    assert len(les["area"]) == 4
    rates = miss_rates(les)
    assert rates["miss_rate"] == pytest.approx(2 / 4)
    assert rates["n_lesions_small"] == 2 and rates["miss_rate_small"] == pytest.approx(0.5)
    assert rates["n_lesions_medium"] == 1 and rates["miss_rate_medium"] == 0.0
    assert rates["n_lesions_large"] == 1 and rates["miss_rate_large"] == 1.0
    assert [band_of(a) for a in (0.0099, 0.01, 0.05, 0.0501)] == ["small", "medium", "medium", "large"]


def test_score_masks_subsets_and_json():
    gt, pred = _blank(3), _blank(3)
    gt[:, 2:6, 2:6] = 1
    pred[0, 2:6, 2:6] = 1  # image a perfect, b and c missed
    res = score_masks(pred, gt, ["a", "b", "c"], subsets={"flat": ["b", "c", "not-here"]})
    d = json.loads(json.dumps(res.to_dict()))  # NaN must not leak into JSON
    assert d["mdice"] == pytest.approx(1 / 3)
    assert d["miss_rate"] == pytest.approx(2 / 3)
    assert d["subsets"]["flat"]["n_images"] == 2
    assert d["subsets"]["flat"]["mdice"] == 0.0 and d["subsets"]["flat"]["miss_rate"] == 1.0
    assert d["subsets"]["flat"]["mprecision"] is None  # nothing predicted there: undefined, not 0
    assert d["per_image"]["ids"] == ["a", "b", "c"]
