"""Closed-loop diagnosis and conditions: a planted failure steers the draws, and no band is dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lesionforge.conditioning.masks import size_controlled_mask
from lesionforge.data.arrays import PairArrays
from lesionforge.data.bands import BAND_EDGES, band_of
from lesionforge.loop.conditions import (
    TargetedMaskSource,
    keep_weights,
    move_into_cell,
    plan_conditions,
    steered_shares,
    weighted_backgrounds,
)
from lesionforge.loop.diagnose import diagnose, write_diagnosis
from lesionforge.loop.settings import LoopSettings

SIZE = 64
SETTINGS = LoopSettings(open_loop_arm="synthetic")


def _pairs(seed: int, areas: list[float]) -> PairArrays:
    rng = np.random.default_rng(seed)
    masks = np.stack([size_controlled_mask(rng, SIZE, a) for a in areas])
    images = rng.integers(40, 90, (len(areas), SIZE, SIZE, 3)).astype(np.uint8)
    images[masks > 0] = (200, 80, 70)
    ids = [f"s{seed}-{i}" for i in range(len(areas))]
    return PairArrays(images, masks, np.ones(len(areas), bool), ids, [None] * len(areas))


def _areas(n_small: int, n_medium: int, n_large: int) -> list[float]:
    return [0.005] * n_small + [0.03] * n_medium + [0.12] * n_large


def _misses_small(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A planted failure: perfect on every lesion but those under 1 % of the image, which it never predicts."""
    out = np.zeros(masks.shape, np.float32)
    for i, m in enumerate(masks):
        labels, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            if (labels == k).mean() >= BAND_EDGES[0]:
                out[i][labels == k] = 1.0
    return out


@pytest.mark.parametrize("source", ["jitter", "size"])
def test_planted_small_lesion_failure_concentrates_draws_on_the_small_band(tmp_path, source):
    real, val = _pairs(0, _areas(4, 10, 10)), _pairs(1, _areas(6, 8, 8))
    fake = lambda images: _misses_small(images, val.masks)  # noqa: E731  (predicts val by construction)
    d = diagnose(fake, val, settings=SETTINGS)
    assert d["by_band"]["small"]["failure_rate"] == 1.0 and d["by_band"]["small"]["missed"] == 6
    assert d["by_band"]["medium"]["failure_rate"] == 0.0 and d["by_band"]["large"]["failure_rate"] == 0.0
    plan = plan_conditions(d, real.masks, SETTINGS)
    assert plan["targeted_bands"] == ["small"]
    masks_from = TargetedMaskSource(plan, real.masks, SIZE, move_to_cell=True, tag={"loop_round": 0}, source=source,
                                    ids=real.ids)
    drawn = masks_from(np.random.default_rng(0), 400)
    bands = [band_of(float(m.mean())) for m, _ in drawn]
    share = {b: bands.count(b) / len(bands) for b in ("small", "medium", "large")}
    real_small = plan["real_band_shares"]["small"]
    assert real_small == pytest.approx(4 / 24)
    natural = plan["band_natural_shares"]
    assert natural["small"] == pytest.approx(6.5 / 23.5)  # val's small lesions, smoothed
    assert share["small"] > 1.8 * natural["small"] and share["small"] > 3 * real_small, share  # the failing band
    # the others are drawn less, never below half their natural share (max_gain 2): none is dropped
    for b in ("medium", "large"):
        assert natural[b] / SETTINGS.max_gain * 0.8 <= share[b] < natural[b], share
    assert all(info["loop_round"] == 0 and info["mask_source"].startswith("closed-loop") for _, info in drawn)
    if source == "jitter":  # real masks of the drawn band, deformed, with their source id as provenance
        assert all(info["source_id"] in real.ids for _, info in drawn)
    json_path, png = write_diagnosis(d, tmp_path / "round0", "planted")
    assert json.loads(json_path.read_text())["by_band"]["small"]["missed"] == 6 and png.stat().st_size > 1000


def test_without_failures_every_band_is_drawn_and_none_is_targeted():
    real, val = _pairs(0, _areas(4, 10, 10)), _pairs(1, _areas(6, 8, 8))
    d = diagnose(lambda images: (val.masks > 0).astype(np.float32), val, settings=SETTINGS)
    plan = plan_conditions(d, real.masks, SETTINGS)
    assert plan["targeted_bands"] == [] and plan["band_shares"] == plan["band_natural_shares"]
    assert plan["band_shares"]["small"] == pytest.approx(6.5 / 23.5)  # val's own share: open loop's draw


def _groups(lesions: list[int], failed: list[int], prior: float = 5.0) -> dict:
    overall = sum(failed) / sum(lesions)
    return {f"g{i}": {"lesions": n, "failed": f, "weight_rate": (f + prior * overall) / (n + prior)}
            for i, (n, f) in enumerate(zip(lesions, failed, strict=True))}


def test_steered_shares_are_bounded_and_a_group_of_two_lesions_cannot_swing_the_draw():
    # the first real run: 2 small val lesions, both failed, among 104 (25 failed): drawn at most 2x its share
    g = _groups([2, 24, 78], [2, 6, 17])
    s, natural = steered_shares(g, 2.0), steered_shares(g, 1.0)
    assert sum(s.values()) == pytest.approx(1.0) and natural["g0"] == pytest.approx(2.5 / 105.5)
    assert natural["g0"] < s["g0"] <= 2 * natural["g0"] + 1e-9 and s["g0"] < 0.06  # not the half it was
    assert all(s[k] >= natural[k] / 2 - 1e-9 for k in g)  # nothing dropped
    heavy = steered_shares(_groups([20, 20, 20], [20, 0, 0]), 3.0)  # a well-evidenced failure moves it more
    assert heavy["g0"] > 0.5 and min(heavy["g1"], heavy["g2"]) > 0.05
    assert steered_shares(_groups([5, 5], [0, 0]), 2.0) == pytest.approx({"g0": 0.5, "g1": 0.5})


def test_move_into_cell_puts_the_centroid_in_the_cell():
    rng = np.random.default_rng(3)
    mask = size_controlled_mask(rng, SIZE, 0.01)
    for cell in ("r0c0", "r2c1", "r1c2"):
        cy, cx = ndimage.center_of_mass(move_into_cell(mask, cell, 3, rng))
        assert (int(cy * 3 / SIZE), int(cx * 3 / SIZE)) == (int(cell[1]), int(cell[3]))


def test_uncertain_backgrounds_are_drawn_more_often_and_none_is_dropped():
    bg = _pairs(5, _areas(0, 0, 4))
    unc = {"ids": bg.ids, "entropy": [0.0, 0.1, 0.2, 0.9], "disagreement": None}
    repeated, shares = weighted_backgrounds(bg, unc)
    assert set(repeated.ids) == set(bg.ids)
    assert shares[bg.ids[3]] > 2.5 * shares[bg.ids[0]]


def test_appearance_prompts_add_the_failing_clusters_words_more_often():
    from lesionforge.loop.conditions import appearance_prompts

    plan = {"appearance_shares": {"c0": 0.7, "c1": 0.3}, "appearance_labels": {"c0": "dark reddish", "c1": "pale"}}
    prompt = appearance_prompts(plan, lambda sid, cls, area, rng: "a polyp")
    rng = np.random.default_rng(0)
    texts = [prompt("x", None, 0.02, rng) for _ in range(400)]
    assert all(t.startswith("a polyp, ") for t in texts)
    assert 0.6 < texts.count("a polyp, dark reddish") / len(texts) < 0.8


def test_appearance_cluster_labels_tell_similar_clusters_apart():
    from lesionforge.loop.diagnose import cluster_labels

    labels = cluster_labels(np.array([[150.0, 60, 60], [120.0, 40, 40], [180.0, 80, 80]]))
    assert len(set(labels)) == 3 and labels[1].startswith("darker") and labels[2].startswith("lighter")
    assert cluster_labels(np.array([[30.0, 30, 30], [220.0, 220, 220]])) == ["dark pale", "bright pale"]


def test_an_ablation_steers_only_the_parts_it_names_and_an_unset_steer_leaves_config_dumps_unchanged():
    real, val = _pairs(0, _areas(4, 10, 10)), _pairs(1, _areas(6, 8, 8))
    d = diagnose(lambda images: _misses_small(images, val.masks), val, settings=SETTINGS)
    shapes_only = LoopSettings(open_loop_arm="synthetic", steer=["shape"])
    plan = plan_conditions(d, real.masks, shapes_only)
    assert plan["band_shares"] == plan["band_natural_shares"] and plan["targeted_bands"] == []  # band declined
    full = plan_conditions(d, real.masks, SETTINGS)
    assert full["targeted_bands"] == ["small"] and full["shape_shares"] == plan["shape_shares"]
    none = LoopSettings(open_loop_arm="synthetic", steer=[])
    assert not any(none.steers(p) for p in ("band", "shape", "position", "backgrounds", "appearance"))
    assert all(SETTINGS.steers(p) for p in ("band", "backgrounds"))
    assert "steer" not in SETTINGS.model_dump(mode="json")  # configs written before it keep their hashes
    assert none.model_dump(mode="json")["steer"] == []
    with pytest.raises(ValueError, match="steer"):
        LoopSettings(open_loop_arm="synthetic", steer=["colour"])


def test_keep_steering_weights_the_failing_band_up_bounded_and_leaves_the_draw_alone():
    real, val = _pairs(0, _areas(4, 10, 10)), _pairs(1, _areas(6, 8, 8))
    d = diagnose(lambda images: _misses_small(images, val.masks), val, settings=SETTINGS)
    keep = LoopSettings(open_loop_arm="synthetic", steer_by="keep")
    plan = plan_conditions(d, real.masks, keep)
    assert plan["steer_by"] == "keep" and plan["targeted_bands"] == ["small"]
    assert plan_conditions(d, real.masks, SETTINGS)["steer_by"] == "draw"
    made = _pairs(2, _areas(5, 5, 5))  # pairs as the open loop draws them: every band
    w, groups = keep_weights(plan, made.images, made.masks, position=False, max_gain=keep.max_gain)
    assert groups["band"] == ["small"] * 5 + ["medium"] * 5 + ["large"] * 5 and groups["cell"] == [None] * 15
    assert set(groups["appearance"]) <= set(plan["appearance_colours"])
    small, rest = w[:5], w[5:]
    assert small.min() > 1.0 > rest.max() and small.mean() > 2 * rest.mean()  # the failing band is kept more
    assert w.max() <= keep.max_gain and w.min() >= 1 / keep.max_gain  # bounded: nothing is dropped
    # an ablation that declines every part: no weight moves
    flat = plan_conditions(d, real.masks, LoopSettings(open_loop_arm="synthetic", steer_by="keep", steer=[]))
    assert np.allclose(keep_weights(flat, made.images, made.masks, position=True, max_gain=2.0)[0], 1.0)
    # a lesion-free pair is not weighted
    empty = np.zeros_like(made.masks[:1])
    assert keep_weights(plan, made.images[:1], empty, position=True, max_gain=2.0)[0].tolist() == [1.0]


def test_keep_steering_is_omitted_from_dumps_while_unset_and_needs_a_filter_that_keeps_the_best():
    from lesionforge.experiment.config import ExperimentConfig

    assert "steer_by" not in SETTINGS.model_dump(mode="json")
    assert LoopSettings(open_loop_arm="s", steer_by="keep").steers_keep and not SETTINGS.steers_keep
    with pytest.raises(ValueError, match="steer_by"):
        LoopSettings(open_loop_arm="s", steer_by="reweight")
    cfg = {"dataset": {"name": "d", "demo": {"n": 40, "size": 32}}, "profile": "tiny", "n_labelled": [8],
           "seeds": [0], "segment": {"steps": 4},
           "arms": [{"name": "baseline", "kind": "baseline"},
                    {"name": "synthetic", "kind": "synthetic", "generator": "g", "filtered": False},
                    {"name": "loop", "kind": "closed-loop", "generator": "g", "filtered": False,
                     "loop": {"open_loop_arm": "synthetic", "steer_by": "keep"}}],
           "generators": {"g": {"method": "inpaint-normal", "n_per_real": 2}}}
    with pytest.raises(ValueError, match="steer_by 'keep'"):
        ExperimentConfig.model_validate(cfg)
    # a generator that repaints the labelled images needs every drawn mask to come from one: keep mode only
    cfg["generators"]["g"]["repaint_share"] = 1.0
    cfg["arms"][2]["loop"] = {"open_loop_arm": "synthetic"}
    with pytest.raises(ValueError, match="repaint_share"):
        ExperimentConfig.model_validate(cfg)
