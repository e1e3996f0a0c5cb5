"""Networks, training, resume, evaluation on a folder, and the CLI, on 32 px demo data with tiny networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lesionforge.data.arrays import PairArrays
from lesionforge.segment.config import AugmentConfig, MixConfig, SegmentConfig
from lesionforge.segment.metrics import evaluate
from lesionforge.segment.model_io import load_segmenter, predict
from lesionforge.segment.networks import NETWORKS, build_network
from lesionforge.segment.train import train_segmenter

TINY = (8, 8, 16, 16, 32, 8)
TINY_KWARGS = {
    "UNETR": {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
    # 32 px leaves a 1x1 bottleneck, where instance norm is undefined in training mode
    "SwinUNETR": {"depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 2, "norm_name": "batch"},
}


@pytest.fixture(scope="module")
def split(demo_arrays):
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    val = [0, 5, 10, 15, 20, 25, 33, 38]  # six lesion images, two lesion-free
    return a.subset([i for i in range(len(a)) if i not in val]), a.subset(val)


def _cfg(**kw) -> SegmentConfig:
    base = {"features": TINY, "resolution": 32, "steps": 80, "batch_size": 4, "lr": 1e-2, "warmup_steps": 5,
            "val_interval": 20}
    return SegmentConfig(**{**base, **kw})


@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_builds_and_runs_at_32px(name):
    torch.manual_seed(0)
    net = build_network(name, 3, TINY, 32, **TINY_KWARGS.get(name, {}))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    train, val = split
    out = tmp_path_factory.mktemp("seg") / "run"
    return train_segmenter(_cfg(augment=AugmentConfig(enabled=False)), train, val, out), out


def test_training_lowers_loss_and_beats_chance(trained, split):
    run, _ = trained
    losses = [h["loss"] for h in run.history]
    assert losses[-1] < 0.8 * losses[0]
    # chance: predicting nothing scores 1 on the two lesion-free images and 0 elsewhere
    empty_dice = 2 / 8
    assert run.best_val_mdice > empty_dice + 0.2
    res = evaluate(run.best_checkpoint, split[1])
    assert res.mdice == pytest.approx(run.best_val_mdice)  # the saved best model is the selected one


def test_checkpoint_round_trip(trained, split):
    run, _ = trained
    model = load_segmenter(run.best_checkpoint)
    prob = predict(model, split[1].images, batch_size=3)
    assert prob.shape == (8, 1, 32, 32) and float(prob.min()) >= 0 and float(prob.max()) <= 1
    assert model.segment_config.network == "BasicUNet"


def test_resume_gives_identical_weights(split, tmp_path):
    train, val = split
    cfg = _cfg(steps=6, val_interval=4, copy_paste={"enabled": True, "prob": 0.5})  # augmentation on
    train_segmenter(cfg, train, val, tmp_path / "straight")
    first = train_segmenter(cfg, train, val, tmp_path / "resumed", stop_after=3)
    assert first.steps == 3
    second = train_segmenter(cfg, train, val, tmp_path / "resumed")
    assert second.steps == 6
    a = load_file(tmp_path / "straight" / "last-0000006" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "last-0000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_mdice"] for h in first.history + second.history if "val_mdice" in h] == [
        h["val_mdice"] for h in json.loads((tmp_path / "straight" / "run.json").read_text(encoding="utf-8"))["history"]
    ]


@pytest.mark.parametrize("mode", ["patch-merge", "ratio", "synthetic-only"])
def test_training_with_synthetic_sets(split, tmp_path, mode):
    train, val = split
    rng = np.random.default_rng(0)
    noisy = np.clip(train.images.astype(int) + rng.integers(-10, 10, train.images.shape), 0, 255).astype(np.uint8)
    synthetic = PairArrays(noisy, train.masks, train.has_mask, [f"syn_{i}" for i in train.ids], train.classes)
    twins = {rid: [i] for i, rid in enumerate(train.ids[:20])}
    cfg = _cfg(steps=4, val_interval=2, mixing=MixConfig(mode=mode, ratio=1.0, patch_size=8))
    run = train_segmenter(cfg, train, val, tmp_path, synthetic=synthetic, twins=twins)
    assert run.steps == 4 and np.isfinite(run.history[-1]["loss"])


def test_evaluate_cli_on_a_folder(trained, demo_root, tmp_path):
    from lesionforge.cli import app

    _, out = trained
    result = CliRunner().invoke(app, ["segment", "evaluate", str(out / "best"), str(demo_root),
                                      "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert d["n_images"] == 32  # the demo folder's lesion images; the 8 image-only normals are not scored
    assert 0 < d["mdice"] <= 1 and d["n_lesions"] >= 32
    assert set(d["miss_rate_by_band"]) == {"small", "medium", "large"}


def test_train_cli(demo_root, tmp_path):
    from lesionforge.cli import app

    ids = sorted(p.stem for p in (demo_root / "images").iterdir())
    (tmp_path / "train.txt").write_text("\n".join(ids[:24]), encoding="utf-8")
    (tmp_path / "val.json").write_text(json.dumps({"val": ids[24:]}), encoding="utf-8")
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(
        "features: [8, 8, 16, 16, 32, 8]\nresolution: 32\nsteps: 2\nbatch_size: 2\nval_interval: 2\n", encoding="utf-8"
    )
    args = ["segment", "train", str(cfg), str(demo_root), "--out", str(tmp_path / "run"),
            "--train-ids", str(tmp_path / "train.txt"), "--val-ids", f"{tmp_path / 'val.json'}:val"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["steps"] == 2


def test_clear_errors_on_bad_input(split, tmp_path):
    from lesionforge.errors import CheckpointError, ConfigError, DataError, OverwriteError

    train, val = split
    with pytest.raises(DataError, match="resolution is 64"):
        train_segmenter(_cfg(resolution=64), train, val, tmp_path / "a")
    with pytest.raises(ConfigError, match="needs a synthetic set"):
        train_segmenter(_cfg(mixing=MixConfig(mode="ratio")), train, val, tmp_path / "b")
    train_segmenter(_cfg(steps=4), train, val, tmp_path / "c", stop_after=1)
    with pytest.raises(CheckpointError, match="different settings"):
        train_segmenter(_cfg(steps=4, lr=0.5), train, val, tmp_path / "c")
    with pytest.raises(OverwriteError):
        train_segmenter(_cfg(steps=4), train, val, tmp_path / "c", resume=False)


def test_gpu_fast_path_bf16_channels_last_trains_saves_and_resumes(split, tmp_path, monkeypatch):
    """The GPU path (bf16 autocast, channels-last), forced on CPU: it trains, checkpoints (contiguous
    safetensors), resumes and scores like the fp32 path does; CPU training leaves it off."""
    from lesionforge.segment import train as train_module

    assert not train_module.gpu_fast_path(torch.device("cpu"))
    monkeypatch.setattr(train_module, "gpu_fast_path", lambda device: True)
    train, val = split
    cfg = _cfg(steps=6, val_interval=3, augment=AugmentConfig(enabled=False))
    run = train_segmenter(cfg, train, val, tmp_path / "fast", stop_after=3)
    run = train_segmenter(cfg, train, val, tmp_path / "fast")
    assert run.steps == 6 and 0.0 <= run.best_val_mdice <= 1.0
    weights = load_file(tmp_path / "fast" / "last-0000006" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert 0.0 <= evaluate(run.best_checkpoint, val).mdice <= 1.0


def test_synthetic_donors_come_from_the_picked_synthetic_pairs(split, tmp_path):
    from lesionforge.errors import ConfigError
    from lesionforge.segment.config import CopyPasteConfig
    from lesionforge.segment.train import _HostBatches, _synthetic_donors

    train, val = split
    lesion = train.masks > 0
    # the synthetic pairs' lesions painted 30, except those of the first half (painted 200): only the second half
    # is picked as donors (a union set's pasted real lesions are not donors), so no paste may show 200
    syn_img = np.where(lesion[..., None], 30, 100).repeat(3, -1).astype(np.uint8)
    half = len(train) // 2
    syn_img[:half][lesion[:half]] = 200
    synthetic = PairArrays(syn_img, train.masks, train.has_mask, [f"syn_{i}" for i in train.ids], train.classes)
    plain = np.full_like(train.images, 100)
    blank = PairArrays(plain, np.zeros_like(train.masks), train.has_mask, train.ids, train.classes)
    paste = CopyPasteConfig(enabled=True, prob=1.0, feather_sigma=0.0, synthetic_donors=1.0)
    cfg = _cfg(mixing=MixConfig(mode="ratio", ratio=1.0), copy_paste=paste)
    donors = _synthetic_donors(cfg, synthetic, np.arange(half, len(train)))
    batches = _HostBatches(cfg, blank, synthetic, torch.device("cpu"), donors=donors)
    images, masks = batches.real(np.arange(len(train)), step=0)
    pasted = images[masks > 0, 0]  # bilinear rims blend a lesion with its frame (100); 200 would pass 100
    assert pasted.min() <= 40 and pasted.max() <= 100  # the picked donors' lesions only
    # a set to take lesions from is needed, and one with a lesion
    with pytest.raises(ConfigError, match="synthetic_donors needs a synthetic set"):
        train_segmenter(cfg.model_copy(update={"mixing": MixConfig()}), train, val, tmp_path / "a")
    empty = PairArrays(syn_img, np.zeros_like(train.masks), train.has_mask, synthetic.ids, train.classes)
    with pytest.raises(ConfigError, match="none of the synthetic pairs it may take from has a lesion"):
        train_segmenter(cfg, train, val, tmp_path / "b", synthetic=empty)
    run = train_segmenter(cfg.model_copy(update={"steps": 2, "val_interval": 2}), train, val, tmp_path / "c",
                          synthetic=synthetic, paste_donors=np.arange(half, len(train)))
    assert run.steps == 2 and np.isfinite(run.history[-1]["loss"])
