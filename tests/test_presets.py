"""Packaged presets: found by file name from any folder, every one valid, and result/cache keys that follow a
preset's content, not where it lies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.config import load_config
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.results import config_hash
from lesionforge.experiment.runner import filter_key
from lesionforge.presets import PRESETS_DIR, preset_names, preset_path
from lesionforge.segment.config import SegmentConfig

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke.yaml"


def test_a_local_file_wins_then_the_packaged_preset_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = PRESETS_DIR / "segment-tiny.yaml"
    for spelling in ("segment-tiny.yaml", "configs/segment-tiny.yaml", "../../configs/segment-tiny.yaml"):
        assert preset_path(spelling) == packaged
    assert preset_path("my-presets/segment-tiny.yaml") == Path("my-presets/segment-tiny.yaml")  # a typo stays one
    assert load_config("configs/segment-tiny.yaml", SegmentConfig) == load_config(packaged, SegmentConfig)
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "segment-tiny.yaml"
    mine.write_text("steps: 7\n", encoding="utf-8")
    assert preset_path("configs/segment-tiny.yaml") == Path("configs/segment-tiny.yaml")
    assert load_config("configs/segment-tiny.yaml", SegmentConfig).steps == 7
    assert preset_path("segment-tiny.yaml", base=tmp_path / "configs") == mine


def test_missing_configs_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no-such-preset.yaml: config file not found"):
        load_config("configs/no-such-preset.yaml", SegmentConfig)
    absent = tmp_path / "segment-tiny.yaml"  # an absolute path is never swapped for the packaged preset
    assert preset_path(absent) == absent
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(absent, SegmentConfig)


def test_every_packaged_preset_is_valid():
    from lesionforge.generate.autoencoder import AutoencoderConfig
    from lesionforge.generate.config import load_generator_config
    from lesionforge.validate.run import load_validator_config

    names = preset_names()
    assert "demo.yaml" in names and len(names) > 20
    for name in names:
        kind = name.split("-")[0]
        if kind == "generator":
            assert load_generator_config(name).kind in name
        elif kind == "segment":
            load_config(name, SegmentConfig)
        elif kind == "autoencoder":
            load_config(name, AutoencoderConfig)
        elif kind == "validator":
            assert load_validator_config(name).kind == ("pixel" if "pixel" in name else "latent")
        else:
            assert name == "demo.yaml" and load_experiment_config(name).dataset.name == "demo"


def _smoke_with(tmp_path: Path, name: str, **paths: str) -> Path:
    raw = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    gen = raw["generators"]["inpaint"]
    gen["config"] = paths["generator"]
    gen["filter"] = {"validator": "pixel", "threshold": 0.0, "validator_config": paths["validator"]}
    raw["segment"]["preset"] = paths["segment"]
    folder = tmp_path / name / "benchmarks" / "configs"
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return folder / "sweep.yaml"


def test_config_hash_follows_preset_contents_not_their_location(tmp_path):
    names = {"generator": "generator-inpaint-kvasir-cpu.yaml", "validator": "validator-pixel-cpu.yaml",
             "segment": "segment-tiny.yaml"}
    old_spelling = _smoke_with(tmp_path, "old", **{k: f"../../configs/{v}" for k, v in names.items()})
    bare = _smoke_with(tmp_path, "bare", **names)
    copies = tmp_path / "copies"
    copies.mkdir()
    for v in names.values():
        shutil.copy(PRESETS_DIR / v, copies / v)
    elsewhere = _smoke_with(tmp_path, "abs", **{k: str(copies / v) for k, v in names.items()})
    cfgs = [load_experiment_config(p) for p in (old_spelling, bare, elsewhere)]
    assert cfgs[0].generators["inpaint"].config == PRESETS_DIR / names["generator"]
    assert cfgs[2].generators["inpaint"].config == copies / names["generator"]
    assert len({config_hash(c) for c in cfgs}) == 1
    assert len({filter_key(c, "inpaint") for c in cfgs}) == 1
    # a changed preset is a different config
    seg = copies / names["segment"]
    seg.write_text(seg.read_text(encoding="utf-8") + "\nlr: 0.5\n", encoding="utf-8")
    assert config_hash(load_experiment_config(elsewhere)) != config_hash(cfgs[0])


def test_cli_default_presets_resolve_from_any_folder(tmp_path, monkeypatch):
    """``train validator`` without --config reads the packaged validator-cpu.yaml: from an empty folder it gets
    as far as the (missing) data manifest, not a "config not found"."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["train", "validator", "--data", "none.jsonl", "--out", "v"])
    assert res.exit_code != 0
    assert "none.jsonl" in str(res.exception) + res.output and "config file not found" not in res.output
