"""Latent segmenter and filter on demo data with tiny models: correct masks kept, corrupted ones rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, read_manifest, write_manifest
from lesionforge.errors import ConfigError, OverwriteError
from lesionforge.generate.autoencoder import AutoencoderConfig, LatentCodec, build_autoencoder, latent_scale
from lesionforge.validate.filter import (
    auto_threshold,
    best_by_band,
    best_per_source,
    contrast_threshold,
    filter_manifest,
    list_rejected,
    source_quotas,
)
from lesionforge.validate.latent_segmenter import LatentSegmenter, LatentSegmenterConfig, train_latent_segmenter
from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig, train_pixel_segmenter
from lesionforge.validate.validator import load_validator

N_TRAIN = 24  # demo pairs 0..23 train the validators, 24..31 are real val, 32..39 are lesion-free


def _pairs(demo, idx) -> PairArrays:
    idx = list(idx)
    return PairArrays(demo.images[idx], demo.masks[idx], np.ones(len(idx), bool), [demo.ids[i] for i in idx],
                      [None] * len(idx))


@pytest.fixture(scope="module")
def validators(demo_arrays, tmp_path_factory):
    """A latent validator on an untrained tiny codec (its latents still carry position) and a pixel one."""
    root = tmp_path_factory.mktemp("validators")
    train, val = _pairs(demo_arrays, range(N_TRAIN)), _pairs(demo_arrays, range(N_TRAIN, 40))
    torch.manual_seed(0)
    codec = LatentCodec(build_autoencoder(AutoencoderConfig(
        resolution=32, block_out_channels=(8, 16, 16), norm_num_groups=8, mid_block_attention=False)))
    codec.vae.register_to_config(scaling_factor=latent_scale(codec, train.images))
    cfg = LatentSegmenterConfig(resolution=32, block_out_channels=(16, 32), max_timestep=50, steps=200,
                                batch_size=8, lr=5e-3, checkpoint_every=100)
    latent = train_latent_segmenter(cfg, train, codec, root / "latent", val=val)
    pcfg = PixelSegmenterConfig(resolution=32, features=(8, 8, 16, 16, 32, 8), steps=40, batch_size=8, lr=3e-3)
    pixel = train_pixel_segmenter(pcfg, train, root / "pixel", val=val)
    return latent, pixel


@pytest.fixture(scope="module")
def synthetic_manifest(demo_arrays, tmp_path_factory):
    """Real demo images posing as synthetic samples: correct, shifted and swapped masks, and lesion-free."""
    root = tmp_path_factory.mktemp("synthetic")
    rows = []
    lesion_ids = range(N_TRAIN, 32)
    for i in lesion_ids:
        img, m = demo_arrays.images[i], demo_arrays.masks[i]
        # the other sample's mask that overlaps this lesion least: a wrong label, not a lucky near-copy
        other = min((j for j in lesion_ids if j != i), key=lambda j: (demo_arrays.masks[j] & m).sum())
        variants = {"ok": m, "shift": np.roll(m, (16, 16), axis=(0, 1)), "swap": demo_arrays.masks[other]}
        write_image(root / "images" / f"{i}.png", img)
        for name, mask in variants.items():
            write_mask(root / "masks" / f"{i}_{name}.png", mask)
            rows.append(Sample(id=f"{name}_{i}", image=f"images/{i}.png", masks=[f"masks/{i}_{name}.png"],
                               origin="synthetic", provenance=Provenance(generator="test", seed=i)))
    for i in range(32, 36):
        write_image(root / "images" / f"{i}.png", demo_arrays.images[i])
        rows.append(Sample(id=f"free_{i}", image=f"images/{i}.png", has_mask=False, origin="synthetic"))
    rows.append(Sample(id="real_0", image="images/24.png", masks=["masks/24_ok.png"]))
    return write_manifest(root / "synthetic.jsonl", rows)


def _validation(path) -> dict[str, dict]:
    # written in another folder than the set's, a filtered manifest names the set's files by absolute path
    return {s.id: s.provenance.validation for s in read_manifest(path, allow_outside=True) if s.origin == "synthetic"}


def test_latent_segmenter_is_one_forward_pass(validators):
    seg = load_validator(validators[0]).segmenter
    assert isinstance(seg, LatentSegmenter)
    calls = []
    seg.unet.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(2, 4, 8, 8)
    prob = seg.predict(z, torch.tensor([0, 40]))
    assert prob.shape == (2, 1, 32, 32) and 0 <= prob.min() and prob.max() <= 1
    assert len(calls) == 1
    assert torch.allclose(seg.predict(z, 0), seg.predict(z, torch.tensor([0, 0])))


def test_filter_keeps_matching_rejects_corrupted(validators, synthetic_manifest, tmp_path):
    before = {p: p.read_bytes() for p in synthetic_manifest.parent.rglob("*") if p.is_file()}
    out = tmp_path / "filtered.jsonl"
    report = filter_manifest(synthetic_manifest, validators[0], out)
    v = _validation(out)
    groups = {g: [x for k, x in v.items() if k.startswith(g)] for g in ("ok", "shift", "swap", "free")}
    dice = {g: np.mean([x["dice"] for x in groups[g]]) for g in ("ok", "shift", "swap")}
    kept = {g: np.mean([x["kept"] for x in xs]) for g, xs in groups.items()}
    assert dice["ok"] > dice["shift"] + 0.1 and dice["ok"] > dice["swap"] + 0.1
    assert kept["ok"] > kept["shift"] and kept["ok"] > kept["swap"]
    # lesion-free samples are scored by predicted foreground, not Dice
    assert all(x["dice"] is None and 0 <= x["foreground_fraction"] <= 1 for x in groups["free"])
    # the automatic threshold is reported, nothing is deleted or changed, the input manifest stays as it was
    assert report.threshold_rule.startswith("auto: Dice threshold that best separates") and report.n_scored == 28
    assert all(x["threshold_rule"] == report.threshold_rule and x["validator_kind"] == "latent" for x in v.values())
    assert {p: p.read_bytes() for p in synthetic_manifest.parent.rglob("*") if p.is_file()} == before
    assert json.loads(out.with_suffix(".filter.json").read_text(encoding="utf-8"))["n_kept"] == report.n_kept
    assert sorted(s.id for s in list_rejected(out)) == sorted(report.rejected_ids)
    assert next(s for s in read_manifest(out, allow_outside=True) if s.id == "real_0").provenance is None


def test_contrast_threshold_maximises_true_minus_wrong_keep_rate():
    true, wrong = np.array([0.8, 0.7, 0.6, 0.2]), np.array([0.1, 0.3, 0.65, 0.0])
    # candidates: the floor and the true scores. Keep-rate differences: t=0.15 -> 1-.5, 0.2 -> 1-.5,
    # 0.6 -> .75-.25, 0.7 -> .5-0, 0.8 -> .25-0; ties go to the lowest t
    assert contrast_threshold(true, wrong, floor=0.15) == (0.15, 1.0, 0.5)
    assert contrast_threshold(true, wrong, floor=0.5) == (0.5, 0.75, 0.25)
    assert contrast_threshold(np.array([0.9, 0.8]), np.array([0.85, 0.82]), floor=0.1) == (0.9, 0.5, 0.0)
    assert contrast_threshold(np.array([0.05, 0.02]), np.array([0.0]), floor=0.1)[0] == 0.1  # never below floor


def test_auto_rules_from_stored_scores_and_from_given_val(validators, demo_arrays):
    v = load_validator(validators[0])
    assert len(v.info["val_dice_mismatched"]) == 2 * len(v.info["val_dice"])  # stored at training time
    stored, rule = auto_threshold(v)
    given, _ = auto_threshold(v, _pairs(demo_arrays, range(N_TRAIN, 40)))
    assert stored == pytest.approx(given) and "wrong masks" in rule and 0.1 <= stored <= 1
    pct, pct_rule = auto_threshold(v, rule="percentile")
    assert pct == max(float(np.percentile(v.info["val_dice"], 10)), 0.1) and "10th percentile" in pct_rule
    with pytest.raises(ConfigError, match="contrast"):
        auto_threshold(v, rule="median")
    v.info.pop("val_dice_mismatched")  # a validator trained before the contrast rule existed
    with pytest.raises(ConfigError, match="wrong masks"):
        auto_threshold(v)


def test_filter_fixed_threshold_pixel_validator_and_overwrite_rules(validators, synthetic_manifest, tmp_path):
    out = tmp_path / "pixel.jsonl"
    report = filter_manifest(synthetic_manifest, validators[1], out, threshold=0.99)
    assert report.validator_kind == "pixel" and report.threshold == 0.99
    assert report.threshold_rule == "given: Dice >= 0.99"
    assert all(x["validator_kind"] == "pixel" for x in _validation(out).values())
    with pytest.raises(OverwriteError):
        filter_manifest(synthetic_manifest, validators[1], out)
    with pytest.raises(OverwriteError, match="in_place"):
        filter_manifest(synthetic_manifest, validators[1], synthetic_manifest)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        filter_manifest(synthetic_manifest, validators[1], tmp_path / "x.jsonl", threshold=1.5)


def test_cli_filter_and_list_rejected(validators, synthetic_manifest, tmp_path):
    import typer
    from typer.testing import CliRunner

    from lesionforge.cli import validate as cli_validate

    app = typer.Typer()
    cli_validate.register(app, app)
    out = tmp_path / "cli.jsonl"
    res = CliRunner().invoke(app, ["filter", str(synthetic_manifest), "--validator", str(validators[0]),
                                   "--out", str(out), "--threshold", "0.3"])
    assert res.exit_code == 0, res.output
    assert "kept" in res.output and "given: Dice >= 0.3" in res.output
    rejected = [s.id for s in list_rejected(out)]
    listed = CliRunner().invoke(app, ["filter", str(out), "--list-rejected"])
    assert listed.exit_code == 0 and all(r in listed.output for r in rejected)
    bad = CliRunner().invoke(app, ["filter", str(synthetic_manifest), "--validator", str(validators[0]),
                                   "--threshold", "high"])
    assert bad.exit_code != 0
    banded = CliRunner().invoke(app, ["filter", str(synthetic_manifest), "--validator", str(validators[0]),
                                      "--out", str(tmp_path / "banded.jsonl"), "--threshold", "0",
                                      "--keep-best", "1", "--keep-bands"])
    assert banded.exit_code == 0, banded.output
    assert all(s.provenance.validation.get("keep_bands") for s in read_manifest(tmp_path / "banded.jsonl",
                                                                                 allow_outside=True)
               if s.origin == "synthetic" and s.provenance.validation.get("dice") is not None)


def test_validator_kinds_are_registered_and_an_unknown_kind_is_named(tmp_path):
    from lesionforge.errors import CheckpointError
    from lesionforge.validate.validator import INFO_FILE

    (tmp_path / INFO_FILE).write_text(json.dumps({"kind": "voxel"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"unknown validator kind 'voxel' \(known: latent, pixel\)"):
        load_validator(tmp_path)
    with pytest.raises(CheckpointError, match="no validator.json"):
        load_validator(tmp_path / "empty")


def test_best_per_source_keeps_the_k_best_passing_samples_of_each_source():
    dice = np.array([0.9, 0.5, 0.7, 0.8, 0.2, 0.7])
    kept = np.array([True, True, True, False, True, True])
    sources = ["a", "a", "a", "b", None, "a"]
    # source a: 0.9, 0.7 (the earlier of the two 0.7s) kept; b's only sample had failed already; no source: as is
    assert best_per_source(dice, kept, sources, 2).tolist() == [True, False, True, False, True, False]
    assert best_per_source(dice, kept, sources, 5).tolist() == kept.tolist()


def test_best_by_band_keeps_the_bands_drawn_where_best_per_source_keeps_only_large_lesions():
    # 4 sources, each: one small draw (Dice 0.3), one medium (0.5), two large (0.8, 0.7), k = 2
    dice = np.array([0.3, 0.5, 0.8, 0.7] * 4)
    bands = np.array([0, 1, 2, 2] * 4)
    sources = [s for s in "abcd" for _ in range(4)]
    kept = np.ones(16, bool)
    plain = best_per_source(dice, kept, sources, 2)
    assert sorted(bands[plain].tolist()) == [2] * 8  # the validator's ranking keeps no small or medium lesion
    balanced = best_by_band(dice, kept, sources, bands, 2)
    # drawn 4 / 4 / 8 -> kept 2 / 2 / 4 of the 8, still 2 per source; the small band is filled first
    assert sorted(bands[balanced].tolist()) == [0, 0, 1, 1, 2, 2, 2, 2]
    assert all(balanced[[i for i, s in enumerate(sources) if s == src]].sum() == 2 for src in "abcd")
    assert balanced[[0, 4]].all() and balanced[[1, 5]].all() and balanced[[10, 11, 14, 15]].all()


def test_best_by_band_reaches_the_small_quota_when_each_source_ranks_its_small_draw_last():
    # every source draws one small (low Dice) and three medium / large ones, k = 2; in one Dice order over all
    # bands each source's two slots go to its medium and large draws before any small one is reached
    dice = np.array([0.2, 0.6, 0.7, 0.9] * 6)
    bands = np.array([0, 1, 2, 2] * 6)
    sources = [s for s in "abcdef" for _ in range(4)]
    out = best_by_band(dice, np.ones(24, bool), sources, bands, 2)
    # drawn 6 / 6 / 12 of 24 -> quotas 3 / 3 / 6 of 12
    assert sorted(bands[out].tolist()) == [0] * 3 + [1] * 3 + [2] * 6
    assert all(out[4 * k:4 * k + 4].sum() == 2 for k in range(6))


def test_best_by_band_still_fills_every_source_when_its_band_is_full():
    # x and y draw large lesions only, z small ones; quotas 3 large / 3 small of 6: y's second large draw
    # is over its band's quota, and is kept all the same (no source keeps fewer than best_per_source gives it)
    dice = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    bands = np.array([2, 2, 2, 2, 0, 0, 0, 0])
    sources = ["x", "x", "y", "y", "z", "z", "z", "z"]
    out = best_by_band(dice, np.ones(8, bool), sources, bands, 2)
    assert out.tolist() == [True, True, True, True, True, True, False, False]
    # failed samples stay failed, sourceless ones as they are
    kept = np.array([True, False, True, True, True, True, True, True])
    out = best_by_band(dice, kept, ["x", "x", "y", "y", "z", "z", None, None], bands, 1)
    assert out.tolist() == [True, False, True, False, True, False, True, True]


def test_filter_keep_best_keeps_one_pair_per_source_the_best_scored(validators, synthetic_manifest, tmp_path):
    # the three masks of one image (true, shifted, swapped) come from one source, as n_per_real samples of one
    # labelled pair do; with every lesion passing (threshold 0), keep_best=1 keeps the best-scored one of each
    rows = read_manifest(synthetic_manifest, resolve=False)
    sourced = [s if s.provenance is None else s.model_copy(update={
        "provenance": s.provenance.model_copy(update={"source_id": str(s.provenance.seed)})}) for s in rows]
    path = write_manifest(synthetic_manifest.parent / f"sourced-{tmp_path.name}.jsonl", sourced)
    report = filter_manifest(path, validators[1], tmp_path / "best.jsonl", threshold=0.0, keep_best=1)
    v = _validation(tmp_path / "best.jsonl")
    by_source: dict[str, list[tuple[float, bool]]] = {}
    for s in read_manifest(tmp_path / "best.jsonl", allow_outside=True):
        if s.origin == "synthetic" and s.provenance is not None and s.provenance.source_id is not None:
            by_source.setdefault(s.provenance.source_id, []).append((v[s.id]["dice"], v[s.id]["kept"]))
    assert len(by_source) == 8 and all(len(g) == 3 for g in by_source.values())
    for g in by_source.values():
        assert sum(k for _, k in g) == 1 and max(g)[1]  # one kept per source: the one with the highest Dice
    assert report.keep_best == 1 and all(x.get("keep_best") == 1 for x in v.values() if x["dice"] is not None)
    with pytest.raises(ConfigError, match="keep_best"):
        filter_manifest(path, validators[1], tmp_path / "x.jsonl", keep_best=0)
    with pytest.raises(ConfigError, match="keep_bands balances keep_best"):
        filter_manifest(path, validators[1], tmp_path / "x.jsonl", keep_bands=True)
    # keep_bands: still one per source, recorded on every scored sample
    banded = filter_manifest(path, validators[1], tmp_path / "banded.jsonl", threshold=0.0, keep_best=1,
                             keep_bands=True)
    vb = _validation(tmp_path / "banded.jsonl")
    assert banded.n_kept == report.n_kept and banded.keep_bands
    assert all(x.get("keep_bands") for x in vb.values() if x["dice"] is not None)


def test_source_quotas_keep_the_share_of_each_sources_draws_and_the_share_of_all():
    # open loop: 8 draws per pair, keep 1/4 -> 2 each, the same as keep_best=2
    assert source_quotas(["a"] * 8 + ["b"] * 8, 0.25) == {"a": 2, "b": 2}
    # a steered round: a drawn 10 times, b 5, c once -> 16 draws, 4 kept, by largest remainder (2.5, 1.25, 0.25)
    quota = source_quotas(["a"] * 10 + ["b"] * 5 + ["c"], 0.25)
    assert quota == {"a": 3, "b": 1, "c": 0} and sum(quota.values()) == 4
    with pytest.raises(ConfigError, match="keep share"):
        source_quotas(["a"], 0.0)


def test_weighted_source_quotas_follow_the_weights_keep_the_total_and_never_exceed_a_sources_draws():
    src = ["a"] * 8 + ["b"] * 8 + ["c"] * 8  # 24 draws, keep 1/4 = 6
    assert source_quotas(src, 0.25, [1.0] * 24) == {"a": 2, "b": 2, "c": 2}  # equal weights: open loop's rule
    assert source_quotas(src, 0.25, [4.0] * 8 + [1.0] * 16) == {"a": 4, "b": 1, "c": 1}  # 6 x 4/6, 6 x 1/6 each
    # a source cannot keep more than it drew: the surplus of a's share goes to the others, in proportion
    big = source_quotas(["a"] * 2 + ["b"] * 8 + ["c"] * 8, 0.5, [100.0] * 2 + [1.0] * 8 + [3.0] * 8)
    assert big == {"a": 2, "b": 2, "c": 5} and sum(big.values()) == 9
    # weights on draws, not on sources: a source drawn twice as often holds twice the mass at equal weight
    assert source_quotas(["a"] * 8 + ["b"] * 4, 0.5, [1.0] * 12) == {"a": 4, "b": 2}
    with pytest.raises(ConfigError, match="positive weights"):
        source_quotas(src, 0.25, [1.0] * 23)
    with pytest.raises(ConfigError, match="positive weights"):
        source_quotas(src, 0.25, [0.0] * 24)


def test_filter_keep_share_keeps_the_same_count_when_draws_per_source_differ(validators, synthetic_manifest, tmp_path):
    # a closed-loop round draws some pairs more often: source "s0" holds 12 samples, "s1" 6, the sizeless ones
    # are grouped by the band their mask was drawn in; keep_share 1/3 keeps a third of each group, the best
    rows = read_manifest(synthetic_manifest, resolve=False)
    lesion = [s for s in rows if s.origin == "synthetic" and s.has_mask]
    regrouped = []
    for j, s in enumerate(lesion):
        src = "s0" if j < 12 else "s1" if j < 18 else None
        extra = {} if src is not None else {"mask_info": {"band_drawn": "small"}}
        regrouped.append(s.model_copy(update={"provenance": Provenance(generator="test", seed=j, source_id=src,
                                                                        **extra)}))
    path = write_manifest(synthetic_manifest.parent / f"steered-{tmp_path.name}.jsonl", regrouped)
    report = filter_manifest(path, validators[1], tmp_path / "share.jsonl", threshold=0.0, keep_share=1 / 3)
    v = _validation(tmp_path / "share.jsonl")
    groups = {"s0": lesion[:12], "s1": lesion[12:18], "band": lesion[18:]}
    assert {k: sum(v[s.id]["kept"] for s in g) for k, g in groups.items()} == {"s0": 4, "s1": 2, "band": 2}
    for g in groups.values():  # the kept ones are the best scored of their group
        kept = [v[s.id]["dice"] for s in g if v[s.id]["kept"]]
        assert min(kept) >= max(v[s.id]["dice"] for s in g if not v[s.id]["kept"])
    assert report.n_kept == 8 and report.keep_share == pytest.approx(1 / 3)
    # keep weights shift the quotas towards heavily weighted draws, the same 8 kept in all
    weights = [3.0] * 12 + [1.0] * (len(lesion) - 12)
    filter_manifest(path, validators[1], tmp_path / "weighted.jsonl", threshold=0.0, keep_share=1 / 3,
                    keep_weights=weights)
    w = _validation(tmp_path / "weighted.jsonl")
    counts = {k: sum(w[s.id]["kept"] for s in g) for k, g in groups.items()}
    assert counts["s0"] > 4 and sum(counts.values()) == 8 and all(x["keep_weighted"] for x in w.values())
    with pytest.raises(ConfigError, match="keep_share too"):
        filter_manifest(path, validators[1], tmp_path / "y.jsonl", keep_weights=weights)
    with pytest.raises(ConfigError, match="not both"):
        filter_manifest(path, validators[1], tmp_path / "x.jsonl", keep_best=1, keep_share=0.5)


def test_a_finished_validator_is_reused_as_it_is_and_a_changed_one_trains_on(validators, demo_arrays, tmp_path):
    """A resumed call on a validator trained to the end returns it untouched (no re-save with a blank final
    loss, no new code version); with other settings (more steps) it trains on from its last state."""
    import shutil

    latent, pixel = validators
    train = _pairs(demo_arrays, range(N_TRAIN))
    pcfg = PixelSegmenterConfig(resolution=32, features=(8, 8, 16, 16, 32, 8), steps=40, batch_size=8, lr=3e-3)
    lcfg = LatentSegmenterConfig(resolution=32, block_out_channels=(16, 32), max_timestep=50, steps=200,
                                 batch_size=8, lr=5e-3, checkpoint_every=100)
    for path, again in ((pixel, lambda: train_pixel_segmenter(pcfg, train, pixel)),
                        (latent, lambda: train_latent_segmenter(lcfg, train, None, latent))):
        files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(path).rglob("*") if p.is_file()}
        assert Path(again()) == Path(path)
        assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(path).rglob("*") if p.is_file()} == files
    copy = shutil.copytree(pixel, tmp_path / "pixel")
    train_pixel_segmenter(pcfg.model_copy(update={"steps": 41}), train, copy)
    info = json.loads((copy / "validator.json").read_text(encoding="utf-8"))
    assert info["config"]["steps"] == 41 and info["final_train_loss"] > 0
