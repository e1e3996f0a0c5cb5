"""The validator benchmark script runs end to end in --quick mode on Kvasir-SEG (skips without the data)."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark, need_dataset


@pytest.mark.slow
def test_validator_benchmark_quick(tmp_path):
    root, frames = need_dataset("kvasir-seg"), need_dataset("colon-normal")
    bench = load_benchmark("validator_cpu")
    bench.run(quick=True, work=tmp_path / "work", results=tmp_path / "results", dataset=root, backgrounds=frames)
    result = json.loads((tmp_path / "results" / "validator-kvasir-seg-tiny-quick.json").read_text(encoding="utf-8"))
    assert result["resolution"] == 32 and result["n_labelled"] == 8
    assert result["reconstruction_val"]["psnr"] > 0
    for kind in ("latent", "pixel"):
        f = result["filter"][kind]
        assert f["n_scored"] == 24 and 0 <= f["acceptance_rate"] <= 1
        assert set(f["acceptance_by_group"]) == {"true", "shifted", "swapped", "blank"}
    assert result["filter"]["latent-percentile"]["threshold_rule"].startswith("auto: 10th percentile")
    assert result["candidates_cross"]["n"] == 24 and 0 <= result["candidates_cross"]["agreement"] <= 1
    assert all(v > 0 for v in result["ms_per_sample"].values())
    assert 0 <= result["agreement"]["agreement"] <= 1
    report = tmp_path / "results" / "validator-kvasir-seg-tiny-quick.md"
    assert "Validator benchmark" in report.read_text(encoding="utf-8")
