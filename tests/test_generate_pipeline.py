"""The sampling pipeline: ``SamplingConfig`` defaults to the generator's own settings (also on the command line),
``LesionPipeline`` draws a batch that depends on each sample's seed only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_generate_common import tiny_cfg
from typer.testing import CliRunner

from lesionforge.errors import ConfigError
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.pipeline import LesionPipeline


def _pipeline(kind: str = "mask2image", **kw) -> LesionPipeline:
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg(kind, **kw)).eval()
    return LesionPipeline(gen, gen.noise_scheduler())


def _masks(n: int) -> np.ndarray:
    masks = np.zeros((n, 32, 32), np.uint8)
    for k in range(n):
        masks[k, 4 + 3 * k:16 + 3 * k, 6:20] = 1
    return masks


def test_sampling_defaults_are_the_generators_own_and_given_values_win():
    cfg = tiny_cfg("inpaint", sampler="ddim", sample_steps=7, guidance_scale=1.5, repaint_jumps=2)
    assert SamplingConfig().resolved(cfg) == SamplingConfig(sampler="ddim", steps=7, guidance_scale=1.5,
                                                            repaint_jumps=2, eta=0.0, mask_guidance=False)
    given = SamplingConfig(steps=3, eta=0.5).resolved(cfg)
    assert (given.sampler, given.steps, given.guidance_scale, given.eta) == ("ddim", 3, 1.5, 0.5)
    with pytest.raises(ConfigError, match="repaint_jumps needs sampler"):
        SamplingConfig(sampler="dpm++").resolved(cfg)
    with pytest.raises(ConfigError, match="eta is a DDIM setting"):
        SamplingConfig(sampler="ddpm", repaint_jumps=0, eta=0.3).resolved(cfg)


@pytest.mark.parametrize("sampling", [SamplingConfig(sampler="dpm++", steps=3),
                                      SamplingConfig(sampler="ddim", steps=3, eta=1.0)])
def test_pipeline_batch_is_deterministic_per_seed(sampling):
    pipe = _pipeline()
    masks = _masks(3)
    out = pipe(masks, seeds=[11, 12, 13], sampling=sampling)
    assert out.images.shape == (3, 32, 32, 3) and out.images.dtype == np.uint8
    assert np.array_equal(out.masks, masks) and out.sampling.steps == 3
    again = pipe(masks, seeds=[11, 12, 13], sampling=sampling)
    alone = pipe(masks[2:], seeds=[13], sampling=sampling)  # another batch: sample 13 stays the same
    assert np.array_equal(out.images, again.images) and np.array_equal(out.images[2], alone.images[0])
    other = pipe(masks[2:], seeds=[14], sampling=sampling)
    assert not np.array_equal(alone.images, other.images)


def test_stochastic_ddim_differs_from_deterministic_ddim():
    pipe = _pipeline()
    still = pipe(_masks(1), seeds=[5], sampling=SamplingConfig(sampler="ddim", steps=3))
    noisy = pipe(_masks(1), seeds=[5], sampling=SamplingConfig(sampler="ddim", steps=3, eta=1.0))
    assert not np.array_equal(still.images, noisy.images)


def test_pipeline_is_a_diffusers_pipeline_and_says_what_a_kind_needs():
    pipe = _pipeline()
    assert set(pipe.components) >= {"unet", "scheduler"} and str(pipe.device) == "cpu"
    with pytest.raises(ConfigError, match="one per seed"):
        pipe(None, seeds=[1])


def test_cli_sampling_options_default_to_the_generators_settings(tmp_path):
    from lesionforge.cli import app

    torch.manual_seed(0)
    build_generator(tiny_cfg("joint", sampler="ddim", sample_steps=2)).eval().save_pretrained(tmp_path / "g")
    base = ["synthesize", str(tmp_path / "g"), "--n", "1"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "own")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "own" / "synthesis.json").read_text())
    assert (run["sampler"], run["steps"], run["guidance_scale"]) == ("ddim", 2, 1.0)
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "given"), "--steps", "3"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "given" / "synthesis.json").read_text())
    assert (run["sampler"], run["steps"]) == ("ddim", 3)  # the option wins, the rest stays the generator's


def test_cli_synthesize_repaint_share_paints_onto_the_data_images(demo_root, tmp_path):
    """``--repaint-share 1``: every inpainted sample lies on the --data image its jittered mask comes from."""
    from lesionforge.cli import app
    from lesionforge.data.manifest import read_manifest

    torch.manual_seed(0)
    build_generator(tiny_cfg("inpaint", sampler="ddim", sample_steps=2)).eval().save_pretrained(tmp_path / "g")
    res = CliRunner().invoke(app, ["synthesize", str(tmp_path / "g"), "--n", "3", "--data",
                                   str(demo_root), "--repaint-share", "1", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s" / "synthesis.json").read_text())["repaint_share"] == 1.0
    rows = read_manifest(tmp_path / "s" / "manifest.jsonl")
    assert len(rows) == 3 and all(r.provenance.background_id == r.provenance.source_id for r in rows)


def test_mask_guidance_needs_a_generator_that_learned_mask_unknown():
    masks = _masks(2)
    with pytest.raises(ConfigError, match="mask_guidance needs a generator that learned 'mask unknown'.*without "
                                          "pretraining"):
        _pipeline()(masks, seeds=[1, 2], sampling=SamplingConfig(steps=2, guidance_scale=2.0, mask_guidance=True))
    with pytest.raises(ConfigError, match="kind 'inpaint'"):
        _pipeline("inpaint", pretrain_steps=2)(masks, np.zeros((2, 32, 32, 3), np.uint8), seeds=[1, 2],
                                               sampling=SamplingConfig(steps=2, mask_guidance=True))
    with pytest.raises(ConfigError, match="guidance_region is measured from the label mask"):
        _pipeline("joint")(seeds=[1], sampling=SamplingConfig(steps=2, guidance_region=2))


def test_mask_guidance_changes_the_draw_and_scale_one_is_the_unguided_draw():
    pipe, masks = _pipeline(pretrain_steps=2), _masks(2)
    plain = pipe(masks, seeds=[3, 4], sampling=SamplingConfig(sampler="sde-dpm++", steps=3))
    same = pipe(masks, seeds=[3, 4], sampling=SamplingConfig(sampler="sde-dpm++", steps=3, mask_guidance=True,
                                                             guidance_region=2))
    assert np.array_equal(plain.images, same.images)  # scale 1: the conditional prediction, bit for bit
    guided = pipe(masks, seeds=[3, 4], sampling=SamplingConfig(sampler="sde-dpm++", steps=3, guidance_scale=3.0,
                                                               mask_guidance=True))
    near = pipe(masks, seeds=[3, 4], sampling=SamplingConfig(sampler="sde-dpm++", steps=3, guidance_scale=3.0,
                                                             mask_guidance=True, guidance_region=2))
    assert not np.array_equal(plain.images, guided.images) and not np.array_equal(guided.images, near.images)
    assert not np.array_equal(plain.images, near.images)


def test_cli_mask_guidance_options_reach_the_run_file_and_bad_use_is_one_line(demo_root, tmp_path):
    from lesionforge.cli import app

    torch.manual_seed(0)
    build_generator(tiny_cfg("mask2image", sampler="ddim", sample_steps=2, pretrain_steps=2)).eval() \
        .save_pretrained(tmp_path / "g")
    build_generator(tiny_cfg("joint", sampler="ddim", sample_steps=2)).eval().save_pretrained(tmp_path / "j")
    res = CliRunner().invoke(app, ["synthesize", str(tmp_path / "g"), "--n", "1", "--out", str(tmp_path / "s"),
                                   "--data", str(demo_root), "--guidance-scale", "2", "--mask-guidance",
                                   "--guidance-region", "3"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "s" / "synthesis.json").read_text())
    assert (run["guidance_scale"], run["mask_guidance"], run["guidance_region"]) == (2.0, True, 3)
    res = CliRunner().invoke(app, ["synthesize", str(tmp_path / "j"), "--n", "1", "--out", str(tmp_path / "t"),
                                   "--guidance-region", "3"])
    assert isinstance(res.exception, ConfigError) and "guidance_region is measured" in str(res.exception)
    assert not (tmp_path / "t").exists()  # refused before the output folder is made
