"""Dataset fingerprint on the demo data, whose lesion statistics are known."""

from __future__ import annotations

import numpy as np
from test_data_builders import save
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.data.fingerprint import fingerprint, recommend_profile
from lesionforge.data.manifest import read_manifest
from lesionforge.data.readers import read_dataset


def test_fingerprint_demo(demo_root):
    samples = read_manifest(demo_root / "manifest.jsonl")
    fp = fingerprint(samples)
    assert fp.n_images == 40 and fp.n_labelled == 32  # the 8 lesion-free demo images are image-only
    assert fp.height == {"min": 32.0, "median": 32.0, "max": 32.0}
    assert fp.colour_images == 40 and fp.recommended_channels == 3
    assert fp.lesion_free_share == 0.0 and fp.lesions_per_image["mean"] >= 1.0
    assert abs(sum(fp.lesion_area_bands.values()) - 1.0) < 1e-6
    q = fp.lesion_area_quantiles
    assert 0 < q["q05"] <= q["q50"] <= q["q95"] < 1
    assert len(fp.intensity_mean) == 3 and fp.intensity_mean[0] > fp.intensity_mean[1]  # pink tissue


def test_fingerprint_counts_lesions_and_lesion_free(tmp_path):
    image = np.full((400, 400), 80, np.uint8)
    two = np.zeros((400, 400), np.uint8)
    two[40:80, 40:80] = 255  # 1 % of the image
    two[200:320, 200:320] = 255  # 9 %
    two[0, 399] = 255  # a one-pixel speck (< 0.01 % of the image), not a lesion
    for name, m in (("two", two), ("none", np.zeros((400, 400), np.uint8))):
        save(tmp_path / "images" / f"{name}.png", image)
        save(tmp_path / "masks" / f"{name}.png", m)
    fp = fingerprint(read_dataset(tmp_path))
    assert fp.lesion_free_share == 0.5 and fp.lesions_per_image["max"] == 2 and fp.specks_ignored == 1
    assert fp.lesion_area_bands == {"small": 0.0, "medium": 0.5, "large": 0.5}
    assert fp.grey_images == 2 and fp.recommended_channels == 1
    assert fp.intensity_percentiles["p50"] == 80.0


def test_recommend_profile():
    assert recommend_profile(np.full(20, 0.05), 500, 500) == "cpu"  # 0.05 * 64^2 = 205 px
    assert recommend_profile(np.full(20, 0.002), 500, 500) == "cpu128"  # 0.002 * 128^2 = 33 px
    assert recommend_profile(np.full(20, 0.0001), 500, 500) == "gpu"
    assert recommend_profile(np.array([0.0001]), 64, 80) == "cpu"  # never above the image size


def test_cli_fingerprint_json(demo_root):
    result = CliRunner().invoke(app, ["data", "fingerprint", str(demo_root / "manifest.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"n_images":40' in result.stdout.replace(" ", "")
