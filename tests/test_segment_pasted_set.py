"""Copy-paste onto backgrounds as a synthetic set: real lesions on lesion-free frames, reproducible, resumable,
and an experiment arm that mixes it like a generator's set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import read_image, read_mask
from lesionforge.data.manifest import read_manifest
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import load_experiment_config
from lesionforge.segment.config import CopyPasteConfig
from lesionforge.segment.pasted_set import write_pasted_set

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke.yaml"


def _split(demo_arrays) -> tuple[PairArrays, PairArrays]:
    d = demo_arrays
    lesion = d.masks.reshape(len(d.ids), -1).any(axis=1)
    arrays = PairArrays(d.images, d.masks, lesion.copy(), list(d.ids), [None] * len(d.ids))
    return arrays.select_ids([i for i, k in zip(d.ids, lesion, strict=True) if k][:8]), arrays.select_ids(
        [i for i, k in zip(d.ids, lesion, strict=True) if not k])


def test_pasted_pairs_are_real_lesions_on_backgrounds(demo_arrays, tmp_path):
    real, free = _split(demo_arrays)
    assert len(free) > 0
    samples = write_pasted_set(tmp_path / "set", 16, real, free, CopyPasteConfig(feather_sigma=1.0), seed=3)
    assert len(samples) == 16 and all(s.origin == "synthetic" for s in samples)
    donors = {s.provenance.source_id for s in samples}
    assert donors == set(real.ids)  # the lesions cycle over every labelled pair (2 each)
    for s in samples:
        image = read_image(tmp_path / "set" / s.image)
        mask = read_mask(tmp_path / "set" / s.masks[0])
        bg = free.images[free.ids.index(s.provenance.background_id)]
        assert mask.sum() > 0
        # pixels away from the pasted lesion and its feathered rim are the background's own, bit for bit
        far = ~ndimage.binary_dilation(mask > 0, iterations=5)  # 4 sigma: the blur kernel's radius
        assert np.array_equal(image[far], bg[far])
        assert (np.abs(image.astype(int) - bg.astype(int)).max(axis=-1)[mask > 0] > 0).mean() > 0.5


def test_same_seed_same_bytes_and_resume_continues(demo_arrays, tmp_path):
    real, free = _split(demo_arrays)
    whole = write_pasted_set(tmp_path / "a", 12, real, free, seed=1)
    write_pasted_set(tmp_path / "b", 5, real, free, seed=1)  # a run stopped after 5 samples ...
    resumed = write_pasted_set(tmp_path / "b", 12, real, free, seed=1)  # ... and resumed
    assert [s.id for s in resumed] == [s.id for s in whole]
    for s in whole:
        assert (tmp_path / "a" / s.image).read_bytes() == (tmp_path / "b" / s.image).read_bytes()
        assert (tmp_path / "a" / s.masks[0]).read_bytes() == (tmp_path / "b" / s.masks[0]).read_bytes()
    other = write_pasted_set(tmp_path / "c", 12, real, free, seed=2)
    assert any((tmp_path / "a" / s.image).read_bytes() != (tmp_path / "c" / t.image).read_bytes()
               for s, t in zip(whole, other, strict=True))


def test_no_backgrounds_or_no_lesions_is_a_clear_error(demo_arrays, tmp_path):
    real, free = _split(demo_arrays)
    with pytest.raises(ConfigError, match="backgrounds"):
        write_pasted_set(tmp_path / "x", 4, real, None)
    with pytest.raises(ConfigError, match="lesion"):
        write_pasted_set(tmp_path / "y", 4, free, free)


def _config(tmp_path: Path, spec: dict) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    cfg["generators"] = {"paste": spec}
    cfg["arms"] = [{"name": "baseline", "kind": "baseline"}, {"name": "copy-paste", "kind": "copy-paste"},
                   {"name": "copy-paste-backgrounds", "kind": "synthetic", "generator": "paste",
                    "mixing": {"mode": "ratio", "ratio": 1}, "filtered": False, "copy_paste": {"prob": 0.5}}]
    cfg["seeds"] = [0]
    cfg["output"], cfg["results_dir"] = str(tmp_path / "runs"), str(tmp_path / "results")
    path = tmp_path / "paste.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("extra,message", [({"sampler": "ddim"}, "sampler"), ({"overrides": {"bogus": 1}}, "bogus"),
                                           ({"use_unlabelled": True}, "use_unlabelled")])
def test_paste_method_refuses_generator_settings(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment_config(_config(tmp_path, {"method": "copy-paste-backgrounds", **extra}))


def test_copy_paste_backgrounds_arm_runs_in_a_sweep(tmp_path):
    import json

    from lesionforge.experiment.runner import run_experiment

    path = _config(tmp_path, {"method": "copy-paste-backgrounds", "n_per_real": 2, "overrides": {"scale": [0.8, 1.0]}})
    run_experiment(load_experiment_config(path), progress=False)
    res = json.loads(next((tmp_path / "results").glob("*.json")).read_text(encoding="utf-8"))
    arm = res["arms"]["copy-paste-backgrounds"]
    assert len(arm["mdice"]) == 1
    assert arm["method"] == "copy-paste-backgrounds" and arm["n_synthetic"] == 2 * 8
    # it is a copy-paste reference, not a diffusion arm compared with copy-paste
    assert set(res["paired_vs_copy_paste"]) <= {"copy-paste", "copy-paste-backgrounds"}
    assert all("copy-paste-backgrounds" not in v for v in res["paired_vs_copy_paste"].values())
    made = res["generators"]["paste"]
    assert made["generator_dir"] is None and made["copy_paste"]["scale"] == [0.8, 1.0]
    sets = list((tmp_path / "runs").rglob("synthetic/manifest.jsonl"))
    assert len(sets) == 1
    rows = read_manifest(sets[0], resolve=False)
    assert len(rows) == 2 * 8 and {r.provenance.generator for r in rows} == {"copy-paste"}


def test_a_lesion_too_large_for_the_field_of_view_is_shrunk_until_it_fits(tmp_path):
    """A polyp filling most of its frame fits no background whose field of view is a smaller disc at its own
    scale: it is pasted smaller (inside the field of view) instead of stopping the set; one that fits at no
    scale names the donor."""
    size = 32
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 11 ** 2  # the background's field of view (dark outside)
    bg = np.where(disc[..., None], 150, 0).astype(np.uint8).repeat(3, axis=-1)[None]
    big = np.zeros((1, size, size), np.uint8)
    big[0, 3:29, 3:29] = 1
    img = np.full((1, size, size, 3), 90, np.uint8)
    real = PairArrays(img, big, np.array([True]), ["big"], [None])
    free = PairArrays(bg, np.zeros((1, size, size), np.uint8), np.array([False]), ["bg"], [None])
    cfg = CopyPasteConfig(scale=(1.0, 1.0), fov_threshold=12, feather_sigma=0.0)
    (s,) = write_pasted_set(tmp_path / "set", 1, real, free, cfg, seed=0)
    mask = read_mask(tmp_path / "set" / s.masks[0])
    assert 0 < mask.sum() < big.sum() and not (mask.astype(bool) & ~disc).any()
    dark = PairArrays(np.zeros_like(bg), np.zeros((1, size, size), np.uint8), np.array([False]), ["dark"], [None])
    with pytest.raises(ConfigError, match="big.*even shrunk"):
        write_pasted_set(tmp_path / "none", 1, real, dark, cfg, seed=0)
