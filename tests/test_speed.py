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


def _variant(seconds: float, per_image: dict, synthesis: dict | None = None, **extra) -> dict:
    return {"overrides": {"pretrain_steps": 1000, "steps": 1000}, "synthesis": synthesis or {}, "filter": None,
            "arm": None, "n_synthetic": 64, "synthesize_s": seconds, "quality": {"speckle": {"synthetic": 20.0,
                                                                                         "real_train": 19.0}},
            "arms": {"synthetic": {"val_mdice": float(sum(per_image.values()) / len(per_image)), "seeds": [0],
                                   "per_image": per_image}}, **extra}


def test_speed_at_equal_screen_score_pairs_a_sampler_with_its_ddpm_reference(tmp_path):
    """A sampler variant of the screen is compared with the DDPM variant of the same generator: its rate against
    DDPM 1000 (the reference's measured 100-step rate / 10) and its paired score difference over val images;
    variants that change more than the sampler (a filter, more pairs) are not sampler comparisons."""
    speed, screen = load_benchmark("speed"), load_benchmark("screen")
    assert screen.BASE["sampler"] == "ddpm" and screen.BASE["sampling_steps"] == speed.REFERENCE_DDPM_STEPS
    ids = [f"v{i}" for i in range(30)]
    ref = {i: 0.6 + 0.01 * (k % 5) for k, i in enumerate(ids)}
    same = {i: d + (0.002 if k % 2 else -0.002) for k, (i, d) in enumerate(ref.items())}
    worse = {i: d - 0.2 for i, d in ref.items()}
    path = tmp_path / "screen.json"
    path.write_text(json.dumps({"segment": {"steps": 800}, "machine": "test", "variants": {
        "pretrain": _variant(320.0, ref),
        "pretrain+fast": _variant(80.0, same, {"sampler": "sde-dpm++", "sampling_steps": 25}),
        "pretrain+bad": _variant(40.0, worse, {"sampler": "ddim", "sampling_steps": 10}),
        "pretrain+8per": _variant(80.0, same, {"sampler": "sde-dpm++", "n_per_real": 8}),
        "pretrain+top2": _variant(80.0, same, {"sampler": "sde-dpm++"}, filter={"keep_best": 2}),
    }}))
    r = speed.at_equal_screen_score(path)
    got = {c["variant"]: c for c in r["comparisons"]}
    assert set(got) == {"pretrain+fast", "pretrain+bad"}
    fast = got["pretrain+fast"]
    assert fast["speedup_vs_reference"] == pytest.approx(4.0) and fast["speedup_vs_ddpm_1000"] == pytest.approx(40.0)
    assert fast["equal_within_ci"] and not got["pretrain+bad"]["equal_within_ci"]
    assert got["pretrain+bad"]["paired_diff_val"]["mean"] == pytest.approx(-0.2)
    md = speed.speed_markdown({**json.loads(json.dumps(_QUICK_SHELL)), "at_equal_screen_score": r})
    assert "At equal screen score" in md and "sde-dpm++ 25" in md and "40x" in md
    assert "not computed" in speed.at_equal_screen_score(tmp_path / "none.json")["status"]


_W = {"images_per_s": 1.0, "flops_per_image": 1e9, "achieved_flops_per_s": 1e9, "share_of_peak": 0.5, "steps": 25}
_QUICK_SHELL = {
    "profile": "cpu", "resolution": 64, "quick": False, "code_version": "x", "notes": "n",
    "machine": {"processor": "x86_64", "cpus_usable": 2, "cpu_count": 2, "torch_threads": 1, "device": "cpu",
                "torch": "2"},
    "peak_matmul": {"n": 8, "flops_per_s": 1e9},
    "synthesis": {"ddim": _W, "dpm++": _W, "ddpm_1000": _W, "speedup_few_step_vs_ddpm": 40.0},
    "validation": {"latent_single_step": _W, "decode_plus_pixel_segmenter": _W, "speedup_latent_vs_decode": 5.0},
    "segmentation": {"training": _W},
}
