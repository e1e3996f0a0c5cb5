"""The experiment's filter stage: the pixel validator option, and re-filtering without re-drawing samples."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, read_manifest, write_manifest
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import FilterSettings, load_experiment_config
from lesionforge.experiment.keys import cache_key, settings_dump
from lesionforge.experiment.real_stages import LesionforgeStages
from lesionforge.experiment.runner import filter_key, run_experiment, synthetic_key

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def _cfg(tmp_path: Path, filter_: dict | None):
    cfg = load_experiment_config(CONFIGS / "smoke.yaml", {"output": str(tmp_path / "runs"),
                                                          "results_dir": str(tmp_path / "results")})
    spec = cfg.generators["inpaint"]
    f = None if filter_ is None else FilterSettings.model_validate(filter_)
    return cfg.model_copy(update={"generators": {"inpaint": spec.model_copy(update={"filter": f})}})


def test_pixel_filter_settings_refuse_autoencoder_options():
    with pytest.raises(ValueError, match="latent"):
        FilterSettings.model_validate({"validator": "pixel", "autoencoder_overrides": {"steps": 4}})


def test_filter_changes_are_not_part_of_the_synthesis_key(tmp_path):
    stages = LesionforgeStages()
    plain, pixel = _cfg(tmp_path, None), _cfg(tmp_path, {"validator": "pixel"})
    data = stages.load_data(plain)
    assert synthetic_key(plain, "inpaint", 8, data) == synthetic_key(pixel, "inpaint", 8, data)
    assert filter_key(plain, "inpaint") is None
    assert filter_key(pixel, "inpaint") != filter_key(_cfg(tmp_path, {"validator": "latent"}), "inpaint")


def test_keep_best_changes_the_filter_key_only_when_set(tmp_path):
    """An unset ``keep_best`` dumps as before (existing sweeps keep their filter keys and cached scores); a set
    one re-scores; a bad one fails at load."""
    pixel, best = _cfg(tmp_path, {"validator": "pixel"}), _cfg(tmp_path, {"validator": "pixel", "keep_best": 2})
    assert "keep_best" not in pixel.generators["inpaint"].filter.model_dump()
    assert best.generators["inpaint"].filter.model_dump()["keep_best"] == 2
    assert filter_key(pixel, "inpaint") != filter_key(best, "inpaint")
    with pytest.raises(ValueError, match="keep_best"):
        FilterSettings.model_validate({"validator": "pixel", "keep_best": 0})
    # keep_bands: omitted while unset (same keys as before), keys its own filtered file, needs keep_best
    banded = _cfg(tmp_path, {"validator": "pixel", "keep_best": 2, "keep_bands": True})
    assert "keep_bands" not in best.generators["inpaint"].filter.model_dump()
    assert filter_key(banded, "inpaint") != filter_key(best, "inpaint")
    assert (cache_key(settings_dump(banded.generators["inpaint"].filter))
            != cache_key(settings_dump(best.generators["inpaint"].filter)))
    with pytest.raises(ValueError, match="keep_bands balances keep_best"):
        FilterSettings.model_validate({"validator": "pixel", "keep_bands": True})


@pytest.mark.parametrize("field, bad", [
    ("repaint_share", [{"method": "mask-conditioned", "repaint_share": 0.5},
                       {"method": "inpaint-normal", "mask_source": "size", "repaint_share": 0.5},
                       {"method": "inpaint-normal", "repaint_share": 1.5}]),
    ("paste_strength", [{"method": "mask-conditioned", "paste_strength": 0.5},
                        {"method": "inpaint-normal", "paste_strength": 0.5, "repaint_share": 0.5},
                        {"method": "inpaint-normal", "paste_strength": 0.0},
                        {"method": "inpaint-normal", "paste_strength": 1.5}]),
])
def test_what_a_set_is_painted_onto_keys_a_new_set_of_the_same_generator(tmp_path, field, bad):
    """``repaint_share`` (repaint the labelled images) and ``paste_strength`` (re-draw pasted real lesions) are
    omitted from dumps while unset (existing sets keep their keys); set, each keys a new synthetic set but the same
    generator (it trains as before), and the synthesis gets it; each is refused where it cannot apply."""
    from lesionforge.experiment.config import GeneratorSpec, resolved_generator_config

    plain = _cfg(tmp_path, None)
    spec = plain.generators["inpaint"]
    other = plain.model_copy(update={"generators": {"inpaint": spec.model_copy(update={field: 0.5})}})
    assert field not in spec.model_dump()
    data = LesionforgeStages().load_data(plain)
    assert synthetic_key(plain, "inpaint", 8, data) != synthetic_key(other, "inpaint", 8, data)
    assert resolved_generator_config(plain, spec) == resolved_generator_config(other, other.generators["inpaint"])
    assert LesionforgeStages.synthesis_args(other, other.generators["inpaint"], 8, data)[field] == 0.5
    assert LesionforgeStages.synthesis_args(plain, spec, 8, data)[field] == 0.0
    for settings in bad:
        with pytest.raises(ValueError, match=field):
            GeneratorSpec.model_validate(settings)


def test_jitter_settings_key_a_new_set_and_reach_the_mask_source(tmp_path):
    """``jitter`` (how real masks are deformed) is omitted while unset (existing sets keep their keys); set, it
    keys a new set of the same generator, and the synthesis's mask source deforms with it: no shift, rotation,
    scaling or warp gives back the real lesions where they were. Refused where no real mask is deformed."""
    from lesionforge.experiment.config import GeneratorSpec, resolved_generator_config

    plain = _cfg(tmp_path, None)
    spec = plain.generators["inpaint"]
    still = spec.model_validate({**spec.model_dump(), "jitter": {"max_shift": 0, "max_rotate": 0, "scale": [1, 1],
                                                                 "elastic": False}})
    other = plain.model_copy(update={"generators": {"inpaint": still}})
    assert "jitter" not in spec.model_dump()
    data = LesionforgeStages().load_data(plain)
    assert synthetic_key(plain, "inpaint", 8, data) != synthetic_key(other, "inpaint", 8, data)
    assert resolved_generator_config(plain, spec) == resolved_generator_config(other, still)
    real = {i: m for i, m in zip(data.labelled(8).ids, data.labelled(8).masks, strict=True)}

    def moved(cfg, s) -> list[float]:  # how far each drawn lesion's centre is from its source lesion's
        source = LesionforgeStages.synthesis_args(cfg, s, 8, data)["masks_from"]
        out = []
        for mask, info in source(np.random.default_rng(0), 12):
            a, b = np.argwhere(mask > 0).mean(0), np.argwhere(real[info["source_id"]] > 0).mean(0)
            out.append(float(np.abs(a - b).max()))
        return out

    assert max(moved(other, still)) <= 0.5 and max(moved(plain, spec)) > 1.0
    # even draws: left out of the dump while unset (the sets above keep their keys), set they key another set and
    # reach the synthesis's source; not a jitter_mask option
    assert "even" not in still.model_dump()["jitter"] and "even" not in still.jitter.kwargs()
    even = still.model_validate({**still.model_dump(), "jitter": {**still.model_dump()["jitter"], "even": True}})
    evened = plain.model_copy(update={"generators": {"inpaint": even}})
    assert even.model_dump()["jitter"]["even"] is True and "even" not in even.jitter.kwargs()
    assert synthetic_key(evened, "inpaint", 8, data) != synthetic_key(other, "inpaint", 8, data)
    assert LesionforgeStages.synthesis_args(evened, even, 8, data)["masks_from"].even
    assert not LesionforgeStages.synthesis_args(other, still, 8, data)["masks_from"].even
    for settings in [{"method": "inpaint-normal", "mask_source": "size", "jitter": {"max_shift": 0}},
                     {"method": "edge-guided", "jitter": {"max_shift": 0}},
                     {"method": "inpaint-normal", "paste_strength": 0.5, "jitter": {"max_shift": 0}},
                     {"method": "inpaint-normal", "jitter": {"scale": [1.2, 0.8]}},
                     {"method": "inpaint-normal", "jitter": {"max_shift": 0.7}}]:
        with pytest.raises(ValueError, match="jitter"):
            GeneratorSpec.model_validate(settings)


def test_size_controlled_masks_with_small_ones_boosted_are_kept_by_share_within_their_drawn_band(tmp_path,
                                                                                               monkeypatch):
    """``small_boost`` (size-controlled masks, session 31) is omitted while unset, keys a new set of the same
    generator and reaches the synthesis's size sampler; each drawn mask names the band of its target area, so
    ``filter.keep_share`` (refused beside keep_best) ranks sourceless draws within their band and keeps the
    drawn band shares; the runner passes the share to the filter (its own filter key)."""
    from lesionforge.data.bands import band_of
    from lesionforge.experiment.config import GeneratorSpec, resolved_generator_config
    from lesionforge.validate.filter import _draw_group, source_quotas

    plain = _cfg(tmp_path, None)
    spec = plain.generators["inpaint"]
    sized = spec.model_validate({**spec.model_dump(), "mask_source": "size"})
    boosted = spec.model_validate({**spec.model_dump(), "mask_source": "size", "small_boost": 3.0})
    cfg_of = {k: plain.model_copy(update={"generators": {"inpaint": s}}) for k, s in (("sized", sized),
                                                                                    ("boosted", boosted))}
    assert "small_boost" not in sized.model_dump() and boosted.model_dump()["small_boost"] == 3.0
    data = LesionforgeStages().load_data(plain)
    assert synthetic_key(cfg_of["sized"], "inpaint", 8, data) != synthetic_key(cfg_of["boosted"], "inpaint", 8, data)
    assert resolved_generator_config(plain, sized) == resolved_generator_config(plain, boosted)
    probs = {k: LesionforgeStages.synthesis_args(cfg_of[k], cfg_of[k].generators["inpaint"], 8, data)[
        "masks_from"].sampler.band_probs for k in cfg_of}
    assert probs["boosted"][:2].sum() > probs["sized"][:2].sum()  # the small and medium bands drawn more often
    draws = LesionforgeStages.synthesis_args(cfg_of["boosted"], boosted, 8, data)["masks_from"](
        np.random.default_rng(0), 40)
    assert all(info["source_id"] is None and info["band_drawn"] == band_of(info["target_area_frac"])
               for _, info in draws)
    # the filter's grouping reads a sample's provenance only (the synthesis stores the mask info under mask_info)
    groups = [_draw_group(SimpleNamespace(provenance=Provenance(generator="test", source_id=None, mask_info=info)))
              for _, info in draws]
    assert set(groups) == {f"band:{info['band_drawn']}" for _, info in draws}
    quotas = source_quotas(groups, 0.25)
    assert sum(quotas.values()) == 10 and all(abs(q - groups.count(g) / 4) < 1 for g, q in quotas.items())
    share = _cfg(tmp_path, {"validator": "pixel", "threshold": 0.0, "keep_share": 0.25})
    assert "keep_share" not in _cfg(tmp_path, {"validator": "pixel"}).generators["inpaint"].filter.model_dump()
    assert filter_key(share, "inpaint") != filter_key(_cfg(tmp_path, {"validator": "pixel", "threshold": 0.0}),
                                                      "inpaint")
    seen: dict = {}

    def fake_filter(*args, **kwargs):  # what the runner's filter stage hands the filter
        seen.update(kwargs)
        return SimpleNamespace(to_dict=lambda: {"rejected_ids": []})

    import lesionforge.validate.filter as filter_module

    monkeypatch.setattr(filter_module, "filter_manifest", fake_filter)
    monkeypatch.setattr(LesionforgeStages, "validator_for", staticmethod(lambda *a: tmp_path / "validator"))
    LesionforgeStages._filter(share, share.generators["inpaint"], 8, data, tmp_path / "m.jsonl", tmp_path / "f")
    assert seen["keep_share"] == 0.25 and seen["keep_best"] is None
    with pytest.raises(ValueError, match="keep_best or keep_share"):
        FilterSettings.model_validate({"validator": "pixel", "keep_best": 2, "keep_share": 0.25})
    with pytest.raises(ValueError, match="small_boost"):
        GeneratorSpec.model_validate({"method": "mask-conditioned", "small_boost": 2.0})


def test_a_set_drawn_by_a_differently_trained_generator_is_not_reused(tmp_path, monkeypatch):
    """Code defaults of the generator (not only its preset file) are part of the synthesis key: after an
    upgrade that changes how the generator trains, the runner draws a new set instead of reusing the old."""
    import lesionforge.experiment.config as experiment_config
    from lesionforge.experiment.config import resolved_generator_config

    cfg = _cfg(tmp_path, None)
    data = LesionforgeStages().load_data(cfg)
    before = synthetic_key(cfg, "inpaint", 8, data)
    gcfg = resolved_generator_config(cfg, cfg.generators["inpaint"])
    changed = gcfg.model_copy(update={"prompt_fills_as_known": not gcfg.prompt_fills_as_known})
    # a changed code default (the key reads the generator's effective config through config.set_recipe)
    monkeypatch.setattr(experiment_config, "resolved_generator_config", lambda c, s: changed)
    assert synthetic_key(cfg, "inpaint", 8, data) != before


@pytest.mark.slow
def test_pixel_filter_keeps_true_pairs_and_rejects_shifted_ones(tmp_path):
    """The real filter stage with ``validator: pixel`` on demo pairs: their own masks (true) vs masks rolled
    half an image away (wrong); the report says which validator ran."""
    cfg = _cfg(tmp_path, {"validator": "pixel", "threshold": "auto",
                          "validator_overrides": {"features": [8, 8, 16, 32, 64, 8], "steps": 150,
                                                  "batch_size": 8, "lr": 5e-3, "checkpoint_every": 150}})
    stages = LesionforgeStages()
    data = stages.load_data(cfg)
    labelled = data.labelled(8)
    rows = []
    for i in range(len(labelled)):
        for wrong in (False, True):
            mask = np.roll(labelled.masks[i], 16, axis=(0, 1)) if wrong else labelled.masks[i]
            img, msk = tmp_path / f"s{i}-{wrong}.png", tmp_path / f"s{i}-{wrong}_mask.png"
            write_image(img, labelled.images[i])
            write_mask(msk, mask)
            rows.append(Sample(id=f"s{i}-{'wrong' if wrong else 'true'}", image=str(img), masks=[str(msk)],
                               origin="synthetic", provenance=Provenance(source_id=labelled.ids[i])))
    write_manifest(tmp_path / "manifest.jsonl", rows)
    report = stages._filter(cfg, cfg.generators["inpaint"], 8, data, tmp_path / "manifest.jsonl",
                            tmp_path / "filtered.jsonl")
    assert report["validator_kind"] == "pixel" and report["n_scored"] == 16
    assert any(p.name.startswith("pixel-") for p in (cfg.output / "cache" / "validators").iterdir())
    kept = {s.id: s.provenance.validation["kept"] for s in read_manifest(tmp_path / "filtered.jsonl")}
    true_kept = sum(kept[k] for k in kept if k.endswith("true"))
    wrong_kept = sum(kept[k] for k in kept if k.endswith("wrong"))
    assert true_kept > wrong_kept
    # the same validator, pixel by pixel (mixing.synthetic_pixel_filter, FreeMask's rule): a mask moved off its
    # lesion has far more pixels left out of the segmenter's loss than the lesion's own mask; the run records it
    from lesionforge.data.arrays import load_arrays
    from lesionforge.experiment.real_stages import PIXEL_FILTER_FILE, _left_out

    scored = read_manifest(tmp_path / "filtered.jsonl")
    arrays = load_arrays(scored, cfg.resolution, cfg.dataset.channels)
    left = _left_out(scored, arrays, data.val, 1.25, tmp_path / "run")
    wrong = np.array([s.id.endswith("wrong") for s in scored])
    assert left[wrong].mean() > 2 * left[~wrong].mean()
    record = json.loads((tmp_path / "run" / PIXEL_FILTER_FILE).read_text(encoding="utf-8"))
    assert record["pairs_scored"] == 16 and record["left_out_share"] == pytest.approx(left.mean())
    # background pixels only: a subset of the above, none of them inside a mask
    bg = _left_out(scored, arrays, data.val, 1.25, tmp_path / "run-bg", only="background")
    assert not (bg & (arrays.masks > 0)).any() and not (bg & ~left).any() and bg[wrong].any()


@pytest.mark.slow
def test_adding_a_filter_rescores_the_same_samples(tmp_path, monkeypatch):
    """A sweep made unfiltered, then given a filter and a filtered arm: the synthetic set is re-prepared in the
    same folder (the samples resume there, none is drawn again, with the generator that drew them, not a
    retrained one) and its marker records the new filter."""
    calls: list[Path] = []
    real = LesionforgeStages.prepare_synthetic

    def counting(self, cfg, name, spec, n, data, work_dir):
        calls.append(work_dir)
        return real(self, cfg, name, spec, n, data, work_dir)

    monkeypatch.setattr(LesionforgeStages, "prepare_synthetic", counting)
    plain = _cfg(tmp_path, None)
    syn = plain.arm("synthetic").model_copy(update={"filtered": False})
    plain = plain.model_copy(update={"seeds": [0], "arms": [plain.arm("baseline"), syn]})
    run_experiment(plain, LesionforgeStages(), progress=False)
    assert len(calls) == 1
    images = sorted((calls[0] / "synthetic" / "images").iterdir())
    stamps = [p.stat().st_mtime_ns for p in images]
    first = json.loads((calls[0] / "synthetic.json").read_text(encoding="utf-8"))["info"]["timings"]
    assert first["generator_train_s"] is not None

    def no_training(*args, **kwargs):
        raise AssertionError("a re-filtered set must keep the generator that drew it")

    monkeypatch.setattr(LesionforgeStages, "_generator", staticmethod(no_training))
    filtered_arm = syn.model_copy(update={"name": "synthetic-filtered", "filtered": True})
    latent = plain.model_copy(update={"generators": _cfg(tmp_path, {"threshold": 0.0, **_tiny_latent()}).generators,
                                      "arms": [*plain.arms, filtered_arm],
                                      "results_dir": tmp_path / "results-filtered"})
    run_experiment(latent, LesionforgeStages(), progress=False)
    assert calls[1] == calls[0] and len(calls) == 2
    assert [p.stat().st_mtime_ns for p in images] == stamps  # the samples were not drawn again
    marker = json.loads((calls[0] / "synthetic.json").read_text(encoding="utf-8"))
    assert marker["info"]["filter_key"] == filter_key(latent, "inpaint") and marker["filtered_manifest"]
    # named by its filter's settings: another filter of the same samples writes its own file, not over this one
    own = cache_key(settings_dump(latent.generators["inpaint"].filter))
    assert Path(marker["filtered_manifest"]).name == f"filtered-{own}.jsonl"
    timings = marker["info"]["timings"]  # the drawing's timings are kept, the re-filtering's added
    assert {k: timings[k] for k in first} == first and timings["refilter_s"] > 0
    res = json.loads(next((tmp_path / "results-filtered").glob("*.json")).read_text(encoding="utf-8"))
    assert res["arms"]["synthetic-filtered"]["filtered"] and not res["arms"]["synthetic"]["filtered"]


def _tiny_latent() -> dict:
    smoke = load_experiment_config(CONFIGS / "smoke.yaml").generators["inpaint"].filter
    return {"autoencoder_overrides": smoke.autoencoder_overrides, "validator_overrides": smoke.validator_overrides}


def test_unknown_filter_validator_is_refused(tmp_path):
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8").replace("threshold: 0.0", "validator: pixels")
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="validator"):
        load_experiment_config(tmp_path / "bad.yaml")


def test_a_resumed_set_reports_no_synthesis_speed(tmp_path):
    """A set's images/s counts only what this call drew: a finished set found again has no speed (None), not
    its whole size divided by the seconds spent checking it."""
    from lesionforge.experiment.config import GeneratorSpec

    cfg = _cfg(tmp_path, None)
    data = LesionforgeStages().load_data(cfg)
    spec = GeneratorSpec.model_validate({"method": "copy-paste-backgrounds", "n_per_real": 1})
    first = LesionforgeStages._pasted(spec, 8, data, tmp_path / "set")
    again = LesionforgeStages._pasted(spec, 8, data, tmp_path / "set")
    assert first["n_generated"] == again["n_generated"] == 8
    assert first["timings"]["synthesis_images_per_s"] > 0 and again["timings"]["synthesis_images_per_s"] is None


def test_guidance_settings_key_a_new_set_and_reach_the_sampling(tmp_path):
    """``mask_guidance`` and ``guidance_region`` are omitted while unset (existing sets keep their keys); set, they
    key a new set of the same generator and reach the synthesis's sampling settings; a joining entry refuses them."""
    from lesionforge.experiment.config import GeneratorSpec, resolved_generator_config

    plain = _cfg(tmp_path, None)
    spec = plain.generators["inpaint"]
    guided = spec.model_copy(update={"guidance_scale": 2.0, "mask_guidance": True, "guidance_region": 4})
    other = plain.model_copy(update={"generators": {"inpaint": guided}})
    assert "mask_guidance" not in spec.model_dump() and "guidance_region" not in spec.model_dump()
    data = LesionforgeStages().load_data(plain)
    assert synthetic_key(plain, "inpaint", 8, data) != synthetic_key(other, "inpaint", 8, data)
    assert resolved_generator_config(plain, spec) == resolved_generator_config(other, guided)
    sampling = LesionforgeStages.synthesis_args(other, guided, 8, data)["sampling"]
    assert (sampling.mask_guidance, sampling.guidance_region) == (True, 4)
    assert LesionforgeStages.synthesis_args(plain, spec, 8, data)["sampling"].guidance_region is None
    with pytest.raises(ValueError, match="mask_guidance"):
        GeneratorSpec.model_validate({"method": "union", "of": ["a", "b"], "mask_guidance": True})
    with pytest.raises(ValueError, match="guidance_region"):
        GeneratorSpec.model_validate({"method": "inpaint-normal", "guidance_region": -1})
