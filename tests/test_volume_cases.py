"""Volumes as first-class data: splits, subsets and leakage by case, bad volumes, MRI z-score, 3D Dice per case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import SPLITS, need_dataset

from lesionforge.data.readers import read_dataset
from lesionforge.data.splits import BenchmarkSplit, expand_cases
from lesionforge.data.volumes import case_of
from lesionforge.errors import CorruptFileError, DataError, SizeMismatchError
from lesionforge.segment.metrics import score_masks, volume_dice

SHAPE = (12, 10, 8)  # (X, Y, Z): slices along z are 10 x 12


def _write(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def _label() -> np.ndarray:
    """Foreground (labels 1 and 2) on slices z = 2..5; z = 0, 1, 6, 7 are foreground-free."""
    label = np.zeros(SHAPE, np.uint8)
    label[3:7, 2:5, 2:6] = 1
    label[3:7, 5:8, 2:6] = 2
    return label


def _volume_root(tmp_path, cases=("c1", "c2", "c3", "c4", "c5"), modality="MRI"):
    rng = np.random.default_rng(0)
    for case in cases:
        _write(tmp_path / "imagesTr" / f"{case}.nii.gz", rng.normal(500, 100, SHAPE).astype(np.float32))
        _write(tmp_path / "labelsTr" / f"{case}.nii.gz", _label())
    meta = {"name": "toy", "modality": {"0": modality}, "labels": {"0": "background", "1": "A", "2": "B"}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return tmp_path


def test_split_by_case_never_puts_slices_of_one_volume_in_two_splits(tmp_path):
    samples = read_dataset(_volume_root(tmp_path), negatives=True)
    split = BenchmarkSplit(train=["c1", "c2", "c3"], val=["c4"], test=["c5"], low_data_subsets={1: ["c2"]},
                           unit="case")
    where: dict[str, set[str]] = {}
    for name, ids, share in (("train", split.train, 0.5), ("val", split.val, 0.0), ("test", split.test, 1.0)):
        for sid in expand_cases(ids, samples, share):
            where.setdefault(case_of(sid), set()).add(name)
    assert where == {"c1": {"train"}, "c2": {"train"}, "c3": {"train"}, "c4": {"val"}, "c5": {"test"}}
    # the test case comes whole (every slice, in slice order) for its 3D Dice; val brings foreground slices only
    assert expand_cases(["c5"], samples, 1.0) == [f"c5/2_{z:04d}" for z in range(SHAPE[2])]
    assert expand_cases(["c4"], samples) == [f"c4/2_{z:04d}" for z in range(2, 6)]
    # share 0.5: as many negatives as foreground slices (4 of the 4 foreground-free ones)
    assert len(expand_cases(split.low_data(1), samples, 0.5)) == 8
    assert len(expand_cases(split.low_data(1), samples, 0.2)) == 5  # one negative: 1 / 5 of the slices


def test_leakage_check_places_slices_by_their_case(tmp_path):
    from lesionforge.data.checks import check_dataset

    root = _volume_root(tmp_path, cases=("a", "b"))
    same = nib.load(str(root / "imagesTr" / "a.nii.gz")).get_fdata().astype(np.float32)
    _write(root / "imagesTr" / "twin.nii.gz", same)  # the same scan under a second case name
    _write(root / "labelsTr" / "twin.nii.gz", _label())
    split = BenchmarkSplit(train=["a"], val=["b"], test=["twin"])
    report = check_dataset(root, splits=split, workers=1)
    assert report.split_leakage, "slices of a case and of its twin in another split must be flagged"
    assert all({case_of(i) for i in g} == {"a", "twin"} for g in report.split_leakage)


@pytest.mark.parametrize("problem", ["label shape", "NaN voxels", "4D file"])
def test_bad_volume_gets_a_one_line_error_naming_the_file(tmp_path, problem):
    image = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    label, bad = _label(), "bad.nii.gz"
    expected: type[DataError] = CorruptFileError
    if problem == "label shape":
        label, expected = label[:, :, :5], SizeMismatchError
    elif problem == "NaN voxels":
        image[2, 3, 4] = np.nan
    else:
        image = np.stack([image, image], axis=-1)  # (X, Y, Z, 2): a 4D series
    _write(tmp_path / "imagesTr" / bad, image)
    _write(tmp_path / "labelsTr" / bad, label)
    with pytest.raises(expected) as e:
        read_dataset(tmp_path)
    message = str(e.value)
    assert isinstance(e.value, DataError) and bad in message and "\n" not in message
    assert {"label shape": "!= image shape", "NaN voxels": "1 NaN", "4D file": "4D shape"}[problem] in message


def test_mri_dataset_json_selects_zscore_so_scanner_scale_does_not_matter(tmp_path):
    root = _volume_root(tmp_path, cases=("c1",))
    image = nib.load(str(root / "imagesTr" / "c1.nii.gz")).get_fdata().astype(np.float32)
    _write(root / "imagesTr" / "c2.nii.gz", image * 7.5 + 300)  # same scan, other scanner units
    _write(root / "labelsTr" / "c2.nii.gz", _label())
    from lesionforge.data.volumes import read_slice

    by_case = {case_of(s.id): s for s in read_dataset(root) if s.slice.index == 3}
    assert by_case["c1"].slice.zscore is not None
    a, b = (read_slice(by_case[c])[0].astype(int) for c in ("c1", "c2"))
    assert np.abs(a - b).max() <= 1  # z-scored per volume: the same uint8 slice
    assert abs(a.mean() - 127.5) < 10  # z = 0 maps to the middle of 0..255
    ct = _volume_root(tmp_path / "ct", cases=("c1",), modality="CT")
    assert read_dataset(ct)[0].slice.zscore is None  # CT keeps the intensity window


def test_dice3d_of_a_known_toy_volume():
    gt = np.zeros((4, 6, 6), bool)  # case "v": 4 slices, foreground on slices 1 and 2 (8 voxels)
    gt[1, 1:3, 1:3] = gt[2, 1:3, 1:3] = True
    pred = np.zeros_like(gt)
    pred[1, 1:3, 1:3] = True  # 4 voxels found on slice 1
    pred[3, 0, 0:2] = True  # 2 false voxels on a foreground-free slice
    ids = [f"v/2_{z:04d}" for z in (2, 0, 3, 1)]  # out of order: reassembly sorts by slice index
    order = [2, 0, 3, 1]
    cases, d3 = volume_dice(pred[order], gt[order], ids)
    assert cases == ["v"] and d3[0] == pytest.approx(2 * 4 / (2 * 4 + 2 + 4))  # 0.571
    empty = np.zeros((2, 6, 6), bool)
    ev = score_masks(np.concatenate([pred[order], empty]), np.concatenate([gt[order], empty]),
                     ids + ["w/2_0000", "w/2_0001"])
    assert ev.cases == ["v", "w"] and ev.dice3d[1] == 1.0  # nothing there, nothing claimed
    # per-slice metrics cover the slices with foreground only: slice 1 (Dice 1) and slice 2 (Dice 0)
    assert sorted(ev.ids) == ["v/2_0001", "v/2_0002"] and ev.mdice == pytest.approx(0.5)
    assert ev.to_dict()["per_case"]["dice3d"] == pytest.approx([d3[0], 1.0])
    assert score_masks(pred, gt, ["a", "b", "c", "d"]).cases == []  # 2D images: no 3D Dice


def test_the_per_slice_interval_of_volumes_resamples_test_cases_with_their_slices():
    """Two test cases whose slices all move together: over 8 slices the interval looks tight, over the 2 cases
    it spans both cases' differences."""
    from lesionforge.experiment.records import RunRecord
    from lesionforge.experiment.results import paired_diff

    ids = [f"c{c}/2_{k:04d}" for c in (1, 2) for k in range(4)]

    def rec(arm: str, seed: int, gain: dict[str, float]) -> RunRecord:
        dice = [0.5 + gain[i.split("/")[0]] + 0.001 * k for k, i in enumerate(ids)]
        return RunRecord(n_labelled=4, arm=arm, seed=seed, ids=ids, dice=dice, iou=dice, mdice=float(np.mean(dice)),
                         miou=float(np.mean(dice)), miss_rate=None,
                         miss_rate_by_band={"small": None, "medium": None, "large": None},
                         cases=["c1", "c2"], dice3d=[0.6, 0.6], mdice3d=0.6)

    base = [rec("baseline", s, {"c1": 0.0, "c2": 0.0}) for s in range(2)]
    arm = [rec("syn", s, {"c1": 0.1, "c2": -0.02}) for s in range(2)]
    d = paired_diff(arm, base, n_boot=500)["mdice"]
    assert d["mean"] == pytest.approx(0.04) and d["over_cases"]["mean"] == pytest.approx(0.04)
    assert d["over_cases"]["n_cases"] == 2
    assert d["over_cases"]["ci95"] == pytest.approx([-0.02, 0.1])  # each draw: c1 twice, c2 twice, or one each
    assert d["over_cases"]["ci95"][1] - d["over_cases"]["ci95"][0] > d["ci95"][1] - d["ci95"][0]


def test_paired_mdice3d_over_cases_in_results_and_report():
    from lesionforge.experiment.records import RunRecord
    from lesionforge.experiment.report import arms_table, diff_table
    from lesionforge.experiment.results import paired_diff

    def rec(arm: str, seed: int, d3: list[float]) -> RunRecord:
        return RunRecord(n_labelled=4, arm=arm, seed=seed, ids=["c1/2_0001"], dice=[0.5], iou=[0.4], mdice=0.5,
                         miou=0.4, miss_rate=None, miss_rate_by_band={"small": None, "medium": None, "large": None},
                         cases=["c1", "c2", "c3"], dice3d=d3, mdice3d=float(np.mean(d3)))

    base = [rec("baseline", s, [0.5, 0.6, 0.7]) for s in range(3)]
    arm = [rec("cp", s, [0.6, 0.7, 0.8 + 0.01 * s]) for s in range(3)]
    diffs = paired_diff(arm, base, n_boot=200)
    d = diffs["mdice3d"]
    assert d["unit"] == "cases" and d["n_images"] == 3 and d["mean"] == pytest.approx(0.1033, abs=1e-3)
    assert d["ci95"][0] > 0 and d["over_seeds"]["n_seeds"] == 3
    # the per-slice mDice's interval resampled by case as well (one test slice of one case here)
    assert diffs["mdice"]["over_cases"]["n_cases"] == 1 and diffs["mdice"]["over_cases"]["mean"] == 0.0
    assert "ΔmDice over cases" in diff_table({"cp": diffs})
    table = arms_table({"arms": {"baseline": {"mdice": [0.5], "miou": [0.4], "miss_rate": [None],
                                              "mdice3d": [0.6]}}})
    assert "mDice 3D" in table and "0.600" in table
    assert "ΔmDice 3D over cases" in diff_table({"cp": {"mdice3d": d}})


def test_position_subsets_split_each_structure_into_its_ends_and_its_middle():
    from lesionforge.data.volumes import position_subsets

    # case a: foreground slices 10..18 (positions 0, 1/8, ..., 1); case b: one slice; case c on another axis
    ids = [f"a/2_{k:04d}" for k in range(10, 19)] + ["b/2_0040", "c/0_0005", "c/0_0009", "not-a-slice.png"]
    got = position_subsets(ids)
    assert got["structure-ends"] == ["a/2_0010", "a/2_0011", "a/2_0017", "a/2_0018", "c/0_0005", "c/0_0009"]
    assert got["structure-middle"] == [f"a/2_{k:04d}" for k in range(12, 17)] + ["b/2_0040"]
    assert len(position_subsets(ids, ends=0.4)["structure-middle"]) == 2  # a/2_0014 and the one-slice case
    with pytest.raises(ValueError, match="ends must lie in"):
        position_subsets(ids, ends=0.5)


def test_compare_of_a_volume_result_shows_ends_and_middle(tmp_path):
    from typer.testing import CliRunner

    from lesionforge.cli import app
    from lesionforge.experiment.results import paired_from_result

    ids = [f"c{c}/2_{k:04d}" for c in (1, 2) for k in range(8)]
    ends = {i for i in ids if int(i[-4:]) in (0, 1, 6, 7)}
    # the arm loses 0.2 on every end slice and gains 0.05 in the middle: the mean alone would hide both
    base = [[0.7] * len(ids) for _ in range(3)]
    arm = [[0.5 if i in ends else 0.75 for i in ids] for _ in range(3)]

    def summary(dice: list[list[float]]) -> dict:
        means = [float(np.mean(d)) for d in dice]
        return {"mdice": means, "miou": means, "miss_rate": [None] * 3, "mdice3d": [0.8] * 3,
                "miss_rate_by_band": {b: [None] * 3 for b in ("small", "medium", "large")},
                "per_image": {"seeds": [0, 1, 2], "dice": dice, "iou": dice, "dice3d": [[0.8, 0.8]] * 3}}

    res = {"image_ids": ids, "test_cases": ["c1", "c2"], "n_labelled": 4, "bootstrap": {"samples": 200, "seed": 0},
           "arms": {"baseline": summary(base), "synthetic": summary(arm)}}
    d = paired_from_result(res, "synthetic", "baseline")
    assert d["mdice"]["mean"] == pytest.approx((8 * -0.2 + 8 * 0.05) / 16)
    assert d["subsets"]["structure-ends"]["mdice"]["mean"] == pytest.approx(-0.2)
    assert d["subsets"]["structure-middle"]["mdice"]["mean"] == pytest.approx(0.05)
    assert d["subsets"]["structure-ends"]["mdice"]["n_images"] == 8
    path = tmp_path / "r.json"
    header = {"dataset": "toy", "profile": "tiny", "resolution": 32, "code_version": "x", "steps": 4,
              "seeds": [0, 1, 2], "paired_diff": {}}
    path.write_text(json.dumps({**header, **res}), encoding="utf-8")
    out = CliRunner().invoke(app, ["experiment", "compare", str(path), "synthetic", "baseline"])
    assert out.exit_code == 0, out.output
    assert "| structure-ends | synthetic | -0.200 [" in out.output and "| arm − baseline |" in out.output


@pytest.mark.slow
def test_reading_msd_hippocampus_gives_slices_carrying_case_ids():
    root = need_dataset("msd-hippocampus")
    from lesionforge.data.decathlon import read_decathlon_info
    from lesionforge.data.splits import load_benchmark_split

    info = read_decathlon_info(root)
    assert info.is_mri and info.foreground_labels == {1: "Anterior", 2: "Posterior"}
    samples = read_dataset(root, negatives=True)
    cases = {case_of(s.id) for s in samples}
    assert len(cases) == 260 and all(s.slice.zscore is not None for s in samples)
    assert samples[0].id.startswith("hippocampus_001/2_")
    if not (SPLITS / "msd-hippocampus.json").is_file():
        pytest.skip("benchmark split msd-hippocampus.json absent")
    split = load_benchmark_split(SPLITS / "msd-hippocampus.json")
    assert set(split.train) | set(split.val) | set(split.test) == cases
    four = expand_cases(split.low_data(4), samples)
    assert {case_of(i) for i in four} == set(split.low_data(4)) and len(four) > 4 * 10


def test_volume_split_gives_training_negatives_val_positives_and_whole_test_volumes(tmp_path):
    from lesionforge.experiment.real_stages import volume_split

    samples = read_dataset(_volume_root(tmp_path), negatives=True)
    split = volume_split(BenchmarkSplit(train=["c1", "c2", "c3"], val=["c4"], test=["c5"],
                                        low_data_subsets={1: ["c2"], 2: ["c1", "c2"]}), samples, 0.2)
    assert len(split.low_data(1)) == 5 and len(split.low_data(2)) == 10 and len(split.train) == 15
    assert set(split.low_data(1)) <= set(split.low_data(2)) <= set(split.train)  # still nested
    assert split.val == [f"c4/2_{z:04d}" for z in range(2, 6)]
    assert split.test == [f"c5/2_{z:04d}" for z in range(SHAPE[2])]
    by_slice = volume_split(BenchmarkSplit(train=split.train, val=split.val, test=["c5/2_0003", "c5/2_0004"]),
                            samples, 0.2)
    assert by_slice.test == split.test  # a split listing slices still scores whole test volumes
    backgrounds = {case_of(i) for i in split.normal_backgrounds}
    assert len(split.normal_backgrounds) == 3 * 4 and backgrounds == {"c1", "c2", "c3"}  # train cases' negatives


@pytest.mark.slow
def test_volume_experiment_writes_3d_dice_per_case_beside_per_slice(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from lesionforge.cli import app

    cases = [f"c{k}" for k in range(1, 7)]
    root = _volume_root(tmp_path / "data", cases=tuple(cases))
    split = {"dataset": "toy", "unit": "case", "train": cases[:3], "val": cases[3:4], "test": cases[4:],
             "low_data_subsets": {"2": cases[:2]}}
    (tmp_path / "split.json").write_text(json.dumps(split), encoding="utf-8")
    cfg = {"dataset": {"name": "toy", "root": str(root), "split": str(tmp_path / "split.json"), "channels": 1,
                       "volumes": {"negative_share": 0.2}},
           "profile": "tiny", "n_labelled": [2], "seeds": [0, 1],
           "segment": {"network": "BasicUNet", "features": [8, 8, 16, 16, 32, 8], "steps": 4, "batch_size": 4,
                       "warmup_steps": 0, "val_interval": 2},
           "arms": [{"name": "baseline", "kind": "baseline"}, {"name": "copy-paste", "kind": "copy-paste"}],
           "bootstrap_samples": 50, "output": "runs", "results_dir": "results"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = CliRunner().invoke(app, ["experiment", "run", str(tmp_path / "cfg.yaml"), "--threads", "1"])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "results" / "toy-n2-tiny.json").read_text(encoding="utf-8"))
    assert res["test_cases"] == ["c5", "c6"] and res["n_test_images"] == 2 * 4  # slices with foreground
    assert res["data"]["volumes"]["normalisation"] == "zscore" and res["data"]["volumes"]["n_test_slices"] == 16
    assert [len(a["mdice3d"]) for a in res["arms"].values()] == [2, 2]  # one mean 3D Dice per seed
    assert all(0 <= d <= 1 for a in res["arms"].values() for d in a["mdice3d"])
    d = res["paired_diff"]["copy-paste"]["mdice3d"]
    assert d["unit"] == "cases" and d["n_images"] == 2
    # where along each test structure: its end slices and its middle ones, scored and paired separately
    position = res["paired_diff"]["copy-paste"]["subsets"]
    assert position["structure-ends"]["mdice"]["n_images"] + position["structure-middle"]["mdice"]["n_images"] == 8
    assert position["structure-ends"]["mdice"]["n_images"] > 0 < position["structure-middle"]["mdice"]["n_images"]
    assert set(res["arms"]["baseline"]["subsets"]) == {"structure-ends", "structure-middle"}
    assert "mDice 3D" in (tmp_path / "results" / "toy-n2-tiny.md").read_text(encoding="utf-8")
    from lesionforge.experiment.report import readme_table

    table = readme_table([tmp_path / "results" / "toy-n2-tiny.json"]).splitlines()
    assert "3D Dice per case" in table[0] and all(r.count("|") == 11 for r in table)
    assert f"| {np.mean(res['arms']['copy-paste']['mdice3d']):.3f} ± " in table[3]
    assert f"| {d['mean']:+.3f} [" in table[3] and table[2].endswith("| — | `toy-n2-tiny.json` |")


def test_hippocampus_configs_share_runs_and_read_volumes_by_case():
    from pathlib import Path

    from lesionforge.experiment.budget import segment_config_for
    from lesionforge.experiment.config import load_experiment_config, resolved_generator_config

    configs = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    full = load_experiment_config(configs / "msd-hippocampus-cpu.yaml")
    refs = load_experiment_config(configs / "msd-hippocampus-cpu-references.yaml")
    assert full.n_labelled == [4, 8] and len(full.seeds) == 5 and refs.output == full.output
    assert full.dataset.volumes == refs.dataset.volumes and full.dataset.volumes.negative_share == 0.2
    for arm in ("baseline", "copy-paste"):  # the full sweep reuses the references' finished runs
        assert segment_config_for(full, full.arm(arm), 3) == segment_config_for(refs, refs.arm(arm), 3)
    gen = resolved_generator_config(full, full.generators["mask2image"])
    assert gen.kind == "mask2image" and gen.image_channels == 1 and gen.resolution == 64
    # the headline recipe (kvasir-seg-cpu.yaml): pretrained base, 8 draws per labelled slice, the best 2 kept, with
    # the MRI screen's two levers (tests/test_screen.py): masks jittered in place, pairs in the first half only
    spec = full.generators["mask2image"]
    assert (gen.pretrain_steps, gen.steps, spec.use_unlabelled, spec.n_per_real, spec.filter.keep_best) == \
        (1000, 1000, True, 8, 2) and full.arm("synthetic-in-place").filtered
    assert spec.jitter.kwargs() == {"max_shift": 0.0, "max_rotate": 10.0}
    assert full.arm("synthetic-in-place").mixing.synthetic_until == 0.5


@pytest.mark.slow
def test_every_mri_generator_kind_runs_on_volume_slices_with_the_filter(tmp_path):
    """The MRI presets of the kinds that apply to slices (mask2image, edge-text, inpaint into the foreground-free
    slices of train cases) train, synthesize and are filtered in a volume experiment (tiny overrides)."""
    import yaml
    from typer.testing import CliRunner

    from lesionforge.cli import app

    cases = [f"c{k}" for k in range(1, 7)]
    root = _volume_root(tmp_path / "data", cases=tuple(cases))
    split = {"dataset": "toy", "unit": "case", "train": cases[:3], "val": cases[3:4], "test": cases[4:],
             "low_data_subsets": {"2": cases[:2]}}
    (tmp_path / "split.json").write_text(json.dumps(split), encoding="utf-8")
    tiny = {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_levels": [False, False], "steps": 2,
            "batch_size": 2, "checkpoint_every": 2, "sample_every": 0, "num_train_timesteps": 50}
    filt = {"validator": "pixel", "threshold": 0.0, "keep_best": 1, "validator_config": "validator-pixel-cpu.yaml",
            "validator_overrides": {"steps": 2, "batch_size": 4, "checkpoint_every": 2}}
    # the headline recipe: a base pretrained on every slice without its mask (the other train case), then tuned
    gens = {name: {"method": method, "config": f"generator-{kind}-mri-cpu.yaml",
                   "overrides": {**tiny, "pretrain_steps": 2}, "use_unlabelled": True, "n_per_real": 2,
                   "sampler": "sde-dpm++", "sampling_steps": 2, "guidance_scale": 1.0, "filter": filt}
            for name, method, kind in [("m2i", "mask-conditioned", "mask2image"), ("edge", "edge-guided", "edge-text"),
                                       ("inpaint", "inpaint-normal", "inpaint")]}
    cfg = {"dataset": {"name": "toy", "root": str(root), "split": str(tmp_path / "split.json"), "channels": 1,
                       "volumes": {"negative_share": 0.2}},
           "profile": "tiny", "n_labelled": [2], "seeds": [0],
           "segment": {"network": "BasicUNet", "features": [8, 8, 16, 16, 32, 8], "steps": 2, "batch_size": 4,
                       "warmup_steps": 0, "val_interval": 2},
           "arms": [{"name": "baseline", "kind": "baseline"}]
           + [{"name": name, "kind": "synthetic", "generator": name, "filtered": True} for name in gens],
           "generators": gens, "bootstrap_samples": 50, "output": "runs", "results_dir": "results"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = CliRunner().invoke(app, ["experiment", "run", str(tmp_path / "cfg.yaml"), "--threads", "1"])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "results" / "toy-n2-tiny.json").read_text(encoding="utf-8"))
    # the labelled slices: two cases' 4 foreground slices and 20 % of their 4 negatives each (rounded up)
    n_labelled, n_positive = 2 * 4 + 2, 2 * 4
    for name in gens:
        info = res["generators"][name]
        # keep-best 1 keeps one sample per labelled pair with foreground; a negative's samples carry no lesion
        assert (info["n_generated"], info["n_kept"]) == (2 * n_labelled, n_positive), (name, info["filter"])
        assert info["unlabelled_used"]
        assert len(res["arms"][name]["mdice3d"]) == 1
        assert res["arms"][name]["synthetic_quality"]["n_synthetic"] == n_positive  # read back grey, as the real
    for kind in ("mask2image", "edge-text", "inpaint"):  # each kind's pretrained base, cached for every N
        assert len(list((tmp_path / "runs" / "cache" / "generators").glob(f"{kind}-base-*"))) == 1, kind
    rows = [json.loads(line) for line in
            next((tmp_path / "runs" / "cache").glob("synthetic-n2-inpaint-*/synthetic/manifest.jsonl")).open()]
    # inpainted into the foreground-free slices of train cases, drawn from the labelled cases' masks
    assert {case_of(r["provenance"]["background_id"]) for r in rows} <= {"c1", "c2", "c3"}
    assert {case_of(r["provenance"]["source_id"]) for r in rows} <= {"c1", "c2"}
