"""One device choice for every trainer: lesionforge.devices.resolve_device and the configs' device field."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from lesionforge.config import load_config
from lesionforge.devices import resolve_device
from lesionforge.errors import ConfigError
from lesionforge.generate.autoencoder import AutoencoderConfig
from lesionforge.generate.config import GeneratorConfig
from lesionforge.segment.config import SegmentConfig
from lesionforge.validate.latent_segmenter import LatentSegmenterConfig
from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig

TRAINER_CONFIGS = [AutoencoderConfig, LatentSegmenterConfig, PixelSegmenterConfig, SegmentConfig,
                   lambda **kw: GeneratorConfig(kind="mask2image", **kw)]


def test_resolve_device_cpu_and_auto(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


@pytest.mark.parametrize(("name", "message"), [("gpu", "'gpu' is not a torch device"),
                                               ("cuda:7", "'cuda:7': no such CUDA device"),
                                               ("meta", "trains on cpu, cuda or mps")])
def test_a_bad_device_is_a_clear_error(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)


@pytest.mark.parametrize("make", TRAINER_CONFIGS)
def test_every_trainer_config_takes_a_device_checked_at_load(make):
    assert make().device == ("cpu" if make is SegmentConfig else None)  # segmentation: see SegmentConfig.device
    assert make(device="auto").device == "auto"
    with pytest.raises(ValidationError, match="'gpu' is not a torch device"):
        make(device="gpu")


def test_a_bad_device_in_a_preset_names_the_file(tmp_path):
    path = tmp_path / "ae.yaml"
    path.write_text("device: cuda0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ae.yaml") as err:
        load_config(path, AutoencoderConfig)
    assert "device" in str(err.value)


def test_the_device_stays_out_of_model_dumps_and_cache_keys():
    """Where a model trains is not what it is: cached generators, autoencoders and validators keep their keys."""
    for make in TRAINER_CONFIGS[:3] + TRAINER_CONFIGS[4:]:
        assert make(device="cpu").model_dump(mode="json") == make().model_dump(mode="json")
        assert "device" not in make().model_dump(mode="json")
