"""The usefulness screen: rank agreement statistics, and the whole screen end to end on the demo data."""

from __future__ import annotations

import fcntl
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_benchmark
from scipy.stats import spearmanr

from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, read_manifest, write_manifest
from lesionforge.experiment.agreement import rank_agreement
from lesionforge.experiment.stages import SyntheticSet

ROOT = Path(__file__).resolve().parents[1]


def _screen_scores(means: dict[str, float], n: int = 40, noise: float = 0.01, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = rng.random(n)  # image difficulty, shared by every arm (paired)
    return {a: {f"img{i}": float(base[i] + m + noise * rng.standard_normal()) for i in range(n)}
            for a, m in means.items()}


def test_rank_agreement_perfect_reversed_and_noisy():
    head = {"a": 0.60, "b": 0.65, "c": 0.70, "d": 0.72}
    same = rank_agreement(_screen_scores({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}), head)
    assert same["spearman"] == pytest.approx(1.0) and same["arms"] == ["a", "b", "c", "d"]
    assert same["permutation_p"] == pytest.approx(1 / 24) and same["permutations"] == 24
    assert same["bootstrap"]["ci95"][0] == pytest.approx(1.0) and same["bootstrap"]["p_rho_le_0"] == 0.0
    rev = rank_agreement(_screen_scores({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}), head)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["permutation_p"] == 1.0
    # arms the screen cannot tell apart: the bootstrap interval spans orderings far from the point estimate
    noisy = rank_agreement(_screen_scores({"a": 0.0, "b": 0.001, "c": 0.002, "d": 0.003}, noise=0.2), head)
    lo, hi = noisy["bootstrap"]["ci95"]
    assert hi - lo > 1.0
    with pytest.raises(ValueError, match="at least 3"):
        rank_agreement(_screen_scores({"a": 0.1, "b": 0.2}), head)


def test_the_rank_correlations_of_the_bootstrap_and_permutations_are_spearmans():
    """The bootstrap and the permutation test compute every rho at once (``_rho_rows``): each is scipy's Spearman
    rho, ties ranked by their average; a constant ranking gives NaN, as a rank correlation is undefined there."""
    from lesionforge.experiment.agreement import _rho_rows

    rng = np.random.default_rng(3)
    rows = np.round(rng.random((50, 8)), 1)  # rounded: many ties
    head = np.array([0.1, 0.3, 0.3, 0.2, 0.9, 0.5, 0.5, 0.4])
    assert np.allclose(_rho_rows(rows, head), [spearmanr(r, head).statistic for r in rows])
    assert np.isnan(_rho_rows(np.ones((1, 8)), head)).all() and np.isnan(_rho_rows(rows[:2], np.ones(8))).all()


def test_every_screen_variant_builds_a_valid_config_and_its_rows():
    """Each lever becomes the generator entry, filter and arms it names (validated before any training): a
    sampler lever changes only the synthesis, keep_best turns the headline's filter on with K, a mixing lever
    has no synthetic-only row of its own."""
    s = load_benchmark("screen")
    config = ROOT / "benchmarks" / "configs" / "smoke.yaml"
    for name in s.VARIANTS:
        cfg = s.screen_config(config, 8, name)
        assert [a.name for a in s.variant_arms(name)][0] == "synthetic"
        assert cfg.generators["inpaint"].n_per_real == s.VARIANTS[name].synth.get("n_per_real", 2)
    spec = s.screen_config(config, 8, "pretrain+sde-dpm++25").generators["inpaint"]
    assert (spec.sampler, spec.sampling_steps, spec.overrides["pretrain_steps"]) == ("sde-dpm++", 25, 1000)
    assert s.screen_config(config, 8, "pretrain").generators["inpaint"].filter is None
    best = s.screen_config(config, 8, "pretrain+8per-best2").generators["inpaint"]
    assert best.filter.keep_best == 2 and best.n_per_real == 8
    assert all(a.filtered for a in s.variant_arms("pretrain+8per-best2"))
    top = s.screen_config(config, 8, "pretrain+8per-top2").generators["inpaint"].filter
    assert (top.keep_best, top.threshold) == (2, 0.0)
    ratio = s.variant_arms("pretrain+ratio0.25")
    assert [a.name for a in ratio] == ["synthetic"] and ratio[0].mixing.ratio == 0.25 and not ratio[0].filtered
    assert [a.name for a in s.variant_arms("today")] == ["synthetic", "synthetic-only"]
    # the headline's own variant also gets the synthetic + copy-paste row, on the kept pairs like its other rows
    agree = s.variant_arms(s.HEADLINE_VARIANT)
    assert [a.name for a in agree] == ["synthetic", "synthetic+copy-paste", "synthetic-only"]
    assert all(a.filtered for a in agree) and agree[1].copy_paste.prob == 0.5
    (until,) = s.variant_arms("pretrain+until0.75")
    assert until.mixing.synthetic_until == 0.75 and until.mixing.ratio == 1
    (half,) = s.variant_arms("pretrain+8per-top2+until0.5")  # the headline's kept pairs, the first half of the steps
    assert half.filtered and half.mixing.synthetic_until == 0.5
    assert (s.screen_config(config, 8, "pretrain+8per-top2+until0.5").generators["inpaint"]
            == s.screen_config(config, 8, "pretrain+8per-top2").generators["inpaint"])  # the same set, not re-drawn
    (cp,) = s.variant_arms("pretrain+copy-paste")
    cfg = s.screen_config(config, 8, "pretrain+copy-paste")
    assert s.segment_config_for(cfg, cp, 0)["copy_paste"]["enabled"]
    assert not s.segment_config_for(cfg, s.variant_arms("pretrain")[0], 0)["copy_paste"]["enabled"]
    for kind, method in (("mask2image", "mask-conditioned"), ("edge-text", "edge-guided")):
        other = s.screen_config(s.headline_config("kvasir-seg"), 32, f"pretrain+{kind}-8per-top2").generators["inpaint"]
        assert other.method == method and other.config.name == f"generator-{kind}-kvasir-cpu.yaml"
        assert other.config.is_file() and other.filter.keep_best == 2
    eta = s.screen_config(config, 8, "pretrain+ddim25-eta1").generators["inpaint"]
    assert eta.eta == 1.0 and "eta" not in s.screen_config(config, 8, "today").generators["inpaint"].model_dump()
    bands = s.screen_config(config, 8, "pretrain+16per-top2-bands").generators["inpaint"]
    assert (bands.n_per_real, bands.filter.keep_best, bands.filter.keep_bands) == (16, 2, True)
    # the union row (pairs joined to copy-paste onto the backgrounds) takes a variant's mixing change too
    head = s.headline_config("kvasir-seg")
    paste = s.paste_rows(head, s.screen_config(head, 32, "today"))
    plain = s.union_config(s.screen_config(head, 32, "pretrain+8per-top2"), paste, "pretrain+8per-top2").arms[0]
    half = s.union_config(s.screen_config(head, 32, "pretrain+8per-top2+ratio0.5"), paste,
                          "pretrain+8per-top2+ratio0.5").arms[0]
    assert (plain.mixing.ratio, half.mixing.ratio) == (1, 0.5) and plain.name == half.name == s.UNION_ARM.name
    # the border lever changes the loss of the same pairs, in the joined row as well
    (border,) = s.variant_arms("pretrain+8per-top2+border1")
    assert border.filtered and border.mixing.synthetic_border_ignore == 1
    joined = s.union_config(s.screen_config(head, 32, "pretrain+8per-top2+border1"), paste,
                            "pretrain+8per-top2+border1").arms[0]
    assert joined.mixing.synthetic_border_ignore == 1 and s.segment_config_for(
        s.screen_config(head, 32, "pretrain+8per-top2+border1"), border, 0)["mixing"]["synthetic_border_ignore"] == 1
    # so does FreeMask's pixel filter (session 32), which the stage computes from the set's validator
    (pixel,) = s.variant_arms("pretrain+8per-top2+pixel1.25")
    assert pixel.filtered and pixel.mixing.synthetic_pixel_filter == 1.25
    joined = s.union_config(s.screen_config(head, 32, "pretrain+8per-top2+pixel1.25"), paste,
                            "pretrain+8per-top2+pixel1.25").arms[0]
    assert joined.mixing.synthetic_pixel_filter == 1.25
    assert half.copy_paste == plain.copy_paste and half.copy_paste.prob == 0.5
    # the synthetic-donor lever (session 36) changes copy-paste's donors in its row and in the joined row alike,
    # whose other copy-paste keys stay the pasted arm's; the headline's joined row keeps real donors only
    (donors,) = s.variant_arms("pretrain+8per-top2+donors0.5")
    dcfg = s.screen_config(head, 32, "pretrain+8per-top2+donors0.5")
    assert donors.filtered and s.segment_config_for(dcfg, donors, 0)["copy_paste"] == {
        **s.segment_config_for(dcfg, donors, 0)["copy_paste"], "enabled": True, "prob": 0.5, "synthetic_donors": 0.5}
    joined = s.union_config(dcfg, paste, "pretrain+8per-top2+donors0.5").arms[0]
    assert (joined.copy_paste.prob, joined.copy_paste.synthetic_donors) == (0.5, 0.5)
    assert plain.copy_paste.synthetic_donors is None
    assert dcfg.generators == s.screen_config(head, 32, "pretrain+8per-top2").generators  # the same set


def test_the_gate_promotes_only_a_variant_that_beats_every_reference_on_two_seeds_and_over_images(tmp_path):
    """Session 18's lesson made a rule: a row must beat the strongest real-data row and the headline recipe's same
    row with the same seeds (at least 2), on every seed, and with a paired interval over val images above 0."""
    s = load_benchmark("screen")
    rng = np.random.default_rng(0)
    base = rng.random(60)  # image difficulty, shared by every row (paired)

    def row(gain: float, seeds=(0, 1), per_seed=None, noise: float = 0.005) -> dict:
        img = {f"v{i}": float(base[i] + gain + noise * rng.standard_normal()) for i in range(60)}
        mean = float(np.mean(list(img.values())))
        return {"val_mdice": mean, "seeds": list(seeds), "per_image": img, "seconds": 1.0,
                "val_mdice_by_seed": list(per_seed) if per_seed else [mean] * len(seeds)}

    out = {"real": {"baseline": row(0.0), "copy-paste": row(0.02), "copy-paste+backgrounds": row(0.04)},
           "variants": {
               s.HEADLINE_VARIANT: {"arms": {"synthetic": row(0.03)}},
               "clear": {"arms": {"synthetic": row(0.08)}},
               # the same two seeds, run in the other order (a second process given --seed 1 --seed 0)
               "clear-seeds-reversed": {"arms": {"synthetic": row(0.08, seeds=(1, 0))}},
               "one-seed": {"arms": {"synthetic": row(0.08, seeds=(0,))}},
               "noisy": {"arms": {"synthetic": row(0.045, noise=0.3)}},
               "one-seed-lost": {"arms": {"synthetic": row(0.08, per_seed=(0.9, 0.3))}},
               # its pairs alone lose, but joined to the pasted ones they clear the bar
               "joined": {"arms": {"synthetic": row(0.0), s.UNION_ARM.name: row(0.09)}}}}
    g = s.gate(out)
    assert {v: e["promote"] for v, e in g["variants"].items()} == {
        s.HEADLINE_VARIANT: False, "clear": True, "clear-seeds-reversed": True, "one-seed": False, "noisy": False,
        "one-seed-lost": False, "joined": True}
    refs = g["variants"]["clear"]["rows"]["synthetic"]["versus"]
    assert set(refs) == {"copy-paste+backgrounds", f"{s.HEADLINE_VARIANT}: synthetic"}  # strongest real + today's
    assert refs["copy-paste+backgrounds"]["mean"] == pytest.approx(0.04, abs=0.01)
    assert "screen the same seeds" in g["variants"]["one-seed"]["why"]
    assert "reaches 0" in g["variants"]["noisy"]["why"]
    assert "every seed" in g["variants"]["one-seed-lost"]["why"]
    # the headline's own variant is compared with the cheap rows only, and loses to copy-paste onto backgrounds
    assert set(g["variants"][s.HEADLINE_VARIANT]["rows"]["synthetic"]["versus"]) == {"copy-paste+backgrounds"}
    # where the baseline beats both cheap rows (BUSI), it is the row to beat
    busi = s.gate({**out, "real": {**out["real"], "baseline": row(0.10)}})
    assert set(busi["variants"]["clear"]["rows"]["synthetic"]["versus"]) == {"baseline",
                                                                             f"{s.HEADLINE_VARIANT}: synthetic"}
    assert not any(e["promote"] for e in busi["variants"].values())
    path = tmp_path / "screen.md"
    s.write_report({**out, "dataset": "d", "n_labelled": 8, "resolution": 64, "machine": "m", "command": "c",
                    "segment": {"steps": 400, "seeds": [1]}, "gate": g}, path)
    text = path.read_text(encoding="utf-8")
    assert "Promoted: clear, clear-seeds-reversed, joined." in text
    # the rows' seeds, not only the last command's (a run of --seed 1 adds to rows of seed 0)
    assert "rows of seeds [0, 1]," in text and "Last command (seeds [1]): `c`" in text
    assert "| one-seed | synthetic | copy-paste+backgrounds |" in text


def test_the_gate_of_volume_rows_shows_the_difference_at_structure_ends_and_middle(tmp_path):
    s = load_benchmark("screen")
    ids = [f"c{c}/2_{k:04d}" for c in range(6) for k in range(8)]
    ends = {i for i in ids if int(i[-4:]) in (0, 1, 6, 7)}

    def row(end: float, middle: float) -> dict:
        img = {i: 0.6 + (end if i in ends else middle) for i in ids}
        mean = float(np.mean(list(img.values())))
        return {"val_mdice": mean, "seeds": [0, 1], "per_image": img, "seconds": 1.0, "val_mdice_by_seed": [mean] * 2}

    out = {"real": {"baseline": row(0.0, 0.0)}, "variants": {"v": {"arms": {"synthetic": row(-0.1, 0.05)}}}}
    x = s.gate(out)["variants"]["v"]["rows"]["synthetic"]["versus"]["baseline"]
    assert x["unit"] == "val cases"  # the interval resamples the 6 val volumes, each with its slices
    assert x["by_position"]["structure-ends"]["mean"] == pytest.approx(-0.1)
    assert x["by_position"]["structure-middle"]["mean"] == pytest.approx(0.05)
    path = tmp_path / "screen.md"
    s.write_report({**out, "dataset": "d", "n_labelled": 4, "resolution": 64, "machine": "m", "command": "c",
                    "segment": {"steps": 400, "seeds": [0, 1]}, "gate": s.gate(out)}, path)
    assert "| -0.100 [-0.100, -0.100] / +0.050 [+0.050, +0.050] |" in path.read_text(encoding="utf-8")


def test_a_headline_arm_scored_by_a_variants_row_draws_with_that_variants_recipe():
    """The rank agreement scores BUSI's ``synthetic-mask2image`` arm by the row of the screen variant it came from:
    the headline's generator entry must be that variant's recipe (kind, budget, draws, sampler, filter) and its arm
    that row's mixing, else the agreement would compare two different arms. Every such arm names a known variant."""
    from lesionforge.experiment.config import load_experiment_config

    s = load_benchmark("screen")
    assert all(v in s.VARIANTS for v, _ in s.HEADLINE_ROWS_OF_VARIANTS.values())
    head = s.headline_config("busi")
    full = load_experiment_config(head)
    for name in ("synthetic-mask2image", "synthetic-mask2image-guided"):  # the latter: mask guidance (session 35)
        variant, row = s.HEADLINE_ROWS_OF_VARIANTS[name]
        arm = next(a for a in full.arms if a.name == name)
        screened = s.screen_config(head, 64, variant)
        drawn = s.variant_generator(screened)
        assert s.recipe_of(full.generators[arm.generator].model_dump(mode="json")) == s.recipe_of(
            screened.generators[drawn].model_dump(mode="json"))
        (main, *_) = s.variant_arms(variant, generator=drawn)
        assert main.name == row and (arm.mixing, arm.filtered, arm.copy_paste) == (main.mixing, main.filtered,
                                                                                 main.copy_paste)
    # the headline's own synthetic arm (the one the gate holds up) is still the inpainting recipe
    assert s.headline_arm(full).name == "synthetic" and s.held_variant(head) == s.HEADLINE_VARIANT


def test_the_mri_headline_is_screened_with_its_own_generator_entry():
    """The MRI headline's synthetic arm (``synthetic-in-place``) draws with the entry ``mask2image``: the screen
    changes that entry and its rows name it; the headline holds the variant the screen promoted (masks jittered in
    place, the pairs in the first half of the steps), and the MRI levers of docs/volumes.md are still the same
    changes to the fixed BASE (their sets stay the screen's): the headline's jitter does not leak into them."""
    from lesionforge.experiment.config import load_experiment_config

    s = load_benchmark("screen")
    head = s.headline_config("msd-hippocampus")
    full_cfg = load_experiment_config(head)
    assert s.headline_arm(full_cfg).name == "synthetic-in-place" and s.headline_generator(full_cfg) == "mask2image"
    cfg = s.screen_config(head, 4, s.HEADLINE_VARIANT)
    assert list(cfg.generators) == ["mask2image"] == [s.variant_generator(cfg)]
    assert [a.name for a in cfg.arms] == ["baseline", "copy-paste", "synthetic-in-place"]
    assert {a.generator for a in s.variant_arms(s.HEADLINE_VARIANT, generator="mask2image")} == {"mask2image"}
    full = full_cfg.generators["mask2image"].model_dump(mode="json")
    # the headline is the promoted variant: its generator entry's recipe, and its arm's mixing and filter
    promoted = "pretrain+8per-top2+in-place+until0.5"
    assert s.HEADLINE_ROWS_OF_VARIANTS["synthetic-in-place"] == (promoted, "synthetic")
    # so the screen's default for the rows the gate and the rank agreement hold up is the promoted variant here,
    # and still the first-pass headline variant where the headline's synthetic arm is the plain one
    assert s.held_variant(head) == promoted
    assert s.held_variant(s.headline_config("kvasir-seg")) == s.HEADLINE_VARIANT == s.held_variant(
        s.headline_config("busi"))
    in_place = s.screen_config(head, 4, promoted).generators["mask2image"]
    assert (in_place.jitter.max_shift, in_place.jitter.max_rotate) == (0.0, 10.0)
    assert in_place.config.name == "generator-mask2image-mri-cpu.yaml" and in_place.filter.keep_best == 2
    assert s.recipe_of(in_place.model_dump(mode="json")) == s.recipe_of(full)
    (row,) = s.variant_arms(promoted, generator="mask2image")
    arm = full_cfg.arm("synthetic-in-place")
    assert row.mixing == arm.mixing and arm.mixing.synthetic_until == 0.5 and row.filtered == arm.filtered is True
    # the headline recipe's own rows are drawn with the default jitter (shifted masks), not the headline's
    today = cfg.generators["mask2image"]
    assert today.jitter is None and s.recipe_of(today.model_dump(mode="json")) != s.recipe_of(full)
    even = s.screen_config(head, 4, "pretrain+8per-top2+even").generators["mask2image"]
    assert even.jitter.even and even.jitter.kwargs() == {} and even.n_per_real == 8
    (quarter,) = s.variant_arms("pretrain+8per-top2+ratio0.25", generator="mask2image")
    assert quarter.mixing.ratio == 0.25 and quarter.filtered and quarter.generator == "mask2image"
    assert s.paste_rows(head, cfg) is None  # the MRI headline has no copy-paste-onto-backgrounds arm
    # the promoted recipe's share of the steps bracketed: the same in-place set, only the arm's mixing changes
    for share in (0.25, 0.75):
        name = f"pretrain+8per-top2+in-place+until{share}"
        assert s.screen_config(head, 4, name).generators["mask2image"] == in_place
        (bracket,) = s.variant_arms(name, generator="mask2image")
        assert bracket.filtered and (bracket.mixing.ratio, bracket.mixing.synthetic_until) == (1, share)
    (halved,) = s.variant_arms("pretrain+8per-top2+in-place+until0.5+ratio0.5", generator="mask2image")
    assert (halved.mixing.ratio, halved.mixing.synthetic_until) == (0.5, 0.5)
    # the draws shifted to the thin ends: the in-place set's settings but the end slices' weight, the promoted
    # mixing; a set of its own (its entry differs only there) from the same generator (same training recipe)
    ends = s.screen_config(head, 4, "pretrain+8per-top2+in-place+until0.5+ends2").generators["mask2image"]
    assert ends.jitter.ends_weight == 2 and ends.model_copy(update={"jitter": in_place.jitter}) == in_place
    assert ends.jitter.kwargs() == in_place.jitter.kwargs() and s.recipe_of(ends.model_dump(mode="json")) != \
        s.recipe_of(in_place.model_dump(mode="json"))
    (ends_row,) = s.variant_arms("pretrain+8per-top2+in-place+until0.5+ends2", generator="mask2image")
    assert ends_row.mixing == row.mixing


def test_variants_keep_their_meaning_when_the_headline_takes_a_new_recipe():
    """Variants are changes to a fixed BASE (the first-pass recipe), not to whatever the headline config holds
    now: with the headline on pretraining + sde-dpm++ 25 + top-2, `today` is still 2000 steps from scratch with
    100-step DDPM, `pretrain` still samples with DDPM, and `8per-best2` keeps the automatic threshold."""
    s = load_benchmark("screen")
    config = s.headline_config("kvasir-seg")
    today = s.screen_config(config, 32, "today").generators["inpaint"]
    assert today.overrides == {"steps": 2000, "batch_size": 8}
    assert (today.sampler, today.sampling_steps) == ("ddpm", 100)
    assert today.filter is None and today.n_per_real == 2
    pre = s.screen_config(config, 32, "pretrain").generators["inpaint"]
    assert pre.overrides["pretrain_steps"] == 1000 and pre.sampler == "ddpm"
    best = s.screen_config(config, 32, "pretrain+8per-best2").generators["inpaint"].filter
    assert (best.threshold, best.keep_best) == ("auto", 2)


def test_the_longer_tuning_lever_reuses_the_headlines_pretrained_base():
    """`+tune2000` doubles the fine-tuning on the labelled pairs only: its generator is new, its pretrained base
    has the headline's settings (so the cached base is reused, not retrained)."""
    from lesionforge.experiment.config import resolved_generator_config
    from lesionforge.generate.trainer import pretrain_config

    s = load_benchmark("screen")
    config = s.headline_config("kvasir-seg")
    head, long = (s.screen_config(config, 32, v) for v in ("pretrain+8per-top2", "pretrain+8per-top2+tune2000"))
    g_head, g_long = (resolved_generator_config(c, c.generators["inpaint"]) for c in (head, long))
    assert (g_head.steps, g_long.steps) == (1000, 2000)
    assert pretrain_config(g_long) == pretrain_config(g_head)
    assert long.generators["inpaint"].filter == head.generators["inpaint"].filter
    # the other direction (session 25): half the tuning on the same base, or a base pretrained twice as long
    short, based = (s.screen_config(config, 32, v) for v in ("pretrain+8per-top2+tune500", "pretrain2000+8per-top2"))
    g_short, g_based = (resolved_generator_config(c, c.generators["inpaint"]) for c in (short, based))
    assert (g_short.steps, g_based.steps) == (500, 1000) and pretrain_config(g_short) == pretrain_config(g_head)
    assert pretrain_config(g_based).steps == 2000 != pretrain_config(g_head).steps
    assert pretrain_config(g_based).model_copy(update={"steps": 1000}) == pretrain_config(g_head)
    assert short.generators["inpaint"].filter == based.generators["inpaint"].filter == head.generators["inpaint"].filter


def test_the_gate_of_volume_rows_resamples_val_cases_and_shows_the_last_steps_difference(tmp_path):
    """A gain that one val volume carries (its slices move together) is not 48 slices' evidence: over slices its
    interval clears 0, over cases it does not; the last step's per-seed difference is shown beside the gate."""
    s = load_benchmark("screen")
    ids = [f"c{c}/2_{k:04d}" for c in range(6) for k in range(8)]
    rng = np.random.default_rng(0)
    base = {i: 0.6 for i in ids}
    lucky = {i: 0.6 + (0.12 if i.startswith("c0/") else 0.0) + 0.001 * rng.standard_normal() for i in ids}

    def row(img: dict, last: list[float]) -> dict:
        mean = float(np.mean(list(img.values())))
        return {"val_mdice": mean, "seeds": [0, 1], "per_image": img, "seconds": 1.0,
                "val_mdice_by_seed": [mean + 0.001, mean - 0.001], "last_val_mdice_by_seed": last}

    out = {"real": {"baseline": row(base, [0.6, 0.59])},
           "variants": {"v": {"arms": {"synthetic": row(lucky, [0.6, 0.6])}}}}
    x = s.gate(out)["variants"]["v"]["rows"]["synthetic"]["versus"]["baseline"]
    assert x["mean"] == pytest.approx(0.02, abs=1e-3) and min(x["per_seed"]) > 0
    assert s.bootstrap_paired(lucky, base)["ci95"][0] > 0  # counted as independent slices it would clear
    assert x["unit"] == "val cases" and x["ci95"][0] <= 0 and not x["clears"]
    assert x["why"].startswith("interval over val cases")
    assert x["per_seed_last"] == [0.0, 0.01]
    path = tmp_path / "screen.md"
    s.write_report({**out, "dataset": "d", "n_labelled": 4, "resolution": 64, "machine": "m", "command": "c",
                    "segment": {"steps": 400, "seeds": [0, 1]}, "gate": s.gate(out)}, path)
    text = path.read_text(encoding="utf-8")
    assert "| +0.000, +0.010 |" in text and "| 0.600 / 0.590 |" in text


def _seed_rows(n_images: int, seed: int):
    """A maker of one seed's screen ``row.json`` (per-image val Dice) over ``n_images`` val images of a shared
    difficulty, each row ``gain`` above it with a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.random(n_images)

    def seed_row(seed: int, gain: float) -> dict:
        dice = base + gain + 0.002 * rng.standard_normal(n_images)
        return {"seed": seed, "ids": [f"v{i:02d}" for i in range(n_images)], "dice": [float(d) for d in dice],
                "val_mdice": float(dice.mean()), "seconds": 1.0}

    return seed_row


def test_the_gate_compares_rows_of_other_seed_sets_over_the_seeds_they_share():
    """A reference screened with a third seed does not block a 2-seed variant's interval: both rows are compared
    over their shared seeds, from each seed's per-image scores (summaries made before keep the old refusal)."""
    s = load_benchmark("screen")
    seed_row = _seed_rows(40, 1)

    # the reference's seed 2 is far worse: a comparison over all its seeds would favour the variant by ~0.03
    ref = s.summarise([seed_row(0, 0.0), seed_row(1, 0.0), seed_row(2, -0.09)])
    var = s.summarise([seed_row(1, 0.02), seed_row(0, 0.02)])
    assert len(ref["per_image_by_seed"]) == 3 and len(ref["per_image_by_seed"][0]) == 40
    x = s._versus(var, ref)
    assert x["seeds"] == [1, 0] and x["clears"]
    assert x["mean"] == pytest.approx(0.02, abs=0.002)  # over seeds 0 and 1 only
    assert len(x["per_seed"]) == 2 and min(x["per_seed"]) > 0.015
    # one shared seed is not enough; a summary without per-seed scores cannot be cut down
    assert s._versus(s.summarise([seed_row(2, 0.02), seed_row(3, 0.02)]), ref)["why"] == "1 seed(s), 2 needed"
    old = {k: v for k, v in var.items() if k != "per_image_by_seed"}
    assert s._versus(old, ref)["why"] == "seeds [1, 0] against [0, 1, 2]: screen the same seeds"
    no_shared = s._versus(s.summarise([seed_row(5, 0.02)]), ref)["why"]
    assert no_shared == "seeds [5] against [0, 1, 2]: screen the same seeds"


def test_the_gate_holds_variants_to_the_row_of_the_headlines_best_synthetic_arm(tmp_path):
    """Session 30: BUSI's first synthetic arm (the inpainted pairs) is not its best (the mask2image pairs), and a
    variant that beat only the first was promoted, then lost to the best on test. The gate's synthetic reference is
    the row of the headline's best synthetic arm: a promoted variant's row, or the held variant's joined row where
    the joined arm is best (Kvasir-SEG); without a headline file, the held variant's best row on val."""
    s = load_benchmark("screen")
    seed_row = _seed_rows(40, 2)

    def row(gain: float) -> dict:
        return s.summarise([seed_row(0, gain), seed_row(1, gain)])

    m2i, until = s.HEADLINE_ROWS_OF_VARIANTS["synthetic-mask2image"][0], "contender"
    out = {"real": {"baseline": row(0.0), "copy-paste": row(-0.04)},
           "variants": {s.HEADLINE_VARIANT: {"arms": {"synthetic": row(0.005), s.UNION_ARM.name: row(0.002)}},
                        m2i: {"arms": {"synthetic": row(0.02)}},
                        # above the baseline and the inpainted pairs, below the mask2image pairs
                        until: {"arms": {"synthetic": row(0.012)}}}}
    busi = {"baseline": 0.700, "copy-paste": 0.66, "synthetic": 0.706, s.UNION_ARM.name: 0.703,
            # an arm without a screen row is not a reference
            "synthetic-mask2image": 0.726, "synthetic-unscreened": 0.9}
    g = s.gate(out, s.HEADLINE_VARIANT, busi)
    assert g["reference"] == {"variant": m2i, "row": "synthetic", "arm": "synthetic-mask2image",
                              "headline_mdice": 0.726, "val_mdice": pytest.approx(out["variants"][m2i]["arms"][
                                  "synthetic"]["val_mdice"])}
    contender = g["variants"][until]["rows"]["synthetic"]
    assert set(contender["versus"]) == {"baseline", f"{m2i}: synthetic"} and not g["variants"][until]["promote"]
    assert contender["versus"]["baseline"]["clears"] and "every seed" in contender["versus"][f"{m2i}: synthetic"]["why"]
    # the reference row itself is held to the real rows only; the held inpaint rows now face the mask2image row
    assert set(g["variants"][m2i]["rows"]["synthetic"]["versus"]) == {"baseline"} and g["variants"][m2i]["promote"]
    assert set(g["variants"][s.HEADLINE_VARIANT]["rows"][s.UNION_ARM.name]["versus"]) == {"baseline",
                                                                                          f"{m2i}: synthetic"}
    # the old reference (the held variant's same row) would have promoted the contender
    held = out["variants"][s.HEADLINE_VARIANT]["arms"]["synthetic"]
    old = s._versus(out["variants"][until]["arms"]["synthetic"], held)
    assert old["clears"]
    # Kvasir-SEG: the joined arm is the best: every variant's pairs row must beat the held variant's joined row
    kvasir = s.gate(out, s.HEADLINE_VARIANT, {"baseline": 0.66, "synthetic": 0.70, s.UNION_ARM.name: 0.72})
    assert (kvasir["reference"]["variant"], kvasir["reference"]["row"]) == (s.HEADLINE_VARIANT, s.UNION_ARM.name)
    assert f"{s.HEADLINE_VARIANT}: {s.UNION_ARM.name}" in kvasir["variants"][until]["rows"]["synthetic"]["versus"]
    assert kvasir["variants"][until]["promote"] and kvasir["variants"][m2i]["promote"]
    # no headline file: the held variant's best gate row on val
    alone = s.gate(out, s.HEADLINE_VARIANT, s.headline_scores(tmp_path / "absent.json"))
    assert (alone["reference"]["variant"], alone["reference"]["row"], alone["reference"]["arm"]) == (
        s.HEADLINE_VARIANT, "synthetic", None)
    path = tmp_path / "screen.md"
    s.write_report({**out, "dataset": "d", "n_labelled": 64, "resolution": 64, "machine": "m", "command": "c",
                    "segment": {"steps": 800, "seeds": [0, 1]}, "gate": g}, path)
    assert (f"and `{m2i}: synthetic` (val {g['reference']['val_mdice']:.3f}), the row of the headline's best synthetic "
            "arm `synthetic-mask2image` (test mDice 0.726)") in path.read_text(encoding="utf-8")


def test_compare_sets_two_rows_of_a_screen_file_side_by_side_over_their_shared_seeds(tmp_path):
    """``screen.py compare``: one row against others from the file alone, as the gate compares them; an unknown
    row is refused with the rows the file has."""
    from typer.testing import CliRunner

    s = load_benchmark("screen")
    seed_row = _seed_rows(30, 2)

    out = {"real": {"baseline": s.summarise([seed_row(0, 0.0), seed_row(1, 0.0), seed_row(2, 0.0)])},
           "variants": {"a": {"arms": {"synthetic": s.summarise([seed_row(0, 0.03), seed_row(1, 0.03)])}},
                        "b": {"arms": {"synthetic": s.summarise([seed_row(0, 0.01), seed_row(1, 0.04)])}}}}
    (tmp_path / "screen-busi-n64-s800-cpu.json").write_text(json.dumps(out))
    args = ["--dataset", "busi", "--n", "64", "--steps", "800", "--results", str(tmp_path)]
    res = CliRunner().invoke(s.app, ["compare", "a", "baseline", "b:synthetic", *args])
    assert res.exit_code == 0, res.output
    first, second = res.output.splitlines()
    assert first.startswith("a vs baseline: +0.030 [") and "(seeds [0, 1])" in first and "the gate" not in first
    assert second.startswith("a vs b:synthetic: +0.005 [")  # b: +0.01 on seed 0, +0.04 on seed 1
    assert "not above it on every seed" in second  # seed 1: a is 0.01 below b
    bad = CliRunner().invoke(s.app, ["compare", "c", "baseline", *args])
    assert bad.exit_code != 0 and "no screen row 'c'" in bad.output


def test_rows_summarised_before_get_their_last_steps_score_from_the_run_records(tmp_path):
    """`agree` fills a row's ``last_val_mdice_by_seed`` from its segmenters' records, only when every seed has one."""
    s = load_benchmark("screen")

    def record(path: Path, scores: list[float | None]) -> None:
        (path / "segmenter").mkdir(parents=True)
        history = [{"step": 100 * (k + 1), "loss": 1.0, "val_mdice": v} for k, v in enumerate(scores)]
        (path / "segmenter" / "run.json").write_text(json.dumps({"history": history}))

    record(tmp_path / "real" / "baseline" / "seed0", [0.5, 0.7, 0.6])
    record(tmp_path / "real" / "baseline" / "seed1", [0.5, 0.65])
    record(tmp_path / "v" / "synthetic" / "seed0", [0.4, 0.8, None])  # the last evaluation had no val score
    out = {"real": {"baseline": {"seeds": [0, 1]}}, "variants": {"v": {"arms": {"synthetic": {"seeds": [0, 1]}}}}}
    s.fill_from_run_records(out, tmp_path)
    assert out["real"]["baseline"]["last_val_mdice_by_seed"] == [0.6, 0.65]
    assert "last_val_mdice_by_seed" not in out["variants"]["v"]["arms"]["synthetic"]  # seed 1 has no record
    assert s.last_val_mdice(tmp_path / "v" / "synthetic" / "seed0") == 0.8
    # each seed's per-image scores come from its row.json, only where they are the rows the summary was made of
    for seed, dice in ((0, [0.1, 0.2]), (1, [0.3, 0.4])):
        (tmp_path / "real" / "baseline" / f"seed{seed}" / "row.json").write_text(
            json.dumps({"ids": ["b", "a"], "dice": dice}))
    out["real"]["baseline"]["per_image"] = {"a": 0.3, "b": 0.2}
    s.fill_from_run_records(out, tmp_path)
    assert out["real"]["baseline"]["per_image_by_seed"] == [[0.2, 0.1], [0.4, 0.3]]


def _drawn_set(folder: Path, pixel: int, kept: tuple[bool, ...], filter_name: str = "filtered-1.jsonl"):
    """A set of len(kept) drawn pairs on disk (images filled with ``pixel``) and its filter's verdicts."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, k in enumerate(kept):
        write_image(folder / f"{i}.png", np.full((8, 8, 3), pixel, np.uint8))
        write_mask(folder / f"{i}_mask.png", np.eye(8, dtype=np.uint8))
        rows.append(Sample(id=f"syn-{i}", image=str(folder / f"{i}.png"), masks=[str(folder / f"{i}_mask.png")],
                           origin="synthetic", provenance=Provenance(validation={"kept": k})))
    write_manifest(folder / "manifest.jsonl", [r.model_copy(update={"provenance": None}) for r in rows])
    write_manifest(folder / filter_name, rows)
    return SyntheticSet(folder / "manifest.jsonl", folder / filter_name, {})


def test_a_cached_screen_row_of_another_set_is_refused(tmp_path):
    """A row trained on one synthetic set is not reused for another: a variant whose definition changed (another
    filter file), or the same files drawn again with other content (another machine, a filter's code changed)."""
    s = load_benchmark("screen")
    folder = tmp_path / "row"
    folder.mkdir()
    one = _drawn_set(tmp_path / "a", 100, (True, False))
    other = replace(one, filtered_manifest=_drawn_set(tmp_path / "a", 100, (True, False), "filtered-2.jsonl")
                    .filtered_manifest)
    arm = s.ArmSettings(name="synthetic", kind="synthetic", generator="inpaint", filtered=True)
    (folder / "row.json").write_text(json.dumps({"val_mdice": 0.5, "synthetic_set": s.set_identity(one, True),
                                                 "synthetic_fingerprint": s.set_fingerprint(one, True)}))
    assert s.run_row(None, None, 8, arm, 0, folder, one)["val_mdice"] == 0.5  # the same set: read back
    with pytest.raises(s.typer.BadParameter, match="definition changed"):
        s.run_row(None, None, 8, arm, 0, folder, other)
    assert s.set_identity(one, False) == s.set_identity(other, False)  # unfiltered rows: both draw the same set
    assert s.set_fingerprint(one, False) == s.set_fingerprint(other, False)
    # the same file names, other kept pairs (the filter's code changed): the filtered row is refused
    _drawn_set(tmp_path / "a", 100, (False, True))
    assert s.set_fingerprint(one, False) == s.set_fingerprint(other, False)  # the draws themselves did not change
    with pytest.raises(s.typer.BadParameter, match="another draw"):
        s.run_row(None, None, 8, arm, 0, folder, one)
    # a row written before rows recorded their content is still read back by its file name
    (folder / "row.json").write_text(json.dumps({"val_mdice": 0.5, "synthetic_set": s.set_identity(one, True)}))
    assert s.run_row(None, None, 8, arm, 0, folder, one)["val_mdice"] == 0.5


def test_a_screen_entry_keeps_rows_of_one_set_and_moves_those_of_an_earlier_draw_aside(tmp_path, monkeypatch):
    """A variant screened again on a set made again (same files, other content) does not mix the earlier set's
    rows (e.g. a one-seed pairs-alone row) with the new ones: they move to ``earlier_sets`` and its quality is
    measured again; an entry of the same set keeps its rows and quality."""
    s = load_benchmark("screen")
    monkeypatch.setattr(s, "read_meta", lambda _: {})
    synthetic = _drawn_set(tmp_path / "a", 100, (True, False))
    synthetic = replace(synthetic, info={"generator_dir": str(tmp_path), "timings": {}, "n_generated": 2})
    v = "pretrain+8per-top2-bands"
    entry = s.describe_variant({"arms": {"synthetic": {"seeds": [0]}}, "quality": {"version": 2}}, v, synthetic)
    assert "quality" not in entry and entry["arms"] and entry["set_fingerprint"]  # unknown set: measured again
    entry["quality"] = {"version": 2}
    again = s.describe_variant(entry, v, synthetic)
    assert again["arms"] == entry["arms"] and again["quality"] == entry["quality"] and "earlier_sets" not in again
    _drawn_set(tmp_path / "a", 120, (True, False))  # the set drawn again: other images under the same names
    moved = s.describe_variant(again, v, synthetic)
    assert "arms" not in moved and "quality" not in moved
    assert moved["earlier_sets"] == [{"set": again["set"], "set_fingerprint": again["set_fingerprint"],
                                      "arms": again["arms"]}]
    assert moved["set_fingerprint"] != again["set_fingerprint"] and moved["set"] == again["set"]


def test_a_variant_joining_another_kinds_set_trains_on_both_kept_parts(tmp_path, monkeypatch):
    """``Variant.join``: the rows train on the variant's kept pairs and the joined variant's kept ones (drawn as
    that variant's own screen draws them), not on either set's rejected pairs; the entry names the joined set,
    so a row of the variant's own set alone is not read back for it."""
    s = load_benchmark("screen")
    v = "pretrain+mask2image-8per-top2+inpaint"
    assert s.VARIANTS[v].join == s.HEADLINE_VARIANT and s.VARIANTS[v].describe()["join"] == s.HEADLINE_VARIANT
    own = _drawn_set(tmp_path / "own", 100, (True, False, True))
    other = _drawn_set(tmp_path / "other", 200, (False, True))
    asked = []
    monkeypatch.setattr(s, "prepare", lambda cfg, data, n: asked.append(cfg.generators["inpaint"].method) or other)
    config = s.headline_config("busi")
    joined = s.joined_set(config, 64, v, own, None, tmp_path / "screen")
    assert asked == ["inpaint-normal"]  # the joined variant's own recipe: the inpainting kind
    rows = read_manifest(joined.manifest)
    assert [r.id for r in rows] == ["own-syn-0", "own-syn-2", "joined-syn-1"]
    assert all(Path(r.image).is_file() and Path(r.image).is_relative_to(tmp_path / "screen" / v) for r in rows)
    assert joined.info["parts"] == {"own": 2, "joined": 1} and joined.filtered_manifest is None
    arms = s.variant_arms(v)  # a joined set is made of kept pairs already: its rows take all of it
    assert [a.name for a in arms] == ["synthetic", "synthetic-only"] and not any(a.filtered for a in arms)
    monkeypatch.setattr(s, "read_meta", lambda _: {})
    own = replace(own, info={"generator_dir": str(tmp_path), "timings": {}, "n_generated": 3})
    entry = s.describe_variant({}, v, own, joined)
    assert entry["set"] == s.set_identity(joined, False) != s.set_identity(own, True)
    assert entry["joined_parts"] == {"own": 2, "joined": 1} and entry["n_kept"] == 3
    assert s.joined_set(config, 64, "pretrain+mask2image-8per-top2", own, None, tmp_path / "screen") is None


def test_a_set_another_screen_is_drawing_is_waited_for_not_a_crash(monkeypatch, tmp_path):
    """Two screen processes that reach the same new set: the second waits while the first holds its claim (as rows
    wait for rows), takes the set once it is made, and gives up with a WaitTimeoutError naming the claim only
    after the wait limit."""
    s = load_benchmark("screen")
    made = s.SyntheticSet(tmp_path / "manifest.jsonl", None, {})
    calls = []

    class Drawing:  # the claim is held for the first two polls, then the set is there
        def __init__(self, *args):
            pass

        def get(self, name):
            calls.append(name)
            if len(calls) <= 2:
                raise s.Busy(f"synthetic set {name!r}", tmp_path / "set.lock")
            return made

    monkeypatch.setattr(s, "SyntheticCache", Drawing)
    monkeypatch.setattr(s, "variant_generator", lambda cfg: "inpaint")
    assert s.prepare(None, None, 32, poll_s=0.0) is made and calls == ["inpaint"] * 3
    calls.clear()
    from lesionforge.errors import WaitTimeoutError

    with pytest.raises(WaitTimeoutError, match=r"set\.lock: gave up .*synthetic set 'inpaint'"):
        s.prepare(None, None, 32, poll_s=0.6, wait_timeout_s=0.5)
    assert len(calls) == 2


@pytest.mark.parametrize("dataset", ["kvasir-seg", "busi"])
def test_the_headline_variant_is_what_the_headline_configs_hold(dataset):
    """The rank agreement lets the screen's HEADLINE_VARIANT rows stand for the headline's synthetic arms: that
    variant's generator entry (generator, synthesis, filter) must be the headline config's own."""
    s = load_benchmark("screen")
    config = s.headline_config(dataset)
    n = 32 if dataset == "kvasir-seg" else 64
    screened = s.screen_config(config, n, s.HEADLINE_VARIANT).generators["inpaint"]
    headline = s.load_experiment_config(config).generators["inpaint"]
    assert screened.model_dump() == headline.model_dump()
    assert s.paste_rows(config, s.screen_config(config, n, "today"))[1].name == "copy-paste+backgrounds"


def test_agree_recomputes_the_rank_agreement_from_the_two_files_alone(tmp_path):
    """`screen.py agree`: the committed Kvasir-SEG screen against its headline file, no segmenter trained; the
    headline's sixth and seventh arms join the ranking, and a headline of another recipe is not compared."""
    from typer.testing import CliRunner

    s = load_benchmark("screen")
    name = "screen-kvasir-seg-n32-s800-cpu.json"
    (tmp_path / name).write_bytes((ROOT / "benchmarks" / "results" / name).read_bytes())
    head_path = ROOT / "benchmarks" / "results" / "kvasir-seg-n32-cpu.json"
    args = ["agree", "--steps", "800", "--results", str(tmp_path), "--headline"]
    res = CliRunner().invoke(s.app, [*args, str(head_path)])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / name).read_text(encoding="utf-8"))["agreement"]
    head = json.loads(head_path.read_text(encoding="utf-8"))
    # the headline's seventh arm is scored by the row of the variant it was chosen from
    assert a["arms"] == sorted(head["arms"]) and len(a["arms"]) == 7 and a["permutations"] == 5040
    screen = json.loads((tmp_path / name).read_text(encoding="utf-8"))
    rows = {**screen["real"], **screen["variants"][s.HEADLINE_VARIANT]["arms"],
            "synthetic-redrawn": screen["variants"]["pretrain+8per-top2+paste0.5"]["arms"]["synthetic"]}
    direct = rank_agreement({k: rows[k]["per_image"] for k in a["arms"]},
                            {k: head["arms"][k]["mdice_mean"] for k in a["arms"]})
    assert a["spearman"] == direct["spearman"] and a["bootstrap"]["ci95"] == direct["bootstrap"]["ci95"]
    assert "Rank agreement" in (tmp_path / name.replace(".json", ".md")).read_text(encoding="utf-8")
    # the reference: the headline runs' own val scores (their selected checkpoints) ranked against their test
    h = a["headline_val"]
    val = {k: float(np.mean(head["arms"][k]["best_val_mdice"])) for k in h["arms"]}
    assert h["arms"] == sorted(head["arms"]) and h["n_seeds"] == 5 and "seeds" in h["bootstrap"]["unit"]
    assert h["spearman"] == pytest.approx(spearmanr([val[k] for k in h["arms"]],
                                                    [head["arms"][k]["mdice_mean"] for k in h["arms"]]).statistic)
    assert "the headline runs' own val scores" in (tmp_path / name.replace(".json", ".md")).read_text(encoding="utf-8")
    few = {"arms": {k: head["arms"][k] for k in list(head["arms"])[:2]}}
    assert s.headline_val_agreement(few)["status"].startswith("not computed: 2 arms")
    other = json.loads(head_path.read_text(encoding="utf-8"))
    other["generators"]["inpaint"]["settings"]["n_per_real"] = 9
    (tmp_path / "other.json").write_text(json.dumps(other), encoding="utf-8")
    assert CliRunner().invoke(s.app, [*args, str(tmp_path / "other.json")]).exit_code == 0
    assert json.loads((tmp_path / name).read_text())["agreement"]["status"].startswith("not computed")
    missing = CliRunner().invoke(s.app, ["agree", "--steps", "123", "--results", str(tmp_path)])
    assert missing.exit_code != 0 and "no screen file" in missing.output


def test_in_domain_features_of_a_grey_segmenter_take_grey_images(tmp_path):
    """BUSI is grey: the screen's real-only segmenter takes 1 channel, and its KID features must be fed so
    (the first BUSI screen crashed here when grey images were repeated to 3 channels)."""
    import torch

    from lesionforge.segment.config import SegmentConfig
    from lesionforge.segment.model_io import save_segmenter
    from lesionforge.segment.networks import build_network

    s = load_benchmark("screen")
    cfg = SegmentConfig(features=(4, 4, 8, 8, 16, 4), resolution=32)
    torch.manual_seed(0)
    save_segmenter(build_network("BasicUNet", 1, cfg.features, 32), cfg, 1, tmp_path / "seg")
    grey = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 1), dtype=np.uint8)
    feats = s.real_extractor(tmp_path / "seg").features(grey)
    assert feats.shape == (3, 4 + 4 + 8 + 8 + 16) and np.isfinite(feats).all()


@pytest.mark.slow
def test_screen_end_to_end_on_demo(tmp_path, monkeypatch):
    """Real rows, three variants (today, v-prediction + min-SNR, pretraining), quality and the rank agreement,
    from the smoke sweep's tiny models; a rerun resumes every row from its files."""
    s = load_benchmark("screen")
    monkeypatch.setattr(s, "BASE", {})  # the smoke's own tiny recipe is the base here
    cfg = yaml.safe_load((ROOT / "benchmarks" / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
    cfg["output"] = str(tmp_path / "runs")
    # the headline's copy-paste-onto-backgrounds twin, screened for the rank agreement
    cfg["generators"]["paste"] = {"method": "copy-paste-backgrounds", "n_per_real": 1}
    cfg["arms"].append({"name": "copy-paste+backgrounds", "kind": "synthetic", "generator": "paste",
                        "mixing": {"mode": "ratio", "ratio": 1}, "filtered": False, "copy_paste": {"prob": 0.5}})
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    headline = tmp_path / "headline.json"
    budget = dict(steps=4, val_interval=2, seeds=(0,), samples_per_real=2)
    # a headline file made with the recipe of the variant its synthetic arms are screened as ("today")
    held = s.screen_config(config, 8, "today", **budget).generators["inpaint"].model_dump(mode="json")
    headline.write_text(json.dumps({"generators": {"inpaint": {"settings": held}},
                                    "arms": {a: {"mdice_mean": m, "mdice": [m, m]} for a, m in (
        ("baseline", 0.5), ("copy-paste", 0.55), ("copy-paste+backgrounds", 0.57), ("synthetic", 0.52),
        ("synthetic+copy-paste", 0.56))}}))
    tiny = {"pretrain_steps": 2, "steps": 2}  # the smoke's budget
    monkeypatch.setitem(s.VARIANTS, "pretrain", s.Variant(tiny))
    monkeypatch.setitem(s.VARIANTS, "sde+best", s.Variant(tiny, {"sampler": "sde-dpm++", "sampling_steps": 2,
                                                                 "n_per_real": 3}, {"keep_best": 1}))
    monkeypatch.setitem(s.VARIANTS, "until", s.Variant(tiny, arm={"mixing": {"mode": "ratio", "synthetic_until": 0.5}}))
    # `prepare` first (generators and sets only), as on a machine where the generators train before the rows: it
    # claims the sweep folder, so the screen (and `experiment run`) continue in it; its set is the one the rows use
    (name, made, _), = s.prepare_variants(config, 8, ["today"])
    assert name == "today" and json.loads((tmp_path / "runs" / ".lesionforge-output.json").read_text())["kind"] \
        == "experiment sweep"
    out = s.screen(config, 8, ["today", "vpred-minsnr", "pretrain", "sde+best", "until"], tmp_path / "results",
                   headline=headline, command="test", agree_with="today", **budget)
    assert out["variants"]["today"]["set"] == str(made.manifest)
    assert set(out["real"]) == {"baseline", "copy-paste", "copy-paste+backgrounds"}
    assert set(out["variants"]["today"]["arms"]) == {"synthetic-only", "synthetic", "synthetic+copy-paste",
                                                     "synthetic+copy-paste+backgrounds"}
    # the headline variant's pairs joined with the pasted set: today's 16 unfiltered pairs and the 8 pasted ones
    union = out["variants"]["today"]["arms"]["synthetic+copy-paste+backgrounds"]
    union_rows = json.loads((Path(tmp_path / "runs" / "screen" / "n8-steps4" / "today" /
                                  "synthetic+copy-paste+backgrounds" / "seed0" / "row.json")).read_text())
    assert 0 <= union["val_mdice"] <= 1 and len(read_manifest(union_rows["synthetic_set"])) == 16 + 8
    # each row also keeps its val score at the last step (no best-evaluation selection), from the run's record
    history = json.loads((Path(union_rows["checkpoint"]).parent / "run.json").read_text())["history"]
    assert union["last_val_mdice_by_seed"] == [union_rows["last_val_mdice"]] == [history[-1]["val_mdice"]]
    assert union["val_mdice"] == max(h["val_mdice"] for h in history) >= union_rows["last_val_mdice"]
    assert set(out["variants"]["vpred-minsnr"]["arms"]) == {"synthetic-only", "synthetic"}
    v = out["variants"]["vpred-minsnr"]
    assert v["n_synthetic"] == 16 and v["overrides"]["min_snr_gamma"] == 5.0
    assert json.loads((Path(v["generator_dir"]) / "lesionforge.json").read_text())["config"]["min_snr_gamma"] == 5.0
    p = out["variants"]["pretrain"]
    assert p["pretrained_base"] is not None and p["generator_train_s"] > p["base_train_s"] > 0
    assert out["variants"]["today"]["pretrained_base"] is None
    q = out["variants"]["today"]["quality"]
    assert {"label_fidelity", "kid_vs_train", "kid_val_vs_train", "speckle"} <= set(q) and q["version"] == 2
    best = out["variants"]["sde+best"]  # 3 drawn per labelled pair, at most 1 kept per pair, the rows train on those
    assert best["n_synthetic"] == 24 and best["n_kept"] <= 8 and best["filter"] == {"keep_best": 1}
    assert best["quality"]["label_fidelity"]["n_samples"] == best["n_kept"]
    by_band = best["quality"]["label_fidelity"]["by_band"]  # every kept pair in one size band of its mask
    assert sum(b["n_samples"] for b in by_band.values()) == best["n_kept"]
    real_val = best["quality"]["label_fidelity"]["real_val_by_band"]  # the scale: the real val pairs with a mask
    data = s.LesionforgeStages().load_data(s.screen_config(config, 8, "today"))
    assert sum(b["n_samples"] for b in real_val.values()) == int(data.val.has_mask.sum())
    bands = best["quality"]["bands"]
    assert sum(bands["drawn"].values()) == 24 and sum(bands["used"].values()) == best["n_kept"]
    assert set(bands["used"]) == {"small", "medium", "large", "empty"}  # empty masks counted apart
    assert set(out["variants"]["until"]["arms"]) == {"synthetic"}
    assert best["set"].endswith(".jsonl") and "filtered-" in best["set"]  # the kept pairs' file, per filter
    row = out["real"]["baseline"]
    assert 0 <= row["val_mdice"] <= 1 and sorted(row["per_image"]) == sorted(data.val.ids)  # val, not test
    a = out["agreement"]
    assert a["arms"] == ["baseline", "copy-paste", "copy-paste+backgrounds", "synthetic", "synthetic+copy-paste"]
    assert -1 <= a["spearman"] <= 1 and a["screen_variant"] == "today" and a["permutations"] == 120
    saved = json.loads((tmp_path / "results" / "screen-demo-n8-s4-cpu.json").read_text(encoding="utf-8"))
    assert saved["agreement"]["spearman"] == a["spearman"]
    page = (tmp_path / "results" / "screen-demo-n8-s4-cpu.md").read_text(encoding="utf-8")
    assert "Rank agreement" in page and "own-mask Dice small/medium/large" in page
    again = s.screen(config, 8, ["today"], tmp_path / "results", headline=headline, command="test",
                     agree_with="today", **budget)
    assert again["real"]["baseline"]["val_mdice"] == row["val_mdice"]
    # a headline file of another recipe (its arms drew other pairs) is not compared with these rows
    other = json.loads(headline.read_text())
    other["generators"]["inpaint"]["settings"]["n_per_real"] = 9
    headline.write_text(json.dumps(other))
    old = s.screen(config, 8, ["today"], tmp_path / "results", headline=headline, command="test",
                   agree_with="today", **budget)
    assert old["agreement"]["status"].startswith("not computed") and "spearman" not in old["agreement"]
    # --union: a variant other than the headline's also gets its pairs joined to the pasted ones, from its kept pairs
    joined = s.screen(config, 8, ["sde+best"], tmp_path / "results", headline=headline, command="test",
                      agree_with="today", union=True, **budget)
    arms = joined["variants"]["sde+best"]["arms"]
    assert list(arms) == ["synthetic", "synthetic-only", "synthetic+copy-paste+backgrounds"]
    urow = json.loads((tmp_path / "runs" / "screen" / "n8-steps4" / "sde+best" / "synthetic+copy-paste+backgrounds"
                       / "seed0" / "row.json").read_text())
    assert len(read_manifest(urow["synthetic_set"])) == best["n_kept"] + 8
    # --gate-rows-only: the rows the gate judges (real + pairs, the joined one), not the pairs alone
    monkeypatch.setitem(s.VARIANTS, "sde+best2", s.Variant(tiny, {"sampler": "sde-dpm++", "sampling_steps": 2,
                                                                  "n_per_real": 3}, {"keep_best": 2}))
    lean = s.screen(config, 8, ["sde+best2"], tmp_path / "results", headline=headline, command="test",
                    agree_with="today", union=True, gate_rows_only=True, **budget)
    assert list(lean["variants"]["sde+best2"]["arms"]) == ["synthetic", "synthetic+copy-paste+backgrounds"]
    # a later run of other seeds (--seed 1 after --seed 0) summarises every seed with a row, not just its own:
    # a 1-seed summary of seed 1 must not take the place of seed 0's in the file
    more = s.screen(config, 8, ["until"], tmp_path / "results", headline=headline, command="test",
                    agree_with="today", gate_rows_only=True, **{**budget, "seeds": (1,)})
    assert more["real"]["baseline"]["seeds"] == [0, 1] and more["real"]["baseline"]["val_mdice_by_seed"][0] \
        == row["val_mdice"]
    assert more["variants"]["until"]["arms"]["synthetic"]["seeds"] == [0, 1]
    saved = json.loads((tmp_path / "results" / "screen-demo-n8-s4-cpu.json").read_text(encoding="utf-8"))
    assert saved["real"]["copy-paste"]["seeds"] == [0, 1]
    # --joined-only: of a variant only its joined row; here the synthetic-donor lever (session 36) through the
    # runner's own stage: copy-paste on the real half takes half its lesions from the drawn pairs of the union
    monkeypatch.setitem(s.VARIANTS, "donors", s.Variant(tiny, arm={"copy_paste": {"prob": 0.5,
                                                                                   "synthetic_donors": 0.5}}))
    only = s.screen(config, 8, ["donors"], tmp_path / "results", headline=headline, command="test",
                    agree_with="today", joined_only=True, **budget)
    assert list(only["variants"]["donors"]["arms"]) == ["synthetic+copy-paste+backgrounds"]
    used = yaml.safe_load((tmp_path / "runs" / "screen" / "n8-steps4" / "donors" / "synthetic+copy-paste+backgrounds"
                           / "seed0" / "segmenter" / "config.yaml").read_text(encoding="utf-8"))
    assert (used["copy_paste"]["enabled"], used["copy_paste"]["synthetic_donors"]) == (True, 0.5)
    assert only["variants"]["donors"]["arms"]["synthetic+copy-paste+backgrounds"]["platform"] == s.platform()
    # two workers on one new seed: the baseline row of seed 2 is locked by "the other" (held here); this screen
    # trains the rows after it meanwhile, and the baseline at the end, once the lock is free
    locked = tmp_path / "runs" / "screen" / "n8-steps4" / "real" / "baseline" / "seed2"
    locked.mkdir(parents=True)
    order, real_row = [], s.run_row
    with open(locked / "row.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)

        def watched(cfg, data, n, arm, seed, folder, synthetic, wait=True):
            got = real_row(cfg, data, n, arm, seed, folder, synthetic, wait)
            order.append((folder.parent.name, seed, got is not None))
            if folder.parent.name == "copy-paste":  # "the other worker" finishes nothing; it just lets go
                fcntl.flock(other, fcntl.LOCK_UN)
            return got

        monkeypatch.setattr(s, "run_row", watched)
        two = s.screen(config, 8, ["donors"], tmp_path / "results", headline=headline, command="test",
                       agree_with="today", joined_only=True, **{**budget, "seeds": (2,)})
    new_rows = [o for o in order if o[1] == 2]
    assert new_rows[0] == ("baseline", 2, False) and new_rows[-1] == ("baseline", 2, True)
    assert ("synthetic+copy-paste+backgrounds", 2, True) in new_rows[1:-1]
    assert two["real"]["baseline"]["seeds"] == [0, 1, 2]
    assert (locked / "row.json").is_file()


def test_a_row_another_screen_process_trains_is_left_for_later_not_waited_for(tmp_path):
    """Two screen workers (one per core) on the same seed: a row whose lock the other holds is skipped (its seed
    reported busy), not waited for, unless waiting is asked for; a free row is read back as before."""
    s = load_benchmark("screen")
    arm = s.REAL_ARMS[0]
    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
    (tmp_path / "seed1" / "row.json").write_text(json.dumps({"arm": arm.name, "seed": 1, "val_mdice": 0.5}))
    with open(tmp_path / "seed0" / "row.lock", "a") as other:  # another open file: flock conflicts as a process's
        fcntl.flock(other, fcntl.LOCK_EX)
        assert s.run_row(None, None, 8, arm, 0, tmp_path / "seed0", None, wait=False) is None
        with s._locked(tmp_path / "seed0" / "row.lock", wait=False) as held:
            assert held is False
        busy: list[int] = []
        rows = s.arm_rows(None, None, 8, arm, (0, 1), tmp_path, None, None, busy)
        assert busy == [0] and [r["seed"] for r in rows] == [1]
        fcntl.flock(other, fcntl.LOCK_UN)
    (tmp_path / "seed0" / "row.json").write_text(json.dumps({"arm": arm.name, "seed": 0, "val_mdice": 0.25}))
    busy = []
    rows = s.arm_rows(None, None, 8, arm, (0, 1), tmp_path, None, None, busy)
    assert busy == [] and [r["val_mdice"] for r in rows] == [0.25, 0.5]


def test_a_row_is_summarised_over_the_seeds_asked_for_and_those_already_done(tmp_path):
    s = load_benchmark("screen")
    for seed in (0, 1, 3):
        (tmp_path / f"seed{seed}").mkdir()
    for seed in (0, 3):
        (tmp_path / f"seed{seed}" / "row.json").write_text("{}")
    (tmp_path / "seedx").mkdir()
    (tmp_path / "seedx" / "row.json").write_text("{}")  # not a seed folder: ignored
    assert s.with_done_seeds((2,), tmp_path) == [0, 2, 3]  # seed 1 never finished: not summarised
    assert s.with_done_seeds((0, 1), tmp_path / "none") == [0, 1]


def test_a_row_the_screen_file_holds_is_taken_from_it_not_trained_again(tmp_path, monkeypatch):
    """A fresh checkout has the screen file but not the rows' ``row.json``: the seeds the file summarises (with
    their per-image Dice) are read from it, only the seeds it lacks are trained, and the new summary covers both."""
    s = load_benchmark("screen")
    ids = ["a", "b", "c"]
    rows = [{"arm": "baseline", "seed": k, "val_mdice": float(np.mean(d)), "ids": ids, "dice": d, "seconds": 10.0,
             "last_val_mdice": 0.5 + k / 10, "platform": s.platform()}
            for k, d in ((0, [0.1, 0.2, 0.3]), (1, [0.4, 0.5, 0.6]))]
    filed = s.summarise(rows)
    assert filed["platform"] == s.platform()
    trained = []

    def fake_row(cfg, data, n, arm, seed, folder, synthetic, wait=True):
        trained.append(seed)
        return {"arm": arm.name, "seed": seed, "val_mdice": 0.9, "ids": ids, "dice": [0.9, 0.9, 0.9],
                "seconds": 5.0, "last_val_mdice": 0.9, "platform": s.platform()}

    monkeypatch.setattr(s, "run_row", fake_row)
    arm = s.REAL_ARMS[0]
    got = s.arm_rows(None, None, 32, arm, (0, 2), tmp_path / "baseline", None, filed)
    assert trained == [2]  # seed 0 (asked) and seed 1 (in the file) are the file's
    again = s.summarise(got)
    assert again["seeds"] == [0, 1, 2] and again["val_mdice_by_seed"][:2] == filed["val_mdice_by_seed"]
    assert again["per_image_by_seed"][:2] == filed["per_image_by_seed"] and again["seconds"] == 25.0
    assert again["last_val_mdice_by_seed"] == [0.5, 0.6, 0.9]
    # a seed whose row.json is here is read from it (run_row), not from the file; a summary without per-seed
    # Dice (written before summaries kept them) gives nothing to take
    (tmp_path / "baseline" / "seed1").mkdir(parents=True)
    (tmp_path / "baseline" / "seed1" / "row.json").write_text("{}")
    trained.clear()
    s.arm_rows(None, None, 32, arm, (0,), tmp_path / "baseline", None, filed)
    assert trained == [1]
    assert s.filed_rows({k: x for k, x in filed.items() if k != "per_image_by_seed"}, "baseline") == {}
    # rows of another platform (another CPU's vector ISA trains another row for the same seed) are never taken,
    # and never summarised with this machine's
    elsewhere = {**filed, "platform": "torch 2.13.0+cpu, CPU AVX512"}
    assert s.filed_rows(elsewhere, "baseline") == {} and s.filed_rows({**filed, "platform": None}, "baseline") == {}
    with pytest.raises(Exception, match="different platforms"):
        s.summarise([rows[0], {**rows[1], "platform": "torch 2.13.0+cpu, CPU AVX512"}])


def test_the_screen_refuses_a_file_of_rows_trained_on_another_platform(tmp_path):
    """One file's rows are compared seed by seed: a file whose rows another platform trained (or that did not
    record it) is not added to; the error names the file and the way out (another --results folder)."""
    s = load_benchmark("screen")
    out = {"real": {"baseline": {"seeds": [0], "platform": s.platform()}},
           "variants": {"v": {"arms": {"synthetic": {"seeds": [0], "platform": s.platform()}}}}}
    assert s.foreign_rows(out, s.platform()) == {}
    out["variants"]["v"]["arms"]["synthetic+copy-paste"] = {"seeds": [0]}  # written before rows recorded it
    out["real"]["copy-paste"] = {"seeds": [0], "platform": "torch 2.13.0+cpu, CPU AVX512"}
    assert s.foreign_rows(out, s.platform()) == {"copy-paste": "torch 2.13.0+cpu, CPU AVX512",
                                                 "v:synthetic+copy-paste": None}
    path = s.screen_file(tmp_path, "demo", 8, s.STEPS)
    path.write_text(json.dumps(out), encoding="utf-8")
    with pytest.raises(Exception, match=r"screen-demo-n8-cpu\.json: rows .*copy-paste.*AVX512.* another folder"):
        s.screen(ROOT / "benchmarks" / "configs" / "smoke.yaml", 8, [], tmp_path, seeds=(0,))
