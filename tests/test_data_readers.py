"""Readers: layouts, ids, class folders, several masks per image, suffixes, extensions, TIFFs, label maps."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image, UnidentifiedImageError
from test_data_builders import demo_pairs, save, write_pairs
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.data.arrays import load_arrays, load_sample
from lesionforge.data.manifest import read_manifest
from lesionforge.data.readers import detect_layout, read_dataset
from lesionforge.errors import DuplicateIdError, NonBinaryMaskError


def test_class_folders_and_multi_mask_union(tmp_path):
    images, masks = demo_pairs(3)
    for cls in ("benign", "malignant"):
        save(tmp_path / "images" / cls / f"{cls} (1).png", images[0])
        save(tmp_path / "masks" / cls / f"{cls} (1)_mask.png", masks[0] * 255)
    save(tmp_path / "masks" / "benign" / "benign (1)_mask_1.png", masks[1] * 255)
    save(tmp_path / "masks" / "benign" / "benign (1)_mask_2.png", masks[2] * 255)
    samples = read_dataset(tmp_path)
    assert [s.id for s in samples] == ["benign/benign (1)", "malignant/malignant (1)"]
    assert [s.label_class for s in samples] == ["benign", "malignant"]
    assert [p.rsplit("/", 1)[-1] for p in samples[0].masks] == [
        "benign (1)_mask.png", "benign (1)_mask_1.png", "benign (1)_mask_2.png"]
    _, merged = load_sample(samples[0])
    assert np.array_equal(merged, masks[0] | masks[1] | masks[2])
    assert merged.sum() > masks[0].sum()


def test_mixed_folders_like_busi(tmp_path):
    images, masks = demo_pairs(2)
    save(tmp_path / "benign" / "benign (1).png", images[0])
    save(tmp_path / "benign" / "benign (1)_mask.png", masks[0] * 255)
    save(tmp_path / "normal" / "normal (1).png", images[1])
    save(tmp_path / "normal" / "normal (1)_mask.png", np.zeros((32, 32), np.uint8))
    assert detect_layout(tmp_path) == "mixed"
    samples = read_dataset(tmp_path)
    assert [(s.id, s.label_class, len(s.masks)) for s in samples] == [
        ("benign/benign (1)", "benign", 1), ("normal/normal (1)", "normal", 1)]
    assert load_sample(samples[1])[1].sum() == 0


def test_seg_suffix_and_differing_extensions(tmp_path):
    images, masks = demo_pairs(3)
    save(tmp_path / "images" / "a.jpg", images[0], quality=95)
    save(tmp_path / "masks" / "a_seg.png", masks[0] * 255)
    save(tmp_path / "images" / "b.png", images[1])
    save(tmp_path / "masks" / "b_mask.tif", masks[1] * 255)
    save(tmp_path / "images" / "c.jpeg", images[2])
    save(tmp_path / "masks" / "c.bmp", masks[2] * 255)
    samples = read_dataset(tmp_path)
    assert [s.id for s in samples] == ["a", "b", "c"]
    for s, m in zip(samples, masks, strict=True):
        assert np.array_equal(load_sample(s)[1], m)


def test_tiff_pillow_cannot_open(tmp_path):
    images, masks = demo_pairs(1)
    float_image = images[0].astype(np.float32) / 255.0  # float32 RGB: Pillow has no mode for it
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", float_image, photometric="rgb")
    tifffile.imwrite(tmp_path / "masks" / "x.tiff", masks[0].astype(np.float32))
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "images" / "x.tif")
    sample = read_dataset(tmp_path)[0]
    image, mask = load_sample(sample)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert abs(int(image.max()) - 255) <= 1 and np.array_equal(mask, masks[0])


def test_image_only_folder(tmp_path):
    images, _ = demo_pairs(2)
    save(tmp_path / "images" / "n1.png", images[0])
    save(tmp_path / "images" / "n2.jpg", images[1])
    samples = read_dataset(tmp_path)
    assert [(s.id, s.has_mask, s.masks) for s in samples] == [("n1", False, []), ("n2", False, [])]
    arr = load_arrays(samples, resolution=16, cache_dir=None)
    assert arr.masks.sum() == 0 and not arr.has_mask.any()


def test_multiclass_label_maps(tmp_path):
    images, masks = demo_pairs(1)
    labels = masks[0].copy()
    labels[:8] = 2
    save(tmp_path / "images" / "m.png", images[0])
    save(tmp_path / "masks" / "m.png", labels)
    sample = read_dataset(tmp_path, multiclass=True)[0]
    assert set(np.unique(load_sample(sample, multiclass=True)[1])) == {0, 1, 2}
    with pytest.raises(NonBinaryMaskError, match="distinct grey levels"):
        load_sample(sample)  # a binary read refuses three levels


def test_duplicate_stem_is_an_error(tmp_path):
    write_pairs(tmp_path, ["a"])
    save(tmp_path / "images" / "a.jpg", demo_pairs(1)[0][0])
    with pytest.raises(DuplicateIdError, match="'a'"):
        read_dataset(tmp_path)


def test_cli_manifest_round_trip(tmp_path):
    write_pairs(tmp_path / "data", ["a", "b"])
    out = tmp_path / "m.jsonl"
    runner = CliRunner()
    assert runner.invoke(app, ["data", "manifest", str(tmp_path / "data"), "-o", str(out)]).exit_code == 0
    assert [s.id for s in read_manifest(out)] == ["a", "b"]
    again = runner.invoke(app, ["data", "manifest", str(tmp_path / "data"), "-o", str(out)])
    assert again.exit_code != 0  # refuses to overwrite without --overwrite
