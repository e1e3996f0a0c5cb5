"""Trainer: the loss falls, a killed run resumes to the same weights, latent mode runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_generate_common import TinyCodec, normals, pairs, tiny_cfg

from lesionforge.generate import trainer
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.models import LesionGenerator, read_meta
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainbatch import make_mask_source
from lesionforge.generate.trainer import train_generator


def test_training_loss_falls(demo_arrays, tmp_path):
    cfg = tiny_cfg("mask2image", steps=40, batch_size=4, lr=2e-3, checkpoint_every=40)
    out = train_generator(cfg, pairs(demo_arrays), tmp_path / "g", progress=False)
    losses = json.loads((out / "checkpoint-40" / "state.json").read_text(encoding="utf-8"))["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert (out / "loss.png").stat().st_size > 0 and (out / "samples" / "final.png").is_file()
    meta = read_meta(out)  # training wall time and threads travel with the model
    assert meta["train_seconds"] > 0 and meta["torch_threads"] == torch.get_num_threads()


def _weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_after_kill_gives_identical_weights(demo_arrays, tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg("inpaint", steps=6, checkpoint_every=3, flip=True)
    data, bg = pairs(demo_arrays, lesion_only=True), normals(demo_arrays)
    straight = train_generator(cfg, data, tmp_path / "straight", backgrounds=bg, progress=False)

    real_save = trainer.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the process is killed right after the first checkpoint

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_generator(cfg, data, tmp_path / "killed", backgrounds=bg, progress=False)
    assert (tmp_path / "killed" / "checkpoint-3").is_dir() and not (tmp_path / "killed" / "unet").exists()
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    capsys.readouterr()
    resumed = train_generator(cfg, data, tmp_path / "killed", backgrounds=bg, progress=False)
    assert "from step 3 of 6 (checkpoint-3)" in capsys.readouterr().err  # the resumed run says from where
    a, b = _weights(straight), _weights(resumed)  # final (EMA) weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw_a, raw_b = _weights(straight / "checkpoint-6" / "model"), _weights(resumed / "checkpoint-6" / "model")
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert json.loads((resumed / "checkpoint-6" / "state.json").read_text(encoding="utf-8"))["losses"] == \
        json.loads((straight / "checkpoint-6" / "state.json").read_text(encoding="utf-8"))["losses"]
    from lesionforge.errors import ConfigError

    with pytest.raises(ConfigError, match="lr changed"):  # resuming under other settings is refused
        train_generator(tiny_cfg("inpaint", steps=6, lr=1e-2), data, resumed, backgrounds=bg, progress=False)


def test_latent_inpaint_end_to_end(demo_arrays, tmp_path):
    codec = TinyCodec()
    cfg = tiny_cfg("inpaint", space="latent", autoencoder="unused-codec-passed-directly", steps=2,
                   checkpoint_every=2, block_out_channels=[16, 16], prediction_type="v_prediction")
    gen_dir = train_generator(cfg, pairs(demo_arrays, lesion_only=True), tmp_path / "g", codec=codec,
                              backgrounds=normals(demo_arrays), progress=False)
    gen = LesionGenerator.from_pretrained(gen_dir)
    assert gen.unet.config.in_channels == 4 + 5 and gen.cfg.space == "latent"
    bg = normals(demo_arrays)
    source = make_mask_source("size", pairs(demo_arrays), 32)
    samples = synthesize(gen_dir, tmp_path / "s", 2, masks_from=source, backgrounds=bg,
                         sampling=SamplingConfig(steps=3), codec=codec,
                         progress=False)
    from lesionforge.data.io import read_image, read_mask

    for s in samples:
        img, m = read_image(tmp_path / "s" / s.image), read_mask(tmp_path / "s" / s.masks[0])
        ref = bg.images[bg.ids.index(s.provenance.background_id)]
        assert m.any() and np.array_equal(img[m == 0], ref[m == 0])  # exact pixel paste-back after decoding


@pytest.mark.parametrize("kind", ["joint", "edge-text"])
def test_other_kinds_train(kind, demo_arrays, tmp_path):
    extra = dict(text=True, classes=["a", "b"], dataset="busi", guidance_scale=2.0) if kind == "edge-text" else {}
    data = pairs(demo_arrays)
    data.classes = ["a", "b"] * (len(data) // 2)
    out = train_generator(tiny_cfg(kind, steps=2, checkpoint_every=2, **extra), data, tmp_path / "g", progress=False)
    meta = json.loads((out / "lesionforge.json").read_text(encoding="utf-8"))
    assert meta["kind"] == kind and meta["scheduler"]["num_train_timesteps"] == 1000
    assert (out / "samples" / "final.png").is_file()


def test_bad_inputs_are_clear_errors(demo_arrays, tmp_path):
    from lesionforge.errors import ConfigError, OverwriteError

    with pytest.raises(ConfigError, match="resolution is 64"):
        train_generator(tiny_cfg("mask2image", resolution=64), pairs(demo_arrays), tmp_path / "a", progress=False)
    grey = normals(demo_arrays)
    grey.images = grey.images[..., :1]
    with pytest.raises(ConfigError, match="backgrounds: images have 1 channels"):
        train_generator(tiny_cfg("inpaint"), pairs(demo_arrays), tmp_path / "b", backgrounds=grey, progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("user file", encoding="utf-8")
    with pytest.raises(OverwriteError):
        train_generator(tiny_cfg("mask2image"), pairs(demo_arrays), tmp_path / "c", resume=False, progress=False)


def test_inpaint_loss_counts_the_regenerated_region_only():
    from lesionforge.generate.models import Conditions

    region = torch.zeros(2, 1, 8, 8)
    region[:, :, 2:5, 2:5] = 1
    cond = Conditions(spatial=torch.cat([torch.zeros(2, 3, 8, 8), region * 2 - 1], dim=1))
    target = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pred = target.clone()
    pred[region.expand_as(pred) == 0] += 5.0  # wrong everywhere outside the region, exact inside
    region_only = tiny_cfg("inpaint")
    assert region_only.outside_loss_weight == 0.0
    assert trainer.diffusion_loss(pred, target, cond, region_only).item() == 0.0
    full = region_only.model_copy(update={"outside_loss_weight": 1.0})
    assert trainer.diffusion_loss(pred, target, cond, full).item() == pytest.approx(25.0 * (1 - 9 / 64))
    pred_in = target + 1.0 * region  # an error of 1 inside: the mean over the region's pixels
    assert trainer.diffusion_loss(pred_in, target, cond, region_only).item() == pytest.approx(1.0)
    other = tiny_cfg("mask2image")  # other kinds: the plain MSE over every pixel
    assert trainer.diffusion_loss(pred, target, cond, other).item() == pytest.approx(25.0 * (1 - 9 / 64))


class _RecordingEncoder:
    """Stands in for MiniLM: records the prompts it is asked to encode."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, prompts):
        self.seen += list(prompts)
        return torch.zeros(len(prompts), 4, 16), torch.ones(len(prompts), 4, dtype=torch.bool)


@pytest.mark.parametrize("as_known", [True, False])
def test_inpaint_fills_are_prompted_as_what_they_are(demo_arrays, as_known):
    """Lesion re-generation gets lesion prompts; a fill of a lesion-free background the domain's "normal"
    prompt; a fill of an unlabelled image (content unknown) the null prompt. Without the option every fill
    gets a lesion prompt."""
    from lesionforge.conditioning.prompts import PromptLibrary, domain_for_dataset
    from lesionforge.generate.trainbatch import NORMAL_CLASS, BatchMaker

    cfg = tiny_cfg("inpaint", text=True, dataset="kvasir-seg", batch_size=64, cond_dropout=0.0,
                   prompt_fills_as_known=as_known)
    lesions, backgrounds = pairs(demo_arrays, lesion_only=True), normals(demo_arrays)
    unlabelled = lesions.subset(np.arange(len(lesions)))
    unlabelled = type(unlabelled)(unlabelled.images, unlabelled.masks, np.zeros(len(unlabelled), bool),
                                  [f"u-{i}" for i in unlabelled.ids], unlabelled.classes)
    enc = _RecordingEncoder()
    maker = BatchMaker(cfg, lesions, unlabelled=unlabelled, backgrounds=backgrounds, text_encoder=enc)
    maker.make(np.random.default_rng(0))
    for domain in ("colon-polyp", "breast-ultrasound", "generic"):  # every built-in library names the class
        assert NORMAL_CLASS in PromptLibrary.load(domain).spec.by_class, domain
    normal = set(PromptLibrary.load(domain_for_dataset("kvasir-seg")).prompts(NORMAL_CLASS))
    assert normal and len(enc.seen) == 64
    lesion_prompts = [p for p in enc.seen if p and p not in normal]
    if as_known:
        assert {p in normal for p in enc.seen if p} == {True, False} and "" in enc.seen
        assert all("polyp" in p and "no polyp" not in p for p in lesion_prompts)
    else:
        assert not any(p in normal for p in enc.seen) and "" not in enc.seen
        assert len(lesion_prompts) == 64
