"""Mask sources, field of view, placement and cleaning of generated masks."""

from __future__ import annotations

import numpy as np
import pytest

from lesionforge.conditioning.masks import (
    RealJitterSource,
    SizeControlledSource,
    SizeSampler,
    area_fractions,
    build_mask_source,
    clean_generated_mask,
    field_of_view,
    jitter_mask,
    place_mask,
    shape_bank_from_masks,
    size_controlled_mask,
)
from lesionforge.errors import ConfigError


def _disk(size: int, cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)


def test_jitter_keeps_area_in_bounds_and_changes_mask(demo_arrays):
    rng = np.random.default_rng(0)
    lesions = [m for m in demo_arrays.masks if m.any()][:12]
    changed = 0
    for mask in lesions:
        for _ in range(3):
            out = jitter_mask(mask, rng)
            assert out.dtype == np.uint8 and out.shape == mask.shape and set(np.unique(out)) <= {0, 1}
            # area scales by factor**2 with factor in (0.8, 1.2); a pixel or two of rounding on tiny lesions
            assert 0.64 * mask.sum() - 2 <= out.sum() <= 1.44 * mask.sum() + 2
            changed += not np.array_equal(out, mask)
    assert changed >= 0.9 * 3 * len(lesions)
    assert not jitter_mask(np.zeros((32, 32), np.uint8), rng).any()


def test_jitter_stays_inside_image_and_is_deterministic():
    corner = np.zeros((32, 32), np.uint8)
    corner[:10, :10] = 1  # touches two image borders: shifting and scaling must not cut it off
    a = jitter_mask(corner, np.random.default_rng(3), scale=(1.2, 1.2), max_shift=0.3)
    b = jitter_mask(corner, np.random.default_rng(3), scale=(1.2, 1.2), max_shift=0.3)
    np.testing.assert_array_equal(a, b)
    assert abs(int(a.sum()) - round(100 * 1.44)) <= 4
    one_pixel = np.zeros((32, 32), np.uint8)
    one_pixel[5, 5] = 1
    assert jitter_mask(one_pixel, np.random.default_rng(0), scale=(0.8, 0.8)).sum() >= 1


@pytest.mark.parametrize("use_bank", [False, True])
def test_size_controlled_mask_hits_target_area(demo_arrays, use_bank):
    bank = shape_bank_from_masks(demo_arrays.masks) if use_bank else None
    rng = np.random.default_rng(1)
    for frac in (0.005, 0.02, 0.1, 0.3):
        mask = size_controlled_mask(rng, 32, frac, bank)
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        assert abs(mask.sum() - frac * 1024) <= max(2, 0.1 * frac * 1024)
    with pytest.raises(ValueError, match="area_frac"):
        size_controlled_mask(rng, 32, 0.0)


def test_size_controlled_mask_from_uncropped_square_is_exact():
    square = np.zeros((64, 64), np.uint8)
    square[10:20, 30:40] = 1  # a full-size mask as bank entry: cropped to its box first
    for seed, frac in enumerate((0.003, 0.01, 0.05, 0.2)):
        mask = size_controlled_mask(np.random.default_rng(seed), 32, frac, [square])
        assert mask.sum() == round(frac * 1024)
    with pytest.raises(ValueError, match="empty"):
        size_controlled_mask(np.random.default_rng(0), 32, 0.05, [np.zeros((8, 8), np.uint8)])


def test_size_controlled_mask_shrinks_a_shape_that_cannot_fit():
    thin = [np.ones((2, 30), np.uint8)]  # at half the image's area it would be far wider than the image
    mask = size_controlled_mask(np.random.default_rng(0), 32, 0.5, thin)
    assert 0 < mask.sum() < 0.25 * 1024
    ys, xs = np.nonzero(mask)
    extents = sorted([np.ptp(ys) + 1, np.ptp(xs) + 1])
    assert extents[1] > 4 * extents[0]  # still a thin, elongated lesion (possibly turned by 90 degrees)


def test_size_sampler_oversamples_small_lesions(demo_arrays):
    real = area_fractions(demo_arrays.masks)
    assert len(real) == 32 and (real > 0).all()
    rng = np.random.default_rng(2)
    plain = SizeSampler(real, small_boost=1.0).sample(rng, 600)
    boosted = SizeSampler(real, small_boost=4.0).sample(rng, 600)
    assert (boosted < 0.05).mean() > (plain < 0.05).mean() + 0.15
    assert plain.min() >= 0.002 and plain.max() < 0.4
    no_data = SizeSampler(None, small_boost=1.0)
    np.testing.assert_allclose(no_data.band_probs, [1 / 3] * 3)
    tiny_only = SizeSampler(real, band_shares=(1, 0, 0)).sample(rng, 50)
    assert (tiny_only < 0.01).all() and len(np.unique(tiny_only)) > 40
    with pytest.raises(ValueError, match="band_shares"):
        SizeSampler(real, band_shares=(0, 0, 0))


def test_sources_return_masks_with_provenance(demo_arrays):
    rng = np.random.default_rng(4)
    jitter = RealJitterSource(demo_arrays.masks, demo_arrays.ids)(rng, 3)
    assert len(jitter) == 3
    for mask, info in jitter:
        assert mask.any() and info["mask_source"] == "jitter" and info["source_id"] in demo_arrays.ids
    sampler = SizeSampler(area_fractions(demo_arrays.masks), small_boost=2.0)
    sized = SizeControlledSource(shape_bank_from_masks(demo_arrays.masks), sampler, 32)(rng, 4)
    for mask, info in sized:
        assert info["mask_source"] == "size_controlled" and isinstance(info["shape_index"], int)
        assert abs(mask.mean() - info["target_area_frac"]) <= max(2 / 1024, 0.1 * info["target_area_frac"])
    with pytest.raises(ValueError, match="empty"):
        RealJitterSource(np.zeros((2, 32, 32), np.uint8), ["a", "b"])


def test_build_mask_source_by_name(demo_arrays):
    rng = np.random.default_rng(5)
    jitter = build_mask_source("jitter", demo_arrays.masks, demo_arrays.ids)
    assert jitter(rng, 1)[0][1]["source_id"] in demo_arrays.ids[:32]  # the last 8 demo samples have no lesion
    blobs = build_mask_source("size", np.zeros((0, 32, 32), np.uint8), [], size=48)
    mask, info = blobs(rng, 1)[0]
    assert mask.shape == (48, 48) and mask.any() and info["shape_index"] is None
    with pytest.raises(ConfigError, match="needs real lesion"):
        build_mask_source("jitter", np.zeros((2, 32, 32), np.uint8), ["a", "b"])
    with pytest.raises(ConfigError, match="unknown mask source"):
        build_mask_source("gan", demo_arrays.masks, demo_arrays.ids)
    with pytest.raises(ConfigError, match="takes no jitter options"):
        build_mask_source("size", demo_arrays.masks, demo_arrays.ids, jitter={"max_shift": 0.0})


def _endoscopy_frame(size: int = 64) -> np.ndarray:
    """Pink octagon on black with a teal position box in the lower left, like a Kvasir frame."""
    img = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (np.abs(yy - size / 2) + np.abs(xx - size / 2)) < size * 0.68
    img[inside] = (200, 110, 100)
    img[44:60, 2:18] = (20, 150, 130)  # teal box
    img[50:54, 6:14] = (0, 0, 0)  # a dark drawing inside the box
    return img


def test_field_of_view_excludes_borders_and_overlay():
    img = _endoscopy_frame()
    fov = field_of_view(img, margin=1)
    assert fov.dtype == bool and 0.5 < fov.mean() < 0.9
    assert not fov[:4, :4].any() and not fov[-4:, -4:].any()  # black corners
    assert not fov[44:60, 2:18].any()  # the overlay box
    assert fov[20:44, 20:44].all()
    plain = field_of_view(np.full((32, 32, 3), 150, np.uint8), margin=2)
    assert plain[2:30, 2:30].all() and not plain[:2].any()
    grey = field_of_view(img.mean(-1).astype(np.uint8), margin=1)
    assert not grey[:4, :4].any() and grey[20:44, 20:44].all()


def test_field_of_view_keeps_speckled_dark_tissue_and_drops_border_text():
    rng = np.random.default_rng(0)
    us = rng.integers(60, 200, (64, 64)).astype(np.uint8)  # ultrasound-like speckle
    us[40:, :] = np.where(rng.random((24, 64)) < 0.5, 0, 30)  # dark, speckled deep tissue at the bottom
    us[:, 56:] = 0  # a uniform black padding band on the right
    us[10:12, 58:62] = 255  # text written on the padding
    fov = field_of_view(us, margin=0)
    assert fov[44:60, 4:50].all()
    assert not fov[:, 57:].any()


def test_place_mask_keeps_lesion_inside_fov():
    fov = field_of_view(_endoscopy_frame(), margin=1)
    lesion = _disk(64, 5, 5, 4)  # starts in the black corner
    rng = np.random.default_rng(0)
    for _ in range(5):
        placed = place_mask(lesion, fov, rng)
        assert placed is not None and placed.sum() == lesion.sum()
        assert not (placed.astype(bool) & ~fov).any()
    assert place_mask(_disk(64, 32, 32, 40), fov, rng) is None


def test_clean_generated_mask_removes_specks_and_fills():
    lesion = _disk(32, 14, 14, 6).astype(bool)
    prob = np.where(lesion, 0.9, 0.0).astype(np.float32)
    prob[13:16, 13:16] = 0.1  # a hole in the lesion
    prob[14, 20:28] = 0.6  # a one-pixel spur leaving the lesion
    prob[2, 28] = 0.8  # specks
    prob[28:30, 2:4] = 0.7
    mask, info = clean_generated_mask(prob, threshold=0.5, opening_radius=1, min_area_frac=0.005)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[13:16, 13:16].all() and info["filled_pixels"] == 9  # hole filled
    assert not mask[14, 22:28].any()  # spur opened away
    assert not mask[2, 28] and not mask[28:30, 2:4].any()  # specks gone
    assert not (mask.astype(bool) & ~lesion).any() and mask.sum() >= lesion.sum() - 8  # lesion kept
    assert info["threshold"] == 0.5 and info["opening"] == 1 and info["area_frac"] == mask.mean()
    # without opening, the 1-px speck and 4-px block fall below 0.5 % of the image (5 px) and are removed
    raw_cleaned, info0 = clean_generated_mask(prob, opening_radius=0, min_area_frac=0.005, fill_holes=False)
    assert info0["removed_components"] == 2 and info0["filled_pixels"] == 0
    assert raw_cleaned[14, 20:28].all() and not raw_cleaned[13:16, 13:16].any()


def test_even_jitter_source_draws_every_mask_equally_often_by_sample_index(demo_arrays):
    """``even``: sample i takes the mask at its place in a shuffled pass over all masks, so a set of any size
    draws each mask within one of the others, and a sample's mask depends on (seed, i) alone; the random draw
    (the default) leaves masks out and repeats others."""
    from collections import Counter

    source = build_mask_source("jitter", demo_arrays.masks, demo_arrays.ids, even=True)
    m = len(source.masks)
    drawn = [source.draw_at(np.random.default_rng([5, i]), 5, i)[1]["source_id"] for i in range(3 * m + 7)]
    counts = Counter(drawn)
    assert set(counts) == set(source.ids) and max(counts.values()) - min(counts.values()) == 1
    assert Counter(drawn[:m]) == Counter(source.ids)  # the first pass holds every mask once
    assert drawn[:m] != list(source.ids) and drawn[:m] != drawn[m:2 * m]  # shuffled, each pass its own order
    again = source.draw_at(np.random.default_rng([5, 11]), 5, 11)[1]["source_id"]
    assert again == drawn[11] and source.draw_at(np.random.default_rng(0), 6, 11)[1]["source_id"] in source.ids
    rng = np.random.default_rng(5)
    random_draws = Counter(source(rng, 1)[0][1]["source_id"] for _ in range(m))
    assert len(random_draws) < m  # at random, m draws miss some of the m masks
    with pytest.raises(ConfigError, match="takes no jitter options"):
        build_mask_source("size", demo_arrays.masks, demo_arrays.ids, size=32, even=True)
    # a closed-loop round tags its source's masks: the tagged source still draws evenly, and tags them
    from lesionforge.experiment.loop_arm import _Tagged

    tagged = _Tagged(source, {"round": 1})
    mask, info = tagged.draw_at(np.random.default_rng([5, 11]), 5, 11)
    assert tagged.even and info["source_id"] == drawn[11] and info["round"] == 1
    assert not _Tagged(build_mask_source("jitter", demo_arrays.masks, demo_arrays.ids), {}).even


def test_ends_weight_draws_a_volume_structures_end_slices_more_often():
    """``ends_weight``: a volume case's end-slice masks (outer quarter of its foreground range at each end) drawn
    k times as often, evenly (k times in each pass) or at random; for the same number of draws; masks that are not
    volume slices raise instead of silently doing nothing."""
    from collections import Counter

    masks = np.zeros((9, 16, 16), np.uint8)
    masks[:, 6:10, 6:10] = 1
    ids = [f"case_{c}/2_{k:04d}" for c in (1, 2) for k in range(10, 14 if c == 1 else 15)]  # 4 + 5 slices
    ends = {"case_1/2_0010", "case_1/2_0013", "case_2/2_0010", "case_2/2_0014"}
    source = build_mask_source("jitter", masks, ids, even=True, ends_weight=3)
    assert {i for i, w in zip(source.ids, source.weights, strict=True) if w == 3} == ends
    per_pass = len(ids) + 2 * len(ends)
    drawn = Counter(source.draw_at(np.random.default_rng([1, i]), 1, i)[1]["source_id"] for i in range(2 * per_pass))
    assert all(drawn[i] == (6 if i in ends else 2) for i in ids)
    rng = np.random.default_rng(0)
    at_random = Counter(info["source_id"] for _, info in source(rng, 3000))
    share = sum(at_random[i] for i in ends) / 3000
    assert abs(share - 12 / 17) < 0.03  # 4 ends x 3 of 17 slots
    with pytest.raises(ConfigError, match="no labelled mask is a volume slice"):
        build_mask_source("jitter", masks, [f"img{k}" for k in range(9)], ends_weight=2)
    with pytest.raises(ConfigError, match="takes no jitter options"):
        build_mask_source("size", masks, ids, size=16, ends_weight=2)
    from lesionforge.experiment.config import JitterSettings

    settings = JitterSettings(max_shift=0.0, ends_weight=2)
    assert settings.kwargs() == {"max_shift": 0.0} and "ends_weight" not in JitterSettings().model_dump()
