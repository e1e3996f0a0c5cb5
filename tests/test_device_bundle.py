"""The device run's pieces on CPU: packed datasets, precomputed prompt encodings, and the dry run of
benchmarks/device/prepare.sh + run.sh (tiny sizes, nothing downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
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
    run = subprocess.run(["bash", str(DEVICE / "run.sh"), "--dry-run", str(out)], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "kvasir-seg-n32-tiny.json").read_text(encoding="utf-8"))
    assert set(result["arms"]) == {"baseline", "copy-paste", "synthetic+copy-paste"}
    assert (out / "kvasir-seg-n32-tiny.md").is_file()
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert timings["device"] == "cpu" and len(timings["runs"]) == 3
    assert timings["data_on_device"]  # the dry run takes the on-device data path, on the CPU
    assert timings["generators"]["inpaint"]["synthesis_images_per_s"] > 0
    assert not (out / "runs").exists()  # checkpoints are not sent back
