"""The speed benchmark script, run in --quick mode at tiny size."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

from lesionforge.errors import OverwriteError


def test_quick_speed_run_writes_expected_keys(tmp_path):
    speed = load_benchmark("speed")
    # one thread: two OpenMP threads on a shared, busy CPU spin-wait and make this tiny run 30x slower
    path = speed.run_speed_benchmark("tiny", quick=True, out_dir=tmp_path, threads=1)
    assert path.name == "speed-tiny-quick.json" and path.with_suffix(".md").is_file()
    r = json.loads(path.read_text(encoding="utf-8"))
    assert r["profile"] == "tiny" and r["resolution"] == 32 and r["quick"] is True
    assert {"cpu_count", "torch_threads", "cpus_usable"} <= r["machine"].keys()
    assert r["machine"]["torch_threads"] == 1
    assert r["peak_matmul"]["flops_per_s"] > 0
    workloads = [r["synthesis"]["ddim"], r["synthesis"]["dpm++"], r["synthesis"]["ddpm_1000"],
                 r["validation"]["latent_single_step"], r["validation"]["decode_plus_pixel_segmenter"],
                 r["segmentation"]["training"]]
    for w in workloads:
        assert w["images_per_s"] > 0 and w["flops_per_image"] > 0 and w["share_of_peak"] > 0
    ddpm = r["synthesis"]["ddpm_1000"]
    assert ddpm["steps"] == 1000 and ddpm["extrapolated_from_steps"] == 2
    # 1000 steps cost 500x the FLOPs of 2 steps of the same network
    assert ddpm["flops_per_image"] == pytest.approx(500 * r["synthesis"]["ddim"]["flops_per_image"])


def test_speed_refuses_to_overwrite_results(tmp_path):
    (tmp_path / "speed-tiny-quick.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OverwriteError):
        load_benchmark("speed").run_speed_benchmark("tiny", quick=True, out_dir=tmp_path)
