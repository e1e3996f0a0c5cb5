import numpy as np

from lesionforge.data.arrays import image_to_tensor, load_arrays, mask_to_tensor, tensor_to_image
from lesionforge.data.manifest import read_manifest


def test_demo_arrays_shapes_and_lesions(demo_arrays):
    a = demo_arrays
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert set(np.unique(a.masks)) <= {0, 1}
    has_lesion = a.masks.reshape(40, -1).any(1)
    assert has_lesion.sum() == 32  # 20 % lesion-free
    # lesions are darker/redder than their surroundings: the generators must have something to learn
    inside = a.images[a.masks == 1].mean(0)
    outside = a.images[a.masks == 0].mean(0)
    assert inside[1] < outside[1]


def test_demo_written_and_loaded(demo_root, tmp_path):
    samples = read_manifest(demo_root / "manifest.jsonl")
    assert len(samples) == 40
    arr = load_arrays(samples, resolution=16, channels=3, cache_dir=tmp_path)
    assert arr.images.shape == (40, 16, 16, 3)
    assert arr.has_mask.sum() == 32
    again = load_arrays(samples, resolution=16, channels=3, cache_dir=tmp_path)  # from cache
    assert np.array_equal(arr.images, again.images) and arr.ids == again.ids


def test_tensor_round_trip(demo_arrays):
    t = image_to_tensor(demo_arrays.images[:2])
    assert t.shape == (2, 3, 32, 32) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_image(t), demo_arrays.images[:2])
    assert mask_to_tensor(demo_arrays.masks[:2]).shape == (2, 1, 32, 32)
