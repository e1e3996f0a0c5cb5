"""Per-run segmentation settings: the shared budget plus the arm's data options, nothing else.

This is where "identical budgets for every arm" is enforced: an arm can only choose how synthetic pairs
enter the batch (``mixing``) and whether copy-paste is on; everything else comes from the shared block.
"""

from __future__ import annotations

from typing import Any

from lesionforge.experiment.config import ArmSettings, ExperimentConfig

#: SegmentConfig fields an arm decides; everything else comes from the shared ``segment`` block.
ARM_FIELDS = ("mixing", "copy_paste")


def segment_config_for(cfg: ExperimentConfig, arm: ArmSettings, seed: int) -> dict[str, Any]:
    """The segmentation settings of one run: the shared ``segment`` block plus the arm's data options only.

    Arms differ in ``mixing`` (how synthetic pairs enter the batch) and whether ``copy_paste`` is on; network,
    features, steps, batch size, lr, augmentation and validation interval are the same for every arm by
    construction. The resolution comes from the profile.
    """
    out = cfg.segment.merged()
    out.update(resolution=cfg.resolution, seed=seed)
    if arm.kind in ("synthetic", "closed-loop"):
        out["mixing"] = {"mode": arm.mixing, "ratio": arm.ratio, "alpha": arm.alpha, "patch_size": arm.patch_size}
    else:
        out["mixing"] = {"mode": "none"}
    out["copy_paste"] = {**out.get("copy_paste", {}), "enabled": arm.uses_copy_paste, "prob": arm.copy_paste_p}
    return out


def budget_of(segment_config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's settings that must be identical across arms (everything but the arm fields)."""
    return {k: v for k, v in segment_config.items() if k not in ARM_FIELDS and k != "seed"}
