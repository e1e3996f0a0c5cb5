"""Per-run segmentation settings: the shared budget plus the arm's data options, nothing else.

This is where "identical budgets for every arm" is enforced: an arm can only choose how synthetic pairs
enter the batch (``mixing``) and whether copy-paste is on; everything else comes from the shared block.
"""

from __future__ import annotations

from typing import Any

from lesionforge.config import validate_config
from lesionforge.experiment.config import ArmSettings, ExperimentConfig
from lesionforge.segment.config import SegmentConfig

#: SegmentConfig fields an arm decides; everything else comes from the shared ``segment`` block.
ARM_FIELDS = ("mixing", "copy_paste")


def run_segment_config(cfg: ExperimentConfig, arm: ArmSettings, seed: int, where: str = "segment") -> SegmentConfig:
    """The segmentation settings of one run, validated: the shared ``segment`` block (its preset read once)
    plus the arm's data options only.

    Arms differ in ``mixing`` (how synthetic pairs enter the batch) and in copy-paste; network, features,
    steps, batch size, lr, augmentation and validation interval are the same for every arm by construction.
    The resolution comes from the profile. ``where`` names the config a failure came from."""
    out = cfg.shared_segment().model_dump(mode="json")
    out.update(resolution=cfg.resolution, seed=seed)
    # a real-data arm's mixing is only its mode: the other MixConfig fields stay unset, so that the record form
    # (``segment_config_for``) reads {"mode": "none"} as in every run record written so far
    out["mixing"] = arm.mixing.model_dump(mode="json") if arm.kind == "synthetic" else {"mode": "none"}
    given = arm.copy_paste.model_dump(mode="json", exclude_unset=True) if arm.copy_paste is not None else {}
    out["copy_paste"] = {**out["copy_paste"], **given, "enabled": arm.uses_copy_paste, "prob": arm.paste.prob}
    return validate_config(SegmentConfig, out, where)


def segment_config_for(cfg: ExperimentConfig, arm: ArmSettings, seed: int) -> dict[str, Any]:
    """:func:`run_segment_config` in the form a run record keeps (JSON, only the fields that were set)."""
    return run_segment_config(cfg, arm, seed).model_dump(mode="json", exclude_unset=True)


def budget_of(segment_config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's settings that must be identical across arms (everything but the arm fields)."""
    return {k: v for k, v in segment_config.items() if k not in ARM_FIELDS and k != "seed"}
