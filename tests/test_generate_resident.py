"""Generator training with the data held on the training device (BatchMaker(device=...), train_generator
(resident=True)), run on the CPU: the same draws and the same tensors as the host path, so the same bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_generate_common import killed_after_a_checkpoint, normals, pairs, tiny_cfg

from lesionforge.generate.batches import dilate_masks
from lesionforge.generate.trainbatch import BatchMaker
from lesionforge.generate.trainer import train_generator

CPU = torch.device("cpu")


class _Encoder:
    def encode(self, prompts):  # a prompt's encoding: its length and first letter, enough to tell prompts apart
        codes = torch.tensor([[len(p), ord(p[0]) if p else 0] for p in prompts], dtype=torch.float32)
        return codes[:, None, :].expand(-1, 4, -1).repeat(1, 1, 8), torch.ones(len(prompts), 4, dtype=torch.bool)


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert a == b


@pytest.mark.parametrize("kind,extra", [
    ("inpaint", {"text": True, "dataset": "kvasir-seg", "self_supervised_fraction": 0.5}),
    ("mask2image", {}),
    ("joint", {"pretrain": True}),
])
def test_batches_held_on_the_device_equal_the_host_batches(demo_arrays, kind, extra):
    extra = dict(extra)
    pretrain = extra.pop("pretrain", False)
    cfg = tiny_cfg(kind, batch_size=8, flip=True, augment={"p": 0.7, "zoom": 0.3}, cond_dropout=0.2, **extra)
    train = pairs(demo_arrays, lesion_only=kind == "inpaint")
    if pretrain:  # images without masks: the mask is unknown for the unlabelled ones
        train = type(train)(train.images, train.masks, np.zeros(len(train), bool), train.ids, train.classes)
    kw = {"backgrounds": normals(demo_arrays)}
    if extra.get("text"):
        kw["text_encoder"] = _Encoder()
    host, held = BatchMaker(cfg, train, **kw), BatchMaker(cfg, train, **kw, device=CPU)
    assert held.held and not host.held  # the held one gathers from its tensors
    for step in range(4):
        (hx, hc), (dx, dc) = (m.make(np.random.default_rng([0, step])) for m in (host, held))
        _same(hx, dx)
        _same(hc, dc)


def test_dilation_on_the_device_equals_scipy(demo_arrays):
    masks = demo_arrays.masks
    for pixels in (0, 1, 3):
        assert np.array_equal(dilate_masks(torch.from_numpy(masks), pixels).numpy(), dilate_masks(masks, pixels))


def test_resident_training_trains_to_the_same_bytes_and_resumes(demo_arrays, tmp_path, monkeypatch):
    cfg = tiny_cfg("inpaint", steps=4, checkpoint_every=2, flip=True, augment={"p": 0.5})
    data, bg = pairs(demo_arrays, lesion_only=True), normals(demo_arrays)
    host = train_generator(cfg, data, tmp_path / "host", backgrounds=bg, progress=False)
    with killed_after_a_checkpoint(monkeypatch):
        train_generator(cfg, data, tmp_path / "held", backgrounds=bg, progress=False, resident=True)
    held = train_generator(cfg, data, tmp_path / "held", backgrounds=bg, progress=False, resident=True)
    for folder in ("unet", "checkpoint-4/model/unet"):
        a = load_file(host / folder / "diffusion_pytorch_model.safetensors")
        b = load_file(held / folder / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
