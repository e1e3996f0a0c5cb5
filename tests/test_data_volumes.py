"""Volumes: NIfTI (nibabel) and MHA (SimpleITK) image + label volumes sliced to 2D samples."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

from lesionforge.data.arrays import load_arrays, load_sample
from lesionforge.data.readers import detect_layout, read_dataset
from lesionforge.data.volumes import read_slice, read_volume
from lesionforge.errors import MissingDependencyError, MissingMaskError, SizeMismatchError

SHAPE = (24, 20, 8)  # (X, Y, Z)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A CT-like ramp (-1000..1000) and a label whose structure grows with z: area 0 on z < 2, then 4 z^2."""
    image = np.linspace(-1000, 1000, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    for z in range(2, SHAPE[2]):
        label[2 : 2 + 2 * z, 3 : 3 + 2 * z, z] = 1
    label[4:6, 4:6, 7] = 2  # a second class on the last slice
    return image, label


def _write_nifti(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.fixture()
def nifti_root(tmp_path):
    image, label = _volume()
    _write_nifti(tmp_path / "imagesTr" / "case_01_0000.nii.gz", image)
    _write_nifti(tmp_path / "labelsTr" / "case_01.nii.gz", label)
    return tmp_path


def test_nifti_slices_kept_by_min_area(nifti_root):
    assert detect_layout(nifti_root) == "volumes"
    samples = read_dataset(nifti_root, min_area=50)
    kept = [s.slice.index for s in samples]
    assert kept == [4, 5, 6, 7]  # 4 z^2 >= 50 from z = 4
    assert samples[0].id == "case_01/2_0004" and samples[0].slice.axis == 2
    assert len(read_dataset(nifti_root)) == 6  # min_area 1: every slice with a structure


def test_nifti_round_trip_pixels_and_window(nifti_root):
    image, label = _volume()
    sample = read_dataset(nifti_root, min_area=1, window=(-500.0, 500.0))[2]
    img, mask = read_slice(sample, channels=1)
    z = sample.slice.index
    assert img.shape == (SHAPE[1], SHAPE[0], 1) and mask.shape == (SHAPE[1], SHAPE[0])
    assert np.array_equal(mask, (label[:, :, z].T > 0).astype(np.uint8))
    expected = np.clip((image[:, :, z].T + 500) / 1000, 0, 1) * 255
    assert np.abs(img[..., 0].astype(float) - expected).max() <= 1.0
    default = read_dataset(nifti_root)[0]
    lo, hi = default.slice.window
    assert lo == pytest.approx(np.percentile(image, 0.5), rel=1e-4)
    assert hi == pytest.approx(np.percentile(image, 99.5), rel=1e-4)


def test_multiclass_slices_and_arrays(nifti_root):
    sample = read_dataset(nifti_root, multiclass=True)[-1]
    assert set(np.unique(load_sample(sample, multiclass=True)[1])) == {0, 1, 2}
    arrays = load_arrays(read_dataset(nifti_root), resolution=16, channels=3, cache_dir=None)
    assert arrays.images.shape == (6, 16, 16, 3) and arrays.masks.max() == 1


def test_other_axis_and_mha_label_via_simpleitk(tmp_path):
    image, label = _volume()
    _write_nifti(tmp_path / "images" / "c1.nii", image)
    (tmp_path / "labels").mkdir()
    sitk = pytest.importorskip("SimpleITK", reason="DICOM/MHA support is the optional [dicom] extra")
    sitk.WriteImage(sitk.GetImageFromArray(label.T.copy()), str(tmp_path / "labels" / "c1_seg.mha"))
    samples = read_dataset(tmp_path, axis=0, min_area=1)
    assert all(s.slice.axis == 0 for s in samples)
    assert [s.slice.index for s in samples] == list(np.flatnonzero(label.any(axis=(1, 2))))
    _, mask = read_slice(samples[0])
    assert np.array_equal(mask, (label[samples[0].slice.index].T > 0).astype(np.uint8))


def test_volume_errors(tmp_path):
    image, label = _volume()
    _write_nifti(tmp_path / "images" / "c1.nii.gz", image)
    _write_nifti(tmp_path / "images" / "c2.nii.gz", image)
    _write_nifti(tmp_path / "labels" / "c1.nii.gz", label[:, :, :4])
    with pytest.raises(SizeMismatchError, match="c1.nii.gz"):
        read_dataset(tmp_path)
    _write_nifti(tmp_path / "labels" / "c1.nii.gz", label)
    with pytest.raises(MissingMaskError, match="c2.nii.gz"):
        read_dataset(tmp_path)


def _write_dicom_series(folder, volume_zyx: np.ndarray) -> None:
    """One DICOM file per z slice, with the tags a series reader needs to stack them in order."""
    sitk = pytest.importorskip("SimpleITK", reason="DICOM/MHA support is the optional [dicom] extra")
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(volume_zyx)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume_zyx.shape[0]):
        sl = image[:, :, z]
        tags = {"0020|000e": "1.2.826.0.1.3680043.2.1125.1", "0020|0032": f"0\\0\\{z}", "0020|0013": str(z),
                "0008|0060": "CT", "0020|0037": "1\\0\\0\\0\\1\\0"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_with_nifti_label(tmp_path, monkeypatch):
    _, label = _volume()
    volume = (np.arange(np.prod(SHAPE)).reshape(SHAPE[::-1]) % 300).astype(np.int16)  # (Z, Y, X)
    _write_dicom_series(tmp_path / "images" / "c1", volume)
    _write_nifti(tmp_path / "labels" / "c1.nii.gz", label)
    samples = read_dataset(tmp_path, min_area=1)
    assert [s.slice.index for s in samples] == list(range(2, SHAPE[2]))
    image, mask = read_slice(samples[0], channels=1)
    assert np.array_equal(mask, (label[:, :, 2].T > 0).astype(np.uint8))
    assert np.corrcoef(image[..., 0].ravel(), volume[2].ravel())[0, 1] > 0.99  # same pixels, windowed
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if the optional package were not installed
    with pytest.raises(MissingDependencyError, match="SimpleITK"):
        read_volume(tmp_path / "images" / "c1")


def test_check_reports_bad_volume_and_checks_slices(tmp_path):
    from lesionforge.data.checks import check_dataset

    image, label = _volume()
    same_slices = np.repeat(np.random.default_rng(0).normal(size=SHAPE[:2] + (1,)), SHAPE[2], axis=2)
    _write_nifti(tmp_path / "images" / "good.nii.gz", same_slices.astype(np.float32))
    _write_nifti(tmp_path / "labels" / "good.nii.gz", label)
    _write_nifti(tmp_path / "images" / "bad.nii.gz", image)
    _write_nifti(tmp_path / "labels" / "bad.nii.gz", label[:, :, :4])
    report = check_dataset(tmp_path)
    assert report.layout == "volumes" and report.n_images == 6  # the good volume's slices
    assert [i.file.split("/")[-1] for i in report.errors["size_mismatch"]] == ["bad.nii.gz"]
    assert report.near_duplicates == [] and report.exact_duplicates == []  # alike slices, but of one volume


def test_user_split_keeps_each_volume_in_one_split(tmp_path):
    from lesionforge.data.splits import make_user_splits

    _, label = _volume()
    rng = np.random.default_rng(0)
    for case in ("a", "b", "c", "d", "e"):  # different noise volumes: no near-duplicates across cases
        _write_nifti(tmp_path / "images" / f"{case}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        _write_nifti(tmp_path / "labels" / f"{case}.nii.gz", label)
    split = make_user_splits(tmp_path, (0.6, 0.2, 0.2), seed=0)
    where = split.split_of()
    for case in "abcde":
        assert len({where[f"{case}/2_{z:04d}"] for z in range(2, SHAPE[2])}) == 1
    assert {len(split.train), len(split.val), len(split.test)} == {18, 6}  # 3 / 1 / 1 volumes of 6 slices
