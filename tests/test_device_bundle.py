"""The device run's pieces on CPU: packed datasets, precomputed prompt encodings, and the dry run of
benchmarks/device/prepare.sh + run.sh (tiny sizes, nothing downloaded)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionforge.conditioning.text import PrecomputedTextEncoder, TextEncoder, save_text_embeddings
from lesionforge.data.arrays import PairArrays
from lesionforge.data.packed import load_packed, save_packed
from lesionforge.errors import CheckpointError, DataError

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"


def test_packed_dataset_round_trip_keeps_masks_ids_and_images_close(demo_arrays, tmp_path):
    d = demo_arrays
    arrays = PairArrays(d.images, d.masks, d.masks.reshape(len(d.ids), -1).any(1), list(d.ids),
                        ["polyp" if i % 2 else None for i in range(len(d.ids))])
    back = load_packed(save_packed(tmp_path / "d.npz", arrays))
    assert back.ids == arrays.ids and back.classes == arrays.classes
    assert np.array_equal(back.masks, arrays.masks) and np.array_equal(back.has_mask, arrays.has_mask)
    assert back.images.shape == arrays.images.shape and back.images.dtype == np.uint8
    assert np.abs(back.images.astype(int) - arrays.images.astype(int)).mean() < 3  # JPEG q95
    exact = load_packed(save_packed(tmp_path / "exact.npz", arrays, lossless=True))  # small images: pixel for pixel
    assert np.array_equal(exact.images, arrays.images) and np.array_equal(exact.masks, arrays.masks)
    assert exact.ids == arrays.ids and exact.classes == arrays.classes
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="bad.npz"):
        load_packed(tmp_path / "bad.npz")


def test_precomputed_prompt_encodings_equal_the_encoders_and_name_a_missing_prompt(tmp_path):
    prompts = ["a small sessile polyp", "a large pedunculated polyp"]
    enc = TextEncoder()
    path = save_text_embeddings(tmp_path / "t.safetensors", prompts, enc)
    pre = PrecomputedTextEncoder(path)
    ask = [prompts[1], "", prompts[0]]
    for got, want in zip(pre.encode(ask), enc.encode(ask), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(pre.pooled(ask), enc.pooled(ask))
    with pytest.raises(CheckpointError, match="no precomputed embedding of 1 prompts"):
        pre.encode(["a polyp never precomputed"])


@pytest.mark.slow
def test_device_scripts_dry_run_on_cpu(tmp_path):
    from conftest import need_dataset

    need_dataset("kvasir-seg")
    need_dataset("colon-normal")
    env = {**os.environ, "PYTHON": os.sys.executable, "PIP_NO_INDEX": "1"}  # nothing may be downloaded
    prep = subprocess.run(["bash", str(DEVICE / "prepare.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert "MiB of 64 MiB" in prep.stdout
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(DEVICE / "run.sh"), "--dry-run", str(out), "--workers", "2"], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["run.log", "sweep.tar.gz", "timings.json"]  # <= 8 files
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert timings["device"] == "cpu" and timings["stopped"] is None and timings["workers"] == 2
    assert len(timings["runs"]) == 4 and timings["result"] == "kvasir-seg-n32-tiny.json"
    assert timings["data_on_device"]  # the dry run takes the on-device data path, on the CPU
    assert {g["steps"] for g in timings["generators"].values()} == {2}  # the pretrained base and the fine-tune
    with tarfile.open(out / "sweep.tar.gz") as tar:
        names = tar.getnames()
        result = json.loads(tar.extractfile("sweep/results/kvasir-seg-n32-tiny.json").read())
    assert set(result["arms"]) == {"baseline", "copy-paste", "copy-paste+backgrounds",
                                   "synthetic+copy-paste+backgrounds"}
    assert "sweep/results/kvasir-seg-n32-tiny.md" in names and "worker1.log" in names
    assert not any(n.endswith(".safetensors") for n in names)  # no weights come back
    kept = bundle_module().summarize(out / "sweep.tar.gz", tmp_path / "kept")
    assert kept["arms"]["baseline"]["seeds"] == [0]
    assert "synthetic+copy-paste+backgrounds - copy-paste+backgrounds" in kept["paired"]
    assert (tmp_path / "kept" / "baseline__seed0__run.json").is_file()
    # a deadline stops the workers; what exists comes back, without a result
    cut = tmp_path / "cut"
    run = subprocess.run(["bash", str(DEVICE / "run.sh"), "--dry-run", str(cut), "--workers", "1", "--deadline",
                          "3"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    timings = json.loads((cut / "timings.json").read_text(encoding="utf-8"))
    assert timings["stopped"] == "deadline of 3 s" and timings["result"] is None


@pytest.mark.slow
def test_device_scripts_pack_any_sweep_of_one_dataset(tmp_path):
    """The cpu-profile Kvasir-SEG headline packed and run in part (--n, --arm), as a GPU session would run a CPU
    sweep too long for the 2 cores; BUSI packs its lesion-free frames (split ids) with the pairs, and its prompt
    encodings are too large for a device call, which the size check says."""
    from conftest import need_dataset

    need_dataset("kvasir-seg")
    need_dataset("colon-normal")
    env = {**os.environ, "PYTHON": os.sys.executable, "PIP_NO_INDEX": "1"}
    prep = subprocess.run(["bash", str(DEVICE / "prepare.sh"), "--dry-run", "--config",
                           str(ROOT / "benchmarks" / "configs" / "kvasir-seg-cpu.yaml")], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    import yaml

    bundle = DEVICE / "bundle-dry"
    cfg = yaml.safe_load((bundle / "config.yaml").read_text(encoding="utf-8"))
    ds = cfg["dataset"]
    assert ds["root"] == "data/kvasir-seg-32.npz" and ds["split"] == "data/kvasir-seg-split.json"
    assert cfg["dataset"]["backgrounds_root"] == "data/backgrounds-32.npz"
    assert cfg["dataset"]["subsets"] == {"flat": "data/subset-flat.txt"}
    assert "output" not in cfg and cfg["profile"] == "tiny"  # the dry run's sizes; run sets where outputs go
    assert "pixels" in np.load(bundle / "data" / "kvasir-seg-32.npz").files  # lossless at this size
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(DEVICE / "run.sh"), "--dry-run", str(out), "--workers", "2", "--n", "16",
                          "--arm", "baseline", "--arm", "synthetic"], env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert timings["dataset"] == "kvasir-seg" and timings["arms"] == ["baseline", "synthetic"]
    assert timings["only_n"] == [16] and timings["stopped"] is None
    assert sorted(timings["runs"]) == ["n16/baseline/seed0", "n16/synthetic/seed0"]
    assert timings["results"] == []  # the other arms have not run: no result yet, as with experiment run --arm

    need_dataset("busi")
    mod = bundle_module()
    mod.pack(True, ROOT / "benchmarks" / "configs" / "busi-cpu.yaml")
    packed = load_packed(bundle / "data" / "busi-32.npz")
    split = json.loads((bundle / "data" / "busi-split.json").read_text(encoding="utf-8"))
    assert set(split["normal_backgrounds"]) <= set(packed.ids)  # the lesion-free frames travel with the pairs
    with pytest.raises(SystemExit, match="over the 64 MiB"):
        mod.check(True)


def test_summarize_keeps_the_regimes_of_a_sweep_of_several_n_apart(tmp_path):
    from lesionforge.data.bands import BANDS
    from lesionforge.experiment.records import RunRecord

    tar_path = tmp_path / "sweep.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for n in (16, 64):
            for arm, base in (("baseline", 0.6), ("copy-paste", 0.7)):
                for seed in (0, 1):
                    d = [base + 0.01 * seed + 0.001 * n, base, base + 0.02]
                    rec = RunRecord(n_labelled=n, arm=arm, seed=seed, ids=["a", "b", "c"], dice=d, iou=d,
                                    mdice=sum(d) / 3, miou=sum(d) / 3, miss_rate=None,
                                    miss_rate_by_band=dict.fromkeys(BANDS))
                    path = tmp_path / f"{n}-{arm}-{seed}.json"
                    path.write_text(rec.model_dump_json(), encoding="utf-8")
                    tar.add(path, arcname=f"sweep/runs/n{n}/{arm}/seed{seed}/run.json")
    kept = bundle_module().summarize(tar_path, tmp_path / "kept")
    assert set(kept["arms"]) == {"n16/baseline", "n16/copy-paste", "n64/baseline", "n64/copy-paste"}
    assert set(kept["paired"]) == {"n16/copy-paste - n16/baseline", "n64/copy-paste - n64/baseline"}
    assert kept["arms"]["n64/baseline"]["seeds"] == [0, 1]
    assert (tmp_path / "kept" / "n16__baseline__seed1__run.json").is_file()


def bundle_module():
    spec = importlib.util.spec_from_file_location("device_bundle", DEVICE / "bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_bundle_encodes_every_prompt_a_run_can_ask_for():
    """The lesion-free frames' prompts (the library's own classes) are encoded too: pretraining an inpaint
    generator on them asked for prompts the first device run had not packed."""
    prompts = set(bundle_module().library_prompts("kvasir-seg", []))
    assert "colonoscopy, normal colon mucosa, no polyp" in prompts
    assert len(prompts) > 100
