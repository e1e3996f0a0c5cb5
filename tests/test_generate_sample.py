"""Sampling and synthesis: determinism, batch-size invariance, exact inpainting paste-back, manifest
provenance, resume after a kill, joint mask cleaning, edge-text with prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_generate_common import normals, pairs, tiny_cfg

from lesionforge.data.io import read_image, read_mask
from lesionforge.data.manifest import read_manifest
from lesionforge.errors import ConfigError
from lesionforge.generate import synthesize as synth_module
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.models import Conditions
from lesionforge.generate.sampler import InpaintGuide, sample, sample_seed
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainbatch import make_mask_source


def _saved(kind: str, path, **kw):
    """An untrained generator saved to ``path`` (fixed init): sampling mechanics need no training."""
    torch.manual_seed(0)
    build_generator(tiny_cfg(kind, **kw)).eval().save_pretrained(path)
    return path


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "sde-dpm++", "ddpm"])
def test_same_seed_same_sample_whatever_the_batch(sampler):
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image")).eval()
    masks = torch.zeros(3, 1, 32, 32)
    masks[:, :, 8:20, 8:20] = 1
    cond = Conditions(masks * 2 - 1)
    seeds = [sample_seed(7, i) for i in range(3)]
    steps = 4 if sampler != "ddpm" else 6
    full = sample(gen, cond, seeds, sampler=sampler, steps=steps)
    again = sample(gen, cond, seeds, sampler=sampler, steps=steps)
    one = sample(gen, Conditions(cond.spatial[2:]), seeds[2:], sampler=sampler, steps=steps)
    assert torch.equal(full, again)
    assert torch.equal(full[2:], one)
    assert not torch.allclose(full[0], full[1])  # different indices, different noise


def test_sde_dpm_solver_draws_fresh_noise_at_every_step():
    """The stochastic DPM-Solver++ is not the deterministic one: same seeds, other samples; with the same
    per-sample generators its trajectory is reproducible (the step noise comes from them, not the global RNG)."""
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image")).eval()
    cond = Conditions(torch.zeros(2, 1, 32, 32))
    ode = sample(gen, cond, [1, 2], sampler="dpm++", steps=4)
    sde = sample(gen, cond, [1, 2], sampler="sde-dpm++", steps=4)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(sde, sample(gen, cond, [1, 2], sampler="sde-dpm++", steps=4))
    assert not torch.allclose(ode, sde, atol=1e-3)
    with pytest.raises(ConfigError, match="repaint_jumps"):
        sample(gen, cond, [1], sampler="sde-dpm++", steps=4, repaint_jumps=1)


def test_inpaint_keeps_every_pixel_outside_the_mask(demo_arrays, tmp_path):
    gen_dir = _saved("inpaint", tmp_path / "g")
    bg = normals(demo_arrays)
    source = make_mask_source("size", pairs(demo_arrays), 32)
    samples = synthesize(gen_dir, tmp_path / "s", 4, masks_from=source, backgrounds=bg, batch_size=3, progress=False,
                         sampling=SamplingConfig(sampler="ddim", steps=3, repaint_jumps=1))
    for s in samples:
        img, m = read_image(tmp_path / "s" / s.image), read_mask(tmp_path / "s" / s.masks[0])
        ref = bg.images[bg.ids.index(s.provenance.background_id)]
        assert m.any()
        assert np.array_equal(img[m == 0], ref[m == 0])  # bit for bit
        assert not np.array_equal(img[m == 1], ref[m == 1])  # something was painted inside
    with pytest.raises(ConfigError, match="repaint_jumps"):
        synthesize(gen_dir, tmp_path / "t", 1, masks_from=source, backgrounds=bg,
                   sampling=SamplingConfig(sampler="dpm++", repaint_jumps=1),
                   progress=False)


def test_repaint_share_repaints_the_source_lesion_and_leaves_the_other_draws_alone(demo_arrays, tmp_path):
    """``repaint_share``: every other sample (share 0.5) is painted onto the labelled image its jittered mask came
    from, with the label joined with that image's lesion (nothing of the real lesion left unlabelled) and every
    pixel outside the label kept; the other samples are bit for bit those of a set without repainting."""
    gen_dir = _saved("inpaint", tmp_path / "g")
    real, bg = pairs(demo_arrays, lesion_only=True), normals(demo_arrays)
    kw = dict(masks_from=make_mask_source("jitter", real, 32), real=real, batch_size=4, progress=False,
              sampling=SamplingConfig(sampler="ddim", steps=3))
    mixed = synthesize(gen_dir, tmp_path / "mixed", 6, backgrounds=bg, repaint_share=0.5, **kw)
    plain = synthesize(gen_dir, tmp_path / "plain", 6, backgrounds=bg, **kw)
    for i, (s, t) in enumerate(zip(mixed, plain, strict=True)):
        img, m = read_image(tmp_path / "mixed" / s.image), read_mask(tmp_path / "mixed" / s.masks[0])
        p = s.provenance
        if i % 2:  # indices 1, 3, 5 repaint
            assert p.background_id == p.source_id and p.mask_info["repainted"] is True
            j = real.ids.index(p.source_id)
            assert m[real.masks[j] > 0].all()  # the real lesion lies inside the label
            assert np.array_equal(img[m == 0], real.images[j][m == 0])
            assert p.mask_info["area_frac"] == pytest.approx(m.mean())
        else:
            assert p.background_id in bg.ids
            assert (tmp_path / "mixed" / s.image).read_bytes() == (tmp_path / "plain" / t.image).read_bytes()
    # share 1: no lesion-free backgrounds needed
    assert len(synthesize(gen_dir, tmp_path / "all", 2, repaint_share=1.0, **kw)) == 2
    with pytest.raises(ConfigError, match="mask_source 'jitter'"):
        synthesize(gen_dir, tmp_path / "size", 2, repaint_share=1.0,
                   **{**kw, "masks_from": make_mask_source("size", real, 32)})
    with pytest.raises(ConfigError, match="lesion-free backgrounds"):
        synthesize(gen_dir, tmp_path / "none", 2, repaint_share=0.5, **kw)


def test_paste_strength_redraws_the_pasted_real_lesion_from_its_noised_image(demo_arrays, tmp_path):
    """``paste_strength``: sample i starts from copy-paste's pair i (same lesion, background, place and label) and
    the generator re-draws inside the label; outside it every pixel is the pasted image's. A low strength keeps the
    re-drawn lesion nearer the pasted one than strength 1 (drawn from pure noise in the same outline)."""
    from lesionforge.segment.config import CopyPasteConfig
    from lesionforge.segment.pasted_set import pasted_pair

    gen_dir = _saved("inpaint", tmp_path / "g")
    real, bg = pairs(demo_arrays, lesion_only=True), normals(demo_arrays)
    kw = dict(backgrounds=bg, real=real, batch_size=3, progress=False, sampling=SamplingConfig(sampler="ddim", steps=4))
    gap = {}
    for strength in (0.25, 1.0):
        out = tmp_path / f"s{strength}"
        samples = synthesize(gen_dir, out, 4, paste_strength=strength, **kw)
        diffs = []
        for s in samples:
            img, m = read_image(out / s.image), read_mask(out / s.masks[0])
            ref, ref_mask, info = pasted_pair(s.provenance.sample_index, 0, real, bg, CopyPasteConfig())
            p = s.provenance
            assert np.array_equal(m, ref_mask) and m.any()  # the label is the pasted lesion's mask
            assert (p.mask_source, p.source_id, p.background_id) == ("pasted", info["source_id"], info["background_id"])
            assert p.mask_info["paste_strength"] == strength
            assert np.array_equal(img[m == 0], ref[m == 0])  # outside the label: the pasted image, bit for bit
            diffs.append(np.abs(img[m == 1].astype(float) - ref[m == 1]).mean())
        gap[strength] = float(np.mean(diffs))
    assert 0 < gap[0.25] < gap[1.0] / 2  # re-drawn, but from the pasted lesion
    assert json.loads((tmp_path / "s0.25" / "synthesis.json").read_text())["paste_strength"] == 0.25
    with pytest.raises(ConfigError, match="give one"):
        synthesize(gen_dir, tmp_path / "both", 2, paste_strength=0.5, repaint_share=0.5, **kw)
    with pytest.raises(ConfigError, match="labelled pairs"):
        synthesize(gen_dir, tmp_path / "nolabels", 2, paste_strength=0.5, **{**kw, "real": None})


def test_sdedit_strength_one_is_the_plain_run_and_a_low_strength_stays_near_init():
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image")).eval()
    cond = Conditions(torch.zeros(2, 1, 32, 32))
    init = torch.linspace(-0.8, 0.8, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    plain = sample(gen, cond, [1, 2], sampler="dpm++", steps=5)
    assert torch.equal(plain, sample(gen, cond, [1, 2], sampler="dpm++", steps=5, init=init, strength=1.0))
    for sampler in ("dpm++", "sde-dpm++", "ddim", "ddpm"):
        near = sample(gen, cond, [1, 2], sampler=sampler, steps=5, init=init, strength=0.2)  # the last step only
        assert (near - init).abs().mean() < (plain - init).abs().mean() / 2, sampler
    with pytest.raises(ConfigError, match="give init"):
        sample(gen, cond, [1], steps=5, strength=0.5)
    with pytest.raises(ConfigError, match="strength must lie"):
        sample(gen, cond, [1], steps=5, init=init[:1], strength=0.0)


def _files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_synthesize_provenance_determinism_and_resume(demo_arrays, tmp_path, monkeypatch):
    gen_dir = _saved("mask2image", tmp_path / "g")
    source = make_mask_source("jitter", pairs(demo_arrays), 32)
    kw = dict(masks_from=source, sampling=SamplingConfig(steps=3), progress=False)
    first = synthesize(gen_dir, tmp_path / "a", 5, batch_size=2, seed=3, **kw)
    assert [s.id for s in first] == [f"syn-mask2image-s3-{i:06d}" for i in range(5)]
    p = first[0].provenance
    assert first[0].origin == "synthetic" and p.generator == "mask2image" and p.seed == 3
    assert p.sampler == "dpm++" and p.steps == 3 and p.mask_source == "jitter" and p.source_id.startswith("demo_")
    assert len(p.checkpoint_hash) == 16 and p.code_version
    synthesize(gen_dir, tmp_path / "b", 5, batch_size=5, seed=3, **kw)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # same seed, other batch size: same bytes

    real_append = synth_module.append_manifest
    calls = []

    def append_then_die(path, rows):
        real_append(path, rows)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(synth_module, "append_manifest", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        synthesize(gen_dir, tmp_path / "c", 5, batch_size=2, seed=3, **kw)
    assert len(read_manifest(tmp_path / "c" / "manifest.jsonl")) == 2
    synthesize(gen_dir, tmp_path / "c", 5, batch_size=2, seed=3, **kw)
    assert len(calls) == 3  # resumed: 3 samples left, in batches of 2
    assert _files(tmp_path / "a") == _files(tmp_path / "c")
    assert [s.id for s in read_manifest(tmp_path / "c" / "manifest.jsonl")] == [s.id for s in first]


def test_joint_masks_are_cleaned_and_recorded(tmp_path):
    gen_dir = _saved("joint", tmp_path / "g")
    samples = synthesize(gen_dir, tmp_path / "s", 2, sampling=SamplingConfig(steps=3), progress=False)
    for s in samples:
        cleaning = s.provenance.model_extra["mask_cleaning"]
        assert s.provenance.mask_source == "joint" and cleaning["opening"] == 1
        m = read_mask(tmp_path / "s" / s.masks[0])
        assert abs(m.mean() - cleaning["area_frac"]) < 1e-9


def test_edge_text_uses_real_masks_and_prompts(demo_arrays, tmp_path):
    gen_dir = _saved("edge-text", tmp_path / "g", text=True, dataset="kvasir-seg", guidance_scale=2.0)
    real = pairs(demo_arrays, lesion_only=True)
    samples = synthesize(gen_dir, tmp_path / "s", 3, real=real, sampling=SamplingConfig(steps=3), progress=False)
    for i, s in enumerate(samples):
        assert s.provenance.source_id == real.ids[i] and s.provenance.guidance_scale == 2.0
        assert "polyp" in s.provenance.prompt.lower()
        assert np.array_equal(read_mask(tmp_path / "s" / s.masks[0]), real.masks[i])  # the real mask is the label


def test_inpaint_guide_blends_known_region():
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("inpaint")).eval()
    known = torch.rand(1, 3, 32, 32) * 2 - 1
    region = torch.zeros(1, 1, 32, 32)
    region[..., 10:20, 10:20] = 1
    cond = Conditions(torch.cat([known * (1 - region), region * 2 - 1], 1))
    x0 = sample(gen, cond, [1], sampler="ddim", steps=3, inpaint=InpaintGuide(known, region))
    torch.testing.assert_close(x0 * (1 - region), known * (1 - region))  # last step sets the known region


def test_missing_conditions_are_clear_errors(demo_arrays, tmp_path):
    gen_dir = _saved("inpaint", tmp_path / "g")
    with pytest.raises(ConfigError, match="needs masks_from"):
        synthesize(gen_dir, tmp_path / "s", 1, backgrounds=normals(demo_arrays), progress=False)
    source = make_mask_source("size", None, 32)
    with pytest.raises(ConfigError, match="lesion-free backgrounds"):
        synthesize(gen_dir, tmp_path / "s", 1, masks_from=source, progress=False)


def test_resume_refuses_a_different_run(demo_arrays, tmp_path):
    from lesionforge.errors import OverwriteError

    gen_dir = _saved("joint", tmp_path / "g")
    synthesize(gen_dir, tmp_path / "s", 1, sampling=SamplingConfig(steps=2), progress=False)
    with pytest.raises(OverwriteError, match="seed"):
        synthesize(gen_dir, tmp_path / "s", 2, sampling=SamplingConfig(steps=2), seed=1, progress=False)
    assert len(synthesize(gen_dir, tmp_path / "s", 2, sampling=SamplingConfig(steps=2), seed=1, overwrite=True,
                          progress=False)) == 2
