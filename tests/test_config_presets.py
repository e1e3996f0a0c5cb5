"""One merge of a preset with overrides (``resolve_preset``) and typed per-run segmentation settings built and
validated when an experiment config is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lesionforge.config import resolve_preset
from lesionforge.errors import ConfigError
from lesionforge.experiment.budget import segment_config_for
from lesionforge.experiment.config import load_experiment_config
from lesionforge.segment.config import SegmentConfig

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


def test_overrides_merge_into_nested_blocks_and_replace_everything_else(tmp_path):
    preset = tmp_path / "seg.yaml"
    preset.write_text(yaml.safe_dump({"steps": 7, "features": [4, 4, 8, 8, 16, 4], "augment": {"flip_prob": 0.1},
                                      "copy_paste": {"prob": 0.3, "scale": [0.5, 1.5]}}), encoding="utf-8")
    cfg = resolve_preset(preset, {"augment": {"noise_prob": 0.0}, "features": [8, 8, 16, 16, 32, 8],
                                  "copy_paste": {"scale": [1.0, 1.0]}}, SegmentConfig)
    assert cfg.steps == 7  # kept from the preset
    assert cfg.augment.flip_prob == 0.1 and cfg.augment.noise_prob == 0.0  # mappings merge key by key
    assert cfg.features == (8, 8, 16, 16, 32, 8)  # a list replaces the preset's
    assert cfg.copy_paste.prob == 0.3 and cfg.copy_paste.scale == (1.0, 1.0)
    assert resolve_preset(None, {"steps": 3}, SegmentConfig) == SegmentConfig(steps=3)  # no preset: defaults


def test_a_bad_value_names_the_preset_file_or_the_block(tmp_path):
    preset = tmp_path / "seg.yaml"
    preset.write_text("steps: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"seg\.yaml: lr: Input should be greater than 0"):
        resolve_preset(preset, {"lr": -1}, SegmentConfig)
    with pytest.raises(ConfigError, match=r"^segment\.extra: unknown key 'stpes' \(did you mean 'steps'\?\)"):
        resolve_preset(None, {"stpes": 3}, SegmentConfig, "segment.extra")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        resolve_preset(tmp_path / "missing.yaml", {}, SegmentConfig)


def _smoke_with(tmp_path, old: str, new: str) -> Path:
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "exp.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_negative_ratio_in_an_arm_fails_at_load_naming_file_and_key(tmp_path):
    path = _smoke_with(tmp_path, "mixing: {mode: ratio, ratio: 1}", "mixing: {mode: ratio, ratio: -1}")
    with pytest.raises(ConfigError) as err:
        load_experiment_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "arms.2.mixing.ratio" in msg and "greater than or equal to 0" in msg
    assert "\n" not in msg


def test_every_run_config_is_built_at_load_from_a_preset_read_once(tmp_path):
    preset = tmp_path / "seg.yaml"
    preset.write_text("augment: {enabled: false}\ncopy_paste: {feather_sigma: 2.0}\n", encoding="utf-8")
    path = _smoke_with(tmp_path, "segment:\n", f"segment:\n  preset: {preset}\n")
    cfg = load_experiment_config(path)
    preset.write_text("augment: {enabled: true}\n", encoding="utf-8")  # later edits do not leak into the sweep
    runs = {a.name: SegmentConfig.model_validate(segment_config_for(cfg, a, 1)) for a in cfg.arms}
    assert all(not r.augment.enabled and r.copy_paste.feather_sigma == 2.0 and r.seed == 1 for r in runs.values())
    assert runs["copy-paste"].copy_paste.enabled and runs["copy-paste"].copy_paste.prob == 0.5
    assert runs["synthetic"].mixing.mode == "ratio" and runs["baseline"].mixing.mode == "none"

    preset.write_text("copy_paste: {prob: 2}\n", encoding="utf-8")  # a bad shared block fails at load too
    with pytest.raises(ConfigError, match=r"seg\.yaml: copy_paste\.prob: Input should be less than or equal to 1"):
        load_experiment_config(path)


def test_an_arm_copy_paste_setting_overrides_the_shared_block(tmp_path):
    path = _smoke_with(tmp_path, "kind: copy-paste, copy_paste: {prob: 0.5}",
                       "kind: copy-paste, copy_paste: {prob: 0.25, scale: [0.9, 1.1]}")
    cfg = load_experiment_config(path)
    seg = segment_config_for(cfg, cfg.arm("copy-paste"), 0)["copy_paste"]
    assert (seg["enabled"], seg["prob"], seg["scale"]) == (True, 0.25, [0.9, 1.1])
    bad = _smoke_with(tmp_path, "kind: copy-paste, copy_paste: {prob: 0.5}",
                      "kind: copy-paste, copy_paste: {enabled: false}")
    with pytest.raises(ConfigError, match="decided by the arm's kind"):
        load_experiment_config(bad)
